"""Base model + adapter → one GGUF model file, one tensor at a time.

Each tensor of the base checkpoint is read on its own, merged with the adapter where the adapter touches it
(``merge.merged_weight``: the streaming merge's own arithmetic, in fp32), reordered where llama.cpp's layout
differs (``arch.rope_permute``), converted to the output type and appended to the file, so memory holds about
one tensor in fp32 besides the adapter, whatever the size of the model; no merged safetensors copy is
written in between.

Per-tensor types follow llama.cpp's converter: one-dimensional tensors (norms, biases) stay F32, every matrix
takes the chosen type, and a matrix whose rows do not split into whole Q8_0 blocks falls back to F16. For
llama.cpp's k-quant mixes an unquantized GGUF (in the base's own precision, so nothing is rounded twice) is
written first, inside the output's temporary folder, and quantized by llama.cpp from there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from workbench.core.adapters import LoraAdapter, check_adapter, load_adapter
from workbench.core.base_model import TORCH_DTYPES, BaseCheckpoint, open_base_model
from workbench.core.errors import ModelSourceError
from workbench.core.merge import merged_weight

from .arch import architecture_for, extra_tensors, head_counts, hparams_metadata, rope_permute
from .types import GgufType, gguf_type
from .vocab import Vocab, vocab_from_folder, vocab_from_gguf
from .writer import GgufPlan, PlannedTensor

__all__ = ["MergedPlan", "plan_merged", "gguf_origin", "general_metadata"]


@dataclass
class MergedPlan:
    """What a merged export will write, known before writing (the dialog shows ``size`` and ``messages``)."""

    checkpoint: BaseCheckpoint
    adapter: LoraAdapter | None
    gtype: GgufType
    file: GgufPlan  # the file the python writer produces (for llama.cpp types: the unquantized intermediate)
    vocab: Vocab
    messages: list[str]
    untied: bool

    @property
    def size(self) -> int:
        """Bytes of the final file: exact for the python writer, an estimate for llama.cpp's mixes."""
        if self.gtype.writer == "python":
            return self.file.size
        params = sum(_elements(t.shape) for t in self.file.tensors)
        return int(params * self.gtype.bits_per_weight / 8) + (self.file.size - self.file_data_size())

    def file_data_size(self) -> int:
        return sum(t.nbytes for t in self.file.tensors)

    @property
    def scratch_bytes(self) -> int:
        """Disk needed besides the final file (the intermediate for llama.cpp's quantizer)."""
        return self.file.size if self.gtype.writer == "llama.cpp" else 0


