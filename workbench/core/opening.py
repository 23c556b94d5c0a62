"""Opening a model for the window: its overview (config, meta skeleton, layer tree) with the device it would
train on, and the text shown when opening it needs the user's consent (the remote code it would run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import RunConfig
from .events import SinkLike

__all__ = ["open_model", "consent_preview"]

PREVIEW_LIMIT = 20_000  # characters shown per file: enough to read what it does, small enough for a dialog


def open_model(config: RunConfig, sink: SinkLike = None) -> dict[str, Any]:
    """``{"overview", "origin", "device_text", "available", "device_kind"}`` for ``config.model``; no weights are
    read. ``sink`` receives the progress of a built-in model's one-time conversion.

    The tree comes the way ``workbench inspect`` gets it (core/tree_cache.py): remembered for a config.json seen
    before, from its architecture's template for another config of a known architecture, else built and
    remembered; ``origin`` says which ("cache", "template", "builtin": a template shipped with Workbench, "built")."""
    from .device_info import describe_device
    from .tree_cache import open_overview_cached

    m = config.model
    overview, origin = open_overview_cached(m.source, revision=m.revision, task=m.task, num_labels=m.num_labels,
                                            trust_remote_code=m.trust_remote_code, allow_pickle=m.allow_pickle,
                                            sink=sink)
    device = describe_device(config.training.device)
    return {"overview": overview, "origin": origin, "device_text": device.text, "available": device.available_bytes,
            "device_kind": device.kind}


def consent_preview(files: list[str], setting: str, limit: int = PREVIEW_LIMIT) -> str:
    """The text of the Python files a model would run, for ``setting == "trust_remote_code"`` (what the user is
    asked to trust), each under a ``# ===== path`` line; "" for any other setting (pickle files are not text)."""
    if setting != "trust_remote_code":
        return ""
    parts = []
    for name in files:
        try:
            text = Path(name).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            text = f"(cannot read: {exc.strerror})"
        if len(text) > limit:
            text = text[:limit] + f"\n… ({len(text) - limit:,} more characters)"
        parts.append(f"# ===== {name}\n{text}")
    return "\n\n".join(parts)
