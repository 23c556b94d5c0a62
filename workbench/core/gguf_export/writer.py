"""A GGUF file written front to back while its tensors are being produced.

GGUF is a header (key/value metadata, then one entry per tensor: name, shape, type, offset) followed by the
tensors' bytes, each aligned to ``general.alignment`` (32). Every tensor's type and shape is known before any
is computed, so the header goes first and each tensor is appended as soon as it exists: memory holds one
tensor at a time, whatever the size of the model. The ``gguf`` package's ``GGUFWriter`` supports exactly this
order (header, KV data, tensor infos, then ``write_tensor_data`` once per tensor).

The size of the file is computed from the plan before anything is written (``GgufPlan.size``), so a dialog
can show it and a disk too small is refused up front; the test suite checks it against the written file.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter, quants

from workbench.core.control import RunControl
from workbench.core.events import Progress

__all__ = ["PlannedTensor", "GgufPlan", "Stopped", "tensor_bytes", "encode"]

ALIGNMENT = 32  # gguf.GGUF_DEFAULT_ALIGNMENT; written files do not override it
_ROW_CHUNK_BYTES = 64 << 20  # quantize this much fp32 at a time: bounds the quantizer's temporaries


class Stopped(Exception):
    """The caller asked to stop; unwinds out of ``atomic_directory`` so the partial output is removed."""


@dataclass(frozen=True, eq=False)
class PlannedTensor:
    name: str  # GGUF tensor name
    shape: tuple[int, ...]  # row-major (numpy) shape; GGUF stores the dimensions reversed
    ggml_type: str  # GGMLQuantizationType name
    read_bytes: int  # bytes read from the checkpoint to make it (progress)
    produce: Callable[[], torch.Tensor]  # the values, any float dtype, in ``shape``

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.shape, self.ggml_type)


def tensor_bytes(shape: tuple[int, ...], ggml_type: str) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]]
    return math.prod(shape) // block * size


def encode(t: torch.Tensor, ggml_type: str) -> Any:
    """The bytes of ``t`` in ``ggml_type`` as a numpy array (uint8 for block types). Block types are quantized
    a few rows at a time by the ``gguf`` package, so its temporaries stay small for a large embedding."""
    if ggml_type == "F32":
        return t.detach().to(torch.float32).contiguous().numpy()
    if ggml_type == "F16":
        return t.detach().to(torch.float16).contiguous().numpy()
    if ggml_type == "BF16":  # round to nearest even, as ggml's fp32_to_bf16 does; numpy has no bfloat16
        return t.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint8)
    qtype = GGMLQuantizationType[ggml_type]
    rows = t.detach().reshape(-1, t.shape[-1])
    out = np.empty(tensor_bytes(tuple(t.shape), ggml_type), dtype=np.uint8)
    per_row = len(out) // rows.shape[0]
    step = max(1, _ROW_CHUNK_BYTES // (4 * rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        chunk = rows[start:start + step].to(torch.float32).numpy()
        out[start * per_row:(start + chunk.shape[0]) * per_row] = quants.quantize(chunk, qtype).reshape(-1)
    return out


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

    def write(self, path: Path, *, sink: Any, control: RunControl, task: str, done: int = 0, total: int | None = None) -> int:
        """Write the file; ``Progress(task, bytes_read, total)`` after each tensor. Returns the bytes read."""
        total = self.read_bytes if total is None else total
        w = self._writer(path)
        try:
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            for t in self.tensors:
                if control.stop_requested:
                    raise Stopped
                data = encode(t.produce(), t.ggml_type)
                if data.nbytes != t.nbytes:  # the header promised another size: a bug, never bad input
                    raise RuntimeError(f"{t.name}: {data.nbytes} bytes computed, {t.nbytes} declared")
                w.write_tensor_data(data)
                del data
                done += t.read_bytes
                sink.emit(Progress(task, done, total, detail=t.name))
            w.flush()
        finally:
            w.close()
        return done


def _pad(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


_SCALAR = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
           GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.UINT64: "Q",
           GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d", GGUFValueType.BOOL: "?"}
