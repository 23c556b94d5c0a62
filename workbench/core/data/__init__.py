"""Training data: reading files, detecting the format, rendering, loss masks, truncation, packing, statistics.

The training engine calls ``prepare`` and ``make_collator``; the window calls ``detect`` right after the user
picks files and ``preview`` to show what the model will be trained on (both through ``inspect_data``).

The package, in the order data flows through it (each module's docstring says the rules of its stage):

    readers     which files are data; opening them, encoding checks, one reader per file kind
    formats     format detection, roles and column mapping, each row checked into canonical columns
    cache       the ``datasets`` cache: Arrow schemas and the fingerprints every stage is keyed on
    raw         ``detect`` and ``load_raw``: every row read and checked, bad rows, the validation split
    rendering   templates, prompts, tokenizing and loss masks
    packing     best-fit-decreasing packing; the architectures that keep packed examples apart
    stats       length statistics and the length histogram
    pipeline    ``prepare`` and ``preview``
    collators   batches for the HF Trainer
    results     the dataclasses all of them return
    inspection  what the window's Data tab shows, with the tokenizer it keeps loaded

``from workbench.core.data import X`` imports only the module that defines ``X``: ``formats``, ``readers``,
``results`` and ``inspection`` need neither ``datasets`` nor torch, so the window can use them at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name → the module that defines it.
_EXPORTS = {
    "ALPACA_PROMPT": "rendering",
    "ALPACA_PROMPT_NO_INPUT": "rendering",
    "FALLBACK_CHAT_TEMPLATE": "rendering",
    "PADDING_FREE_MODEL_TYPES": "packing",
    "FORMAT_ROLES": "formats",
    "DATA_SUFFIXES": "readers",
    "BadRow": "results",
    "FileSummary": "results",
    "SourceFile": "results",
    "DataInfo": "results",
    "RawData": "results",
    "LengthHistogram": "results",
    "DataStats": "results",
    "PreparedData": "results",
    "PreviewExample": "results",
    "PaddedCollator": "collators",
    "PackedCollator": "collators",
    "detect": "raw",
    "load_raw": "raw",
    "prepare": "pipeline",
    "preview": "pipeline",
    "make_collator": "collators",
    "supports_padding_free": "packing",
    "inspect_data": "inspection",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # the same names for type checkers and editors (tests/core/test_data_package.py compares them)
    from .collators import PackedCollator, PaddedCollator, make_collator  # noqa: F401
    from .formats import FORMAT_ROLES  # noqa: F401
    from .inspection import inspect_data  # noqa: F401
    from .packing import PADDING_FREE_MODEL_TYPES, supports_padding_free  # noqa: F401
    from .pipeline import prepare, preview  # noqa: F401
    from .raw import detect, load_raw  # noqa: F401
    from .readers import DATA_SUFFIXES  # noqa: F401
    from .rendering import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT, FALLBACK_CHAT_TEMPLATE  # noqa: F401
    from .results import (  # noqa: F401
        BadRow, DataInfo, DataStats, FileSummary, LengthHistogram, PreparedData, PreviewExample, RawData, SourceFile,
    )