def _elements(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def gguf_origin(folder: Path) -> Path | None:
    """The GGUF file a base folder was converted from (the built-in model, a GGUF opened as base), if it still
    exists: ``core/gguf_import.py`` records it in the conversion's marker file."""
    from workbench.core.gguf_import import MARKER_FILE

    try:
        source = json.loads((Path(folder) / MARKER_FILE).read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    path = Path(source) if isinstance(source, str) else None
    return path if path is not None and path.is_file() else None


def _vocab(checkpoint: BaseCheckpoint) -> Vocab:
    origin = gguf_origin(checkpoint.path)
    return vocab_from_gguf(origin) if origin is not None else vocab_from_folder(checkpoint.path, checkpoint.config)


def general_metadata(name: str, file_type: int | None, quantized: bool) -> list[tuple[str, Any, Any, Any]]:
    from gguf import GGUFValueType as T

    out: list[tuple[str, Any, Any, Any]] = [("general.type", "model" if file_type is not None else "adapter", T.STRING, None),
                                            ("general.name", name, T.STRING, None)]
    if file_type is not None:
        out.append(("general.file_type", file_type, T.UINT32, None))
    if quantized:
        out.append(("general.quantization_version", 2, T.UINT32, None))  # gguf.GGML_QUANT_VERSION
    return out


def _sampling(folder: Path) -> list[tuple[str, Any, Any, Any]]:
    """generation_config.json's sampling settings as llama.cpp's ``general.sampling.*`` defaults."""
    from gguf import GGUFValueType as T

    try:
        gen = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(gen, dict) or not gen.get("do_sample"):
        return []
    out = []
    for key, gguf_key, kind in (("temperature", "temp", T.FLOAT32), ("top_p", "top_p", T.FLOAT32),
                                ("top_k", "top_k", T.INT32), ("min_p", "min_p", T.FLOAT32),
                                ("repetition_penalty", "penalty_repeat", T.FLOAT32)):
        value = gen.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((f"general.sampling.{gguf_key}", int(value) if kind == T.INT32 else float(value), kind, None))
    return out


def _metadata_entries(triples: list[tuple[str, Any, str]]) -> list[tuple[str, Any, Any, Any]]:
    from gguf import GGUFValueType as T

    kinds = {"uint32": T.UINT32, "float32": T.FLOAT32, "string": T.STRING}
    return [(k, v, kinds[kind], None) for k, v, kind in triples]


def plan_merged(base: str | Path | BaseCheckpoint, adapter: str | Path | LoraAdapter | None, type_name: str,
                *, name: str | None = None) -> MergedPlan:
    """Check everything and decide every tensor of the output; raises before anything is written for an
    architecture without a GGUF mapping, a tokenizer llama.cpp cannot reproduce, a type that cannot be
    written, or an adapter that does not fit."""
    import gguf

    gtype = gguf_type(type_name)
    checkpoint = base if isinstance(base, BaseCheckpoint) else open_base_model(base)
    where = str(checkpoint.path)
    arch = architecture_for(checkpoint.config, where)
    lora = adapter if isinstance(adapter, LoraAdapter) or adapter is None else load_adapter(adapter)
    fit = check_adapter(lora, checkpoint) if lora is not None else None
    vocab = _vocab(checkpoint)
    config = checkpoint.config
    heads, kv_heads, _ = head_counts(config)
    blocks = int(config["num_hidden_layers"])
    name_map = gguf.get_tensor_name_map(arch.gguf_arch(), blocks)
    messages: list[str] = []

    lora_by_key = {t.weight_key: (lora.modules[m], t.transposed) for m, t in fit.targets.items()} if fit else {}
    replacements = {k: r.tensor for k, r in lora.replacements.items()} if lora else {}
    tied = checkpoint.tied_embeddings
    untie = tied is not None and any(k in lora_by_key or k in replacements for k in tied)
    if untie:
        messages.append("the adapter changes the input or output embedding, which the base model shares; the GGUF "
                        "stores them separately (token_embd and output)")
    sliding = config.get("sliding_window")
    if config.get("model_type") == "mistral" and isinstance(sliding, int) and sliding < int(config.get("max_position_embeddings") or 0):
        messages.append(f"llama.cpp runs Mistral with full attention: answers match up to the {sliding}-token sliding "
                        "window, beyond it they differ")

    intermediate = _intermediate_type(checkpoint) if gtype.writer == "llama.cpp" else None
    tensors: list[PlannedTensor] = []
    unmapped: list[str] = []
    keys = [k for k in checkpoint.tensors if not (tied and not untie and k == tied[1])]
    if untie and tied[1] not in checkpoint.tensors:
        keys.insert(keys.index(tied[0]) + 1, tied[1])
    for key in keys:
        if any(key.endswith(s) for s in arch.ignored):
            continue
        gguf_name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            unmapped.append(key)
            continue
        stored = checkpoint.tensors[tied[0] if untie and key == tied[1] else checkpoint.stored_key(key)] \
            if key not in replacements else None
        shape = tuple(replacements[key].shape) if key in replacements else stored.shape
        heads_for = heads if ".attn_q." in gguf_name else kv_heads if ".attn_k." in gguf_name else None
        # the output embedding of a tied model that the adapter unties starts from the input embedding's values
        source = tied[0] if untie and key == tied[1] else checkpoint.stored_key(key)
        offset = arch.norm_offset if key.endswith("norm.weight") else 0.0
        produce = _producer(checkpoint, source, replacements.get(key), lora_by_key.get(key),
                            heads_for if arch.permute_qk else None, offset)
        ggml = _tensor_type(shape, intermediate or gtype.tensor_type)
        unchanged = (key not in replacements and key not in lora_by_key and not (heads_for and arch.permute_qk)
                     and not offset)
        stream = _row_reader(checkpoint, source) if unchanged and len(shape) == 2 else None
        tensors.append(PlannedTensor(gguf_name, shape, ggml, stored.nbytes if stored else 0, produce, stream))
    if unmapped:
        shown = ", ".join(unmapped[:6]) + (f" and {len(unmapped) - 6} more" if len(unmapped) > 6 else "")
        raise ModelSourceError(f"{where}: {len(unmapped)} tensors have no GGUF name for architecture "
                               f"{arch.gguf_name!r}: {shown}",
                               "this variant of the architecture is not supported by the GGUF export; export for PEFT "
                               "or merge instead")
    for extra_name, value in extra_tensors(arch, config).items():
        tensors.append(PlannedTensor(extra_name, tuple(value.shape), "F32", 0, lambda v=value: v))

    file_type = gtype.file_type if intermediate is None else {"F32": 0, "F16": 1, "BF16": 32}[intermediate]
    title = name or config.get("_name_or_path") or checkpoint.path.name
    metadata = general_metadata(str(title), file_type, quantized=gtype.tensor_type not in ("F32", "F16", "BF16", None))
    metadata += _metadata_entries(hparams_metadata(arch, config, where))
    metadata += vocab.entries
    metadata += [e for e in _sampling(checkpoint.path) if e[0] not in {m[0] for m in metadata}]
    plan = GgufPlan(arch.gguf_name, metadata, tensors)
    return MergedPlan(checkpoint, lora, gtype, plan, vocab, messages, untie)


def _intermediate_type(checkpoint: BaseCheckpoint) -> str:
    """The unquantized type llama.cpp quantizes from: the base's own float precision, so the merged weights
    (computed in fp32) are rounded once before llama.cpp's quantizer and never twice."""
    dtypes = {t.dtype for t in checkpoint.tensors.values() if len(t.shape) == 2}
    return "BF16" if dtypes == {"BF16"} else "F16" if dtypes == {"F16"} else "F32"


def _tensor_type(shape: tuple[int, ...], matrix_type: str) -> str:
    if len(shape) != 2:
        return "F32"
    if matrix_type in ("Q8_0",) and shape[-1] % 32:
        return "F16"
    return matrix_type


_READ_BYTES = 8 << 20


def _row_reader(checkpoint: BaseCheckpoint, key: str) -> Callable[[], Iterator[torch.Tensor]] | None:
    """Blocks of whole rows of a stored tensor, read with positioned reads from its safetensors file (the
    offsets ``BaseCheckpoint.tensors`` holds), so a large unchanged tensor never sits in memory whole."""
    info = checkpoint.tensors[key]
    dtype = TORCH_DTYPES.get(info.dtype)
    if dtype is None or not info.shape:
        return None
    row_bytes = info.nbytes // info.shape[0]

    def rows() -> Iterator[torch.Tensor]:
        step = max(1, _READ_BYTES // max(1, row_bytes))
        with open(info.file, "rb") as fh:
            for start in range(0, info.shape[0], step):
                n = min(step, info.shape[0] - start)
                fh.seek(info.offset + start * row_bytes)
                data = bytearray(fh.read(n * row_bytes))
                if len(data) != n * row_bytes:
                    raise ModelSourceError(f"{info.file} is truncated (tensor {key})", "the download may be incomplete")
                yield torch.frombuffer(data, dtype=dtype).reshape(n, *info.shape[1:])

    return rows


def _producer(checkpoint: BaseCheckpoint, source: str, replacement: torch.Tensor | None, lora: tuple[Any, bool] | None,
              heads: int | None, offset: float = 0.0) -> Callable[[], torch.Tensor]:
    def produce() -> torch.Tensor:
        t = replacement if replacement is not None else checkpoint.read(source)
        if offset:  # in float32, as llama.cpp's converter adds it: 1 + w in bf16 would round w away
            t = t.float() + offset
        if lora is not None:
            module, transposed = lora
            t = merged_weight(t, module, transposed)
        if heads is not None:
            t = rope_permute(t, heads)
        return t

    return produce
