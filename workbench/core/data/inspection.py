"""What the window's Data tab shows: the detected format and files, and with a model also the rendered preview and
the length statistics. The tab inspects again on every change of the data settings, so the model's tokenizer
stays loaded between inspections (see ``_preview_tokenizer``).

Nothing here imports ``datasets``, torch or transformers until an inspection runs: the window imports this module
at start-up and runs ``inspect_data`` in a worker.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..config import DataConfig

if TYPE_CHECKING:
    from ..models import ModelSource


def inspect_data(data: DataConfig, model_source: ModelSource | None, trust_remote_code: bool, seed: int,
                 should_stop: Callable[[], bool] | None = None) -> dict:
    """Detect, and with a model's tokenizer also preview and length statistics: ``{"info": DataInfo,
    "previews": list[PreviewExample] | None, "stats": DataStats | None}``.

    ``should_stop`` (the window's cancel flag) is checked between the steps; once it says yes, the result
    so far is returned (its caller discards it)."""
    from .pipeline import prepare, preview
    from .raw import detect

    stop = should_stop or (lambda: False)
    result: dict[str, Any] = {"info": detect(data), "previews": None, "stats": None}
    if model_source is not None and not stop():
        tokenizer = _preview_tokenizer(model_source, trust_remote_code, _tokenizer_files_stamp(model_source))
        if not stop():
            result["previews"] = preview(data, tokenizer, n=5)
        if not stop():
            result["stats"] = prepare(data, tokenizer, seed=seed).stats
    return result


# Every change of format, columns or max length inspects again; loading a tokenizer takes up to seconds, so
# the last few stay loaded. Only the preview uses these: the data functions read a tokenizer and never change
# it, and the window runs one inspection at a time, so sharing one between inspections is safe.
@functools.lru_cache(maxsize=2)
def _preview_tokenizer(model_source: ModelSource, trust_remote_code: bool, files_stamp: tuple) -> Any:
    """The model's tokenizer, loaded once per source (ModelSource holds folder, revision and GGUF file),
    trust setting and state of its files; ``files_stamp`` only takes part in the cache key."""
    from ..models import load_tokenizer

    return load_tokenizer(model_source, trust_remote_code=trust_remote_code)


def _tokenizer_files_stamp(model_source: ModelSource) -> tuple:
    """Name, size and modification time of every file in the model folder a tokenizer may read (all but the
    weights: tokenizer.json, vocab.txt, spiece.model, added_tokens.json, chat templates, a remote-code
    tokenizer's .py files...), so that editing one in place (a fixed chat template, say) is seen by the next
    inspection, as it was before the cache. A GGUF file carries its own tokenizer and counts too."""
    from ..adapters import is_weight_file

    folder = Path(model_source.path)
    stamp = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:  # gone, or not readable: load_tokenizer will report it
        return ()
    for path in entries:
        if is_weight_file(path.name) and path.name != model_source.gguf_file:
            continue
        try:
            info = path.stat()
        except OSError:  # gone between listing and stat
            continue
        if path.is_file():
            stamp.append((path.name, info.st_size, info.st_mtime_ns))
    return tuple(stamp)
