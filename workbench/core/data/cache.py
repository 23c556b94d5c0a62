"""The ``datasets`` cache: every stage of the preparation is an Arrow file keyed on what it depends on.

Caching
    Every stage is a ``datasets`` cache file keyed on what it depends on (file size and modification time,
    format, column mapping, tokenizer, chat template, settings and the source of this package), so a second
    ``prepare`` of the same data with the same tokenizer reads the cache instead of reading and tokenizing again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, List, Value
from datasets.exceptions import DatasetGenerationError

from ..errors import DataError
from .formats import CANONICAL_COLUMNS, _Detected, _generate_rows
from .readers import _Source

_TEXT = Value("string")
_MESSAGES = List({"role": _TEXT, "content": _TEXT})
# The Arrow types of each format's canonical columns: text, or a list of messages.
_TURNS = List(Value("int32"))
_CANONICAL: dict[str, dict[str, Any]] = {
    fmt: {name: {"messages": _MESSAGES, "untrained_turns": _TURNS}.get(name, _TEXT) for name in columns}
    for fmt, columns in CANONICAL_COLUMNS.items()
}
# Where each raw row came from: index into RawData.files and the 1-based line/row number; and what is wrong
# with it ("" when nothing is).
_ORIGIN = {"_source": Value("int32"), "_row": Value("int64")}
_PROBLEM = {"_field": _TEXT, "_problem": _TEXT}
_IDS = List(Value("int32"))
_TOKENIZED = Features({
    "input_ids": _IDS, "labels": _IDS, "length": Value("int32"), "full_length": Value("int32"),
    "loss_tokens": Value("int32"), **_ORIGIN, **_PROBLEM,
})
_PACKED = Features({"input_ids": _IDS, "labels": _IDS, "position_ids": _IDS, "length": Value("int32")})


def _code_version() -> str:
    """Part of every cache key, so a change to any module of this package never reuses data prepared by an older
    version."""
    try:
        sources = sorted(Path(__file__).parent.glob("*.py"))
        digest = hashlib.sha256()
        for source in sources:
            digest.update(source.name.encode() + b"\0" + source.read_bytes())
        if sources:
            return digest.hexdigest()
    except OSError:
        pass
    # A frozen (packaged) app has no source files; its code changes only with its version.
    from workbench import __version__

    return __version__


_CODE_VERSION = _code_version()


def _read_file(src: _Source, index: int, detected: _Detected, cache_dir: str | Path | None) -> Dataset:
    """All rows of one file as a cached Arrow dataset: canonical columns, origin, and what is wrong (if anything)."""
    features = Features({**_CANONICAL[detected.format], **_ORIGIN, **_PROBLEM})
    fingerprint = _fingerprint("rows", str(src.path.resolve()), _identity(src.path), src.kind, src.text_split,
                               detected.format, detected.mapping, detected.tags, index)
    try:
        return Dataset.from_generator(
            _generate_rows, features=features, cache_dir=str(cache_dir) if cache_dir else None,
            fingerprint=fingerprint,
            gen_kwargs={"path": str(src.path), "kind": src.kind, "fmt": detected.format,
                        "mapping": detected.mapping, "source": index, "tags": detected.tags,
                        "text_split": src.text_split},
        )
    except DatasetGenerationError as exc:  # datasets wraps what the generator raises
        if isinstance(exc.__cause__, DataError):
            raise exc.__cause__ from None
        raise


def _identity(path: Path) -> list[Any]:
    """Size and modification time of the file, or of every file in the folder: a change invalidates the cache."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(p.relative_to(path)) if p != path else "", p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _fingerprint(*parts: Any) -> str:
    text = json.dumps([_CODE_VERSION, *parts], default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
