"""A GGUF file written front to back while its tensors are being produced.

GGUF is a header (key/value metadata, then one entry per tensor: name, shape, type, offset) followed by the
tensors' bytes, each aligned to ``general.alignment`` (32). Every tensor's type and shape is known before any
is computed, so the header goes first (the ``gguf`` package's ``GGUFWriter``: header, KV data, tensor infos)
and each tensor is appended as soon as it exists, converted and written a few MiB of rows at a time; a tensor
the export does not change is even read that way, so memory holds at most one adapted tensor, whatever the
size of the model.

The size of the file is computed from the plan before anything is written (``GgufPlan.size``), so a dialog
can show it and a disk too small is refused up front; the test suite checks it against the written file.
"""

from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter, quants

from workbench.core.control import Control
from workbench.core.events import Progress, Sink

__all__ = ["PlannedTensor", "GgufPlan", "Stopped", "tensor_bytes", "encode"]

ALIGNMENT = 32  # gguf.GGUF_DEFAULT_ALIGNMENT; written files do not override it
_ROW_CHUNK_BYTES = 8 << 20  # quantize this much fp32 at a time: the quantizer makes several temporaries of it


class Stopped(Exception):
    """The caller asked to stop; unwinds out of ``atomic_directory`` so the partial output is removed."""


@dataclass(frozen=True, eq=False)
class PlannedTensor:
    name: str  # GGUF tensor name
    shape: tuple[int, ...]  # row-major (numpy) shape; GGUF stores the dimensions reversed
    ggml_type: str  # GGMLQuantizationType name
    read_bytes: int  # bytes read from the checkpoint to make it (progress)
    produce: Callable[[], torch.Tensor]  # the values, any float dtype, in ``shape``
    # the same values as blocks of whole rows read one after another (large tensors copied without a change),
    # so that not even one whole tensor is held in memory
    stream: Callable[[], Iterator[torch.Tensor]] | None = None

    def blocks(self) -> Iterator[torch.Tensor]:
        if self.stream is not None:
            for block in self.stream():
                yield from row_chunks(block)
        else:
            yield from row_chunks(self.produce())

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.shape, self.ggml_type)


def tensor_bytes(shape: tuple[int, ...], ggml_type: str) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]]
    return math.prod(shape) // block * size


def encode(t: torch.Tensor, ggml_type: str) -> Any:
    """The bytes of ``t`` (whole rows) in ``ggml_type`` as a numpy array (uint8 for block types, which the
    ``gguf`` package quantizes row by row)."""
    if ggml_type == "F32":
        return t.detach().to(torch.float32).contiguous().numpy()
    if ggml_type == "F16":
        return t.detach().to(torch.float16).contiguous().numpy()
    if ggml_type == "BF16":  # round to nearest even, as ggml's fp32_to_bf16 does; numpy has no bfloat16
        return t.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint8)
    chunk = t.detach().reshape(-1, t.shape[-1]).to(torch.float32).numpy()
    return quants.quantize(chunk, GGMLQuantizationType[ggml_type]).reshape(-1)


def row_chunks(t: torch.Tensor) -> Iterator[torch.Tensor]:
    """``t`` in blocks of whole rows of about ``_ROW_CHUNK_BYTES`` in fp32 (a 1-D tensor is one block): the
    converted copy and the quantizer's temporaries then stay small even for a large embedding."""
    if t.ndim < 2:
        yield t
        return
    step = max(1, _ROW_CHUNK_BYTES // (4 * max(1, t[0].numel())))
    for start in range(0, t.shape[0], step):
        yield t[start:start + step]


@dataclass
class GgufPlan:
    """Everything one GGUF file will hold, decided before writing."""

    arch: str  # general.architecture
    metadata: list[tuple[str, Any, Any, Any]] = field(default_factory=list)  # (key, value, GGUFValueType, sub_type)
    tensors: list[PlannedTensor] = field(default_factory=list)

    def _writer(self, path: Path | None) -> GGUFWriter:
        w = GGUFWriter(path, self.arch)
        for key, value, vtype, sub in self.metadata:
            w.add_key_value(key, value, vtype, sub_type=sub)
        for t in self.tensors:
            w.add_tensor_info(t.name, t.shape, np.float32, t.nbytes, raw_dtype=GGMLQuantizationType[t.ggml_type])
        return w

    @property
    def size(self) -> int:
        """The exact size of the file in bytes, from the plan alone."""
        def value_size(value: Any, vtype: Any, sub: Any) -> int:
            if vtype == GGUFValueType.STRING:
                return 8 + len(str(value).encode("utf-8"))
            if vtype == GGUFValueType.ARRAY:
                return 4 + 8 + sum(value_size(v, sub, None) for v in value)
            return struct.calcsize("<" + _SCALAR[vtype])

        header = 4 + 4 + 8 + 8
        kv = [("general.architecture", self.arch, GGUFValueType.STRING, None), *self.metadata]
        header += sum(8 + len(k.encode("utf-8")) + 4 + value_size(v, t, s) for k, v, t, s in kv)
        header += sum(8 + len(t.name.encode("utf-8")) + 4 + 8 * len(t.shape) + 4 + 8 for t in self.tensors)
        return _pad(header) + sum(_pad(t.nbytes) for t in self.tensors)

    @property
    def read_bytes(self) -> int:
        return sum(t.read_bytes for t in self.tensors)

    def write(self, path: Path, *, sink: Sink, control: Control, task: str, done: int = 0, total: int | None = None) -> int:
        """Write the file; ``Progress(task, bytes_read, total)`` after each tensor. Returns the bytes read."""
        total = self.read_bytes if total is None else total
        w = self._writer(path)
        try:
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            # The tensors' bytes, written block by block where GGUFWriter.write_tensor_data wants the whole tensor
            # at once: each tensor starts at an aligned offset and is padded to the alignment, as the tensor
            # infos just written promise.
            fh = w.fout[0]
            for t in self.tensors:
                if control.stop_requested:
                    raise Stopped
                w.write_padding(fh, fh.tell())
                written = 0
                for block in t.blocks():
                    data = encode(block, t.ggml_type)
                    fh.write(memoryview(np.ascontiguousarray(data)).cast("B"))
                    written += data.nbytes
                    del data
                if written != t.nbytes:  # the header promised another size: a bug, never bad input
                    raise RuntimeError(f"{t.name}: {written} bytes computed, {t.nbytes} declared")
                w.write_padding(fh, written)
                _release_freed_memory()
                done += t.read_bytes
                sink.emit(Progress(task, done, total, detail=t.name))
            w.flush()
        finally:
            w.close()
        return done


def _load_malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or a no-op elsewhere. numpy's quantizer allocates many blocks below glibc's
    (adaptive) mmap threshold; freed, they stay in the heap and count as resident unless trimmed: measured on a
    1.4B bf16 model (bench/gguf_export.py), peak RSS of a Q8_0 export 0.67 GiB without, 0.57 GiB with it."""
    if not sys.platform.startswith("linux"):
        return lambda: None
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # musl and other libcs have no malloc_trim
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0) and None


_release_freed_memory = _load_malloc_trim()


def _pad(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


_SCALAR = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
           GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.UINT64: "Q",
           GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d", GGUFValueType.BOOL: "?"}
