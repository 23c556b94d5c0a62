"""Looking around the Hugging Face Hub: relatives of the open model, whether the Hub answers, and download
progress as events. Split from ``models.py``; ``models`` re-exports these names."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

from .builtin import BUILTIN_PREFIX
from .events import Sink

__all__ = ["model_family", "hub_suggestions", "download_progress_class"]

_SIZE_OR_VARIANT = re.compile(r"^(\d+(\.\d+)?[kmbt]|\d+x\d+[mb]|instruct|chat|base|it|hf|gguf|q\d.*|f16|bf16|fp16)$", re.I)


def model_family(spec: str, name_or_path: str = "") -> str:
    """The family part of a model name — "SmolLM2" for SmolLM2-135M-Instruct, "Llama-3.2" for Llama-3.2-1B,
    "Qwen2.5" for Qwen2.5-0.5B-Instruct — to look up its relatives on the Hub. "" when nothing is left."""
    name = name_or_path if "/" in name_or_path and not Path(name_or_path).exists() else spec
    if name.lower().startswith(BUILTIN_PREFIX):
        name = name[len(BUILTIN_PREFIX):]
    name = Path(name.rstrip("/")).name if ("/" not in name or Path(name).exists() or name.startswith((".", "/", "~"))) \
        else name.split("/")[-1]
    name = re.sub(r"\.gguf$", "", name, flags=re.I)
    kept: list[str] = []
    for token in re.split(r"[-_]", name):
        if _SIZE_OR_VARIANT.match(token):
            break
        kept.append(token)
    return "-".join(kept)


def hub_suggestions(spec: str, name_or_path: str = "", limit: int = 8, timeout: float = 5.0) -> list[str]:
    """Hub models of the same family as the open one, most downloaded first; [] offline or on any Hub error
    (a suggestion is a convenience: it must never turn into an error message)."""
    family = model_family(spec, name_or_path)
    if len(family) < 3 or not _hub_reachable(timeout):
        return []
    try:
        from huggingface_hub import HfApi

        found = HfApi().list_models(search=family, sort="downloads", limit=limit * 2, pipeline_tag="text-generation")
        ids = [m.id for m in found if m.id != spec]
    except Exception:  # noqa: BLE001  (network, rate limits, API changes: no suggestions, no error)
        return []
    return ids[:limit]


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = re.sub(r"^https?://", "", constants.ENDPOINT).split("/")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def download_progress_class(sink: Sink, spec: str, min_interval: float = 0.25):
    """A tqdm class for ``snapshot_download(tqdm_class=...)`` that turns its byte counts into ``Progress``
    events (task "download", at most every ``min_interval`` seconds, and once at the end) instead of drawing.

    huggingface_hub sums every file's bytes into one bar made with this class (unit "B", its total growing
    as files start); the per-file bars and the file-count bar are left out."""
    import io
    import time

    from tqdm.auto import tqdm as base

    from .events import Progress

    class _SinkProgress(base):
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs["disable"] = False  # the hub disables bars below some log level; the sink still wants them
            kwargs["file"] = io.StringIO()  # nothing drawn on the terminal
            super().__init__(*args, **kwargs)
            self._reported_at = 0.0

        def _report(self, force: bool = False) -> None:
            if self.unit != "B" or str(self.desc).startswith("Downloading bytes"):  # network-side twin bar
                return
            now = time.monotonic()
            if force or now - self._reported_at >= min_interval:
                self._reported_at = now
                sink.emit(Progress("download", int(self.n), int(self.total or 0), unit="bytes", detail=spec))

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            self._report(force=bool(self.total) and self.n >= self.total)
            return shown

        def close(self) -> None:
            if not self.disable and self.total:
                self._report(force=True)
            super().close()

    return _SinkProgress
