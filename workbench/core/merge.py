"""Streaming merge: bake a LoRA/DoRA adapter into a copy of its base model, one tensor at a time.

PEFT's ``merge_and_unload`` needs the whole model in memory. Here each tensor of the base checkpoint is
read on its own, merged if the adapter touches it, and appended to the output shard at once, so memory
holds the adapter plus the largest adapted tensor once as read and once in fp32, whatever the size of
the model. Tensors the adapter does not touch are copied byte for byte.

The arithmetic follows PEFT's ``Linear.merge`` / ``Embedding.merge`` expression by expression (same
operations, same order, fp32), so an fp32 merge is bit-identical to ``merge_and_unload``; for bf16/fp16
the result is computed in fp32 and rounded once.

The output has the base's shard layout (same file names, same tensors under the same stored names in the same
order; transformers' renames on load, such as ViT's ``attention.query`` → ``q_proj``, apply to it as to the base,
see ``BaseCheckpoint.stored_name``; a classifier head the base lacks goes in the last shard) plus the
index, ``config.json`` (dtype updated when converted), tokenizer, generation config and every other
non-weight file. It is built in ``.tmp-<name>.partial`` beside the destination, flushed to disk (files and
folders) and renamed into place only when complete (``fsutil.atomic_directory``; so files inside it need
no atomic writes of their own); an interrupted merge — even a SIGKILL or a power cut — leaves only that
folder, which the next merge removes, and never a folder under the final name (``bench/kill_harness.py``).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from workbench.core.adapters import (AdapterFit, LoraAdapter, LoraModule, check_adapter, input_folders, is_weight_file,
                                     load_adapter)
from workbench.core.base_model import FLOAT_DTYPES, SAFETENSORS_DTYPE, TORCH_DTYPES, BaseCheckpoint, open_base_model
from workbench.core.checkpoint import INDEX_FILE, TensorInfo
from workbench.core.control import Control, RunControl
from workbench.core.errors import WorkbenchError
from workbench.core.events import Message, Progress, SinkLike, as_sink
from workbench.core.fsutil import atomic_directory, disk_full_reported
from workbench.core.model_card import write_model_card
from workbench.core.paths import check_new_output

__all__ = ["OUTPUT_DTYPES", "MergeResult", "merged_weight", "merge_adapter"]

OUTPUT_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_CONFIG_DTYPE = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


@dataclass(frozen=True)
class MergeResult:
    output: Path | None  # None when the merge was stopped
    stopped: bool = False
    merged_modules: int = 0  # weights changed by W + s·B@A (or DoRA)
    replaced_tensors: int = 0  # tensors the adapter carries whole (modules_to_save, saved embedding weights)
    untied_embeddings: bool = False  # input and output embeddings written as two tensors
    bytes_written: int = 0


def _transpose(t: torch.Tensor, transposed: bool) -> torch.Tensor:
    return t.T if transposed else t


def merged_weight(weight: torch.Tensor, module: LoraModule, transposed: bool) -> torch.Tensor:
    """The merged weight in fp32, in ``weight``'s stored layout (``transposed``: stored as in × out).

    LoRA: ``W' = W + ΔW`` with ``ΔW = s · B @ A``.
    DoRA: ``W' = m / ||W + ΔW||_row · (W + ΔW)``, the norm taken over each output row (so over columns
    of a transposed layout) of the *unmerged* weight, and ``m`` the learned magnitude.

    The operations are PEFT's, in PEFT's order — ``transpose(B @ A) * s``, then the sum, the row norms
    and the product — so fp32 results are bit-identical to ``merge_and_unload``. They run in place on
    one fp32 buffer laid out like ``weight`` (elementwise addition commutes exactly; the row norms are
    summed in the same memory order as PEFT's), so a merge needs one fp32 copy of the largest adapted
    weight beside the weight as read.
    """
    merged = _transpose(module.lora_B.float() @ module.lora_A.float(), transposed).contiguous().mul_(module.scale)
    if weight.ndim == 4:  # a Conv2d: the update over the flattened kernel, back in the (out, in, kh, kw) layout
        merged = merged.view(weight.shape)
    merged.add_(weight)  # promotes a bf16/fp16 weight to fp32 element by element, without a copy
    if module.magnitude is not None:
        norm = torch.linalg.norm(_transpose(merged, transposed), dim=1)
        merged.mul_(_transpose((module.magnitude.float() / norm).view(-1, 1), transposed))
    return merged


@dataclass(frozen=True, eq=False)
class _Entry:
    """One tensor of the output: where its values come from and what happens to them."""

    key: str  # output tensor name
    stored: TensorInfo  # base tensor that supplies shape, default dtype and (without replacement) values
    replacement: torch.Tensor | None  # the adapter's own copy, used instead of the base's values
    module: LoraModule | None  # adapter merged into it
    transposed: bool
    dtype: str  # output safetensors dtype

    @property
    def is_copy(self) -> bool:
        return self.replacement is None and self.module is None and self.dtype == self.stored.dtype

    @property
    def in_bytes(self) -> int:
        return self.stored.nbytes

    @property
    def out_bytes(self) -> int:
        if self.dtype == self.stored.dtype:
            return self.stored.nbytes
        return math.prod(self.stored.shape) * TORCH_DTYPES[self.dtype].itemsize


def _plan(fit: AdapterFit, dtype: torch.dtype | None) -> tuple[list[tuple[str, list[_Entry]]], bool]:
    """Output shards (file name, entries in order) mirroring the base's, and whether to untie embeddings.

    A model that ties its output embedding to its input embedding stores one tensor for both. When the
    adapter changes either side (LoRA on ``lm_head`` or ``embed_tokens``, or ``lm_head`` in
    ``modules_to_save``), the two must differ after the merge, as they do in the base + adapter model:
    both are written, the output embedding right after the input one, and the config says untied.
    (PEFT's ``merge_and_unload`` adds the delta to the shared tensor instead, changing both sides.)
    """
    base, adapter = fit.base, fit.adapter
    lora = {t.weight_key: (adapter.modules[name], t.transposed) for name, t in fit.targets.items()}
    # by the checkpoint's names, which the output keeps: transformers renames on load as it does for the base
    replacements = {base.stored_name(key): rep for key, rep in adapter.replacements.items()}
    code = SAFETENSORS_DTYPE[dtype] if dtype is not None else None
    tied = base.tied_embeddings
    untie = tied is not None and any(k in lora or k in replacements for k in tied)

    def entry(key: str, stored: TensorInfo) -> _Entry:
        module, transposed = lora.get(key, (None, False))
        rep = replacements.get(key)
        out_dtype = code if code is not None and stored.dtype in FLOAT_DTYPES else stored.dtype
        return _Entry(key, stored, rep.tensor if rep else None, module, transposed, out_dtype)

    shards = []
    added = set(fit.added)
    for shard in base.shard_files:
        entries = []
        for info in base.shard_tensors(shard):
            if untie and info.key == tied[1]:
                continue  # a stale stored copy; the output embedding is written after the input one
            if info.key in added:
                continue  # a classification head of another size: the adapter's is written below
            entries.append(entry(info.key, info))
            if untie and info.key == tied[0]:
                entries.append(entry(tied[1], info))
        shards.append((shard.name, entries))
    for key in fit.added:  # a classification adapter's head (and modules the base lacks), in the last shard
        tensor = replacements[key].tensor
        info = TensorInfo(key, Path(), SAFETENSORS_DTYPE[tensor.dtype], tuple(tensor.shape), 0,
                          tensor.numel() * tensor.element_size())
        shards[-1][1].append(entry(key, info))
    return shards, untie


class _ShardWriter:
    """A safetensors file written front to back while its tensors are being produced.

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's dtype,
    shape and byte range, then the tensors' bytes back to back. Every output tensor's dtype and shape is
    known before any is computed, so the header goes first and each tensor is appended as soon as it
    exists. (The safetensors library writes a file only from tensors all held in memory at once.)
    """

    def __init__(self, path: Path, entries: list[_Entry]):
        header: dict[str, Any] = {}
        offset = 0
        for e in entries:
            header[e.key] = {"dtype": e.dtype, "shape": list(e.stored.shape), "data_offsets": [offset, offset + e.out_bytes]}
            offset += e.out_bytes
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as the reference writer does
        self.fh: BinaryIO = open(path, "wb")
        self.fh.write(len(raw).to_bytes(8, "little"))
        self.fh.write(raw)

    def write(self, entry: _Entry, tensor: torch.Tensor) -> None:
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        if data.nbytes != entry.out_bytes:  # the header promised another size: a bug, never bad input
            raise RuntimeError(f"{entry.key}: {data.nbytes} bytes computed, {entry.out_bytes} declared")
        self.fh.write(memoryview(data))

    def close(self) -> None:
        self.fh.close()


class _Stopped(Exception):
    """The caller asked to stop; unwinds out of ``atomic_directory`` so the partial output is removed."""


def merge_adapter(
    base: str | Path | BaseCheckpoint,
    adapter: str | Path | LoraAdapter,
    out: str | Path,
    *,
    dtype: str | None = None,
    sink: SinkLike = None,
    control: Control | None = None,
) -> MergeResult:
    """Write ``base`` with ``adapter`` merged into the new folder ``out``.

    ``dtype`` ("bf16", "fp16", "fp32") converts every floating tensor; by default each keeps the base's
    dtype. Progress goes to ``sink`` as ``Progress("merge", bytes_done, bytes_total, detail=shard)``;
    ``control.request_stop()`` stops between tensors and leaves nothing behind (``stopped=True``).
    Raises ``OutputError`` if ``out`` exists, or when the disk fills up while writing, and ``AdapterError``
    if the adapter does not fit; in all these cases nothing is left written.
    """
    out = check_new_output(out)
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(OUTPUT_DTYPES)}, not {dtype!r}")
    if sys.byteorder != "little":  # safetensors data is little-endian and is written straight from memory
        raise WorkbenchError("merging needs a little-endian machine")
    checkpoint = base if isinstance(base, BaseCheckpoint) else open_base_model(base)
    lora = adapter if isinstance(adapter, LoraAdapter) else load_adapter(adapter)
    # BASE/merged would become part of the base model folder (and be read as its files next time).
    check_new_output(out, inputs=input_folders(adapter=lora, base=checkpoint))
    fit = check_adapter(lora, checkpoint)
    torch_dtype = OUTPUT_DTYPES[dtype] if dtype else None
    shards, untie = _plan(fit, torch_dtype)
    sink = as_sink(sink)
    control = control or RunControl()
    if untie:
        sink.emit(Message("the adapter changes the input or output embedding, which the base model shares; "
                          "the merged model stores them separately (tie_word_embeddings = false)"))

    total = sum(e.in_bytes for _, entries in shards for e in entries)
    done = written = 0
    sink.emit(Progress("merge", 0, total, detail=shards[0][0] if shards else ""))
    try:
        # A full disk is the user's to fix; atomic_directory has removed what was written.
        with disk_full_reported(out, sum(e.out_bytes for _, entries in shards for e in entries)), \
                atomic_directory(out) as tmp:
            for shard_name, entries in shards:
                writer = _ShardWriter(tmp / shard_name, entries)
                try:
                    for e in entries:
                        if control.stop_requested:
                            raise _Stopped
                        _write_entry(checkpoint, writer, e)
                        done += e.in_bytes
                        written += e.out_bytes
                        sink.emit(Progress("merge", done, total, detail=shard_name))
                finally:
                    writer.close()
            if checkpoint.indexed:
                weight_map = {e.key: name for name, entries in shards for e in entries}
                index = {"metadata": {"total_size": written}, "weight_map": weight_map}
                (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
            _write_config(checkpoint, tmp, torch_dtype, untie, lora)
            for f in sorted(checkpoint.path.iterdir()):
                if f.is_file() and f.name != "config.json" and not f.name.startswith(".") and not is_weight_file(f.name):
                    shutil.copy2(f, tmp / f.name)
            write_model_card(tmp, kind="merged", adapter=lora.path, base=checkpoint.path, sink=sink)
    except _Stopped:
        sink.emit(Message("merge stopped; nothing was written", level="warning"))
        return MergeResult(None, stopped=True)
    return MergeResult(
        out,
        merged_modules=len(fit.targets),
        replaced_tensors=len(lora.replacements),
        untied_embeddings=untie,
        bytes_written=written,
    )


def _write_entry(checkpoint: BaseCheckpoint, writer: _ShardWriter, e: _Entry) -> None:
    if e.is_copy:
        checkpoint.copy_bytes(e.stored.key, writer.fh)
        return
    tensor = e.replacement if e.replacement is not None else checkpoint.read(e.stored.key)
    if e.module is not None:
        tensor = merged_weight(tensor, e.module, e.transposed)
    writer.write(e, tensor.to(TORCH_DTYPES[e.dtype]))


def _write_config(checkpoint: BaseCheckpoint, folder: Path, dtype: torch.dtype | None, untie: bool,
                  adapter: LoraAdapter | None = None) -> None:
    config = dict(checkpoint.config)
    if adapter is not None:
        config.update(_classification_fields(adapter, config))
    if dtype is not None:
        config["dtype"] = _CONFIG_DTYPE[dtype]
        if "torch_dtype" in config:  # written by transformers 4.x
            config["torch_dtype"] = _CONFIG_DTYPE[dtype]
    if untie:
        config["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _classification_fields(adapter: LoraAdapter, config: dict[str, Any]) -> dict[str, Any]:
    """What a classification adapter changes in config.json: the architecture with its head and the classes
    (from the labels.json saved beside the adapter), so the merged folder loads as the trained classifier."""
    from workbench.core.classification import TRANSFORMERS_PROBLEM_TYPES, read_label_file

    labels = read_label_file(adapter.path)
    if labels is None:
        return {}
    from transformers.models.auto.modeling_auto import (MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
                                                        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)

    fields: dict[str, Any] = {"id2label": {str(i): n for i, n in labels.id2label.items()}, "label2id": labels.label2id,
                              "problem_type": TRANSFORMERS_PROBLEM_TYPES[labels.problem_type]}
    text = adapter.config.get("task_type") == "SEQ_CLS"
    mapping = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES if text else MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    architecture = mapping.get(config.get("model_type", ""))
    if isinstance(architecture, tuple):  # a few model types list several classes: the first is the plain one
        architecture = architecture[0]
    if architecture:
        fields["architectures"] = [architecture]
    if text and config.get("pad_token_id") is None and config.get("eos_token_id") is not None:
        eos = config["eos_token_id"]  # as training did: a decoder's head needs to know which token pads
        fields["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
    return fields
