"""A LoRA adapter → llama.cpp's GGUF adapter, for ``llama-cli --lora`` and an Ollama ``ADAPTER`` line on the
user's own GGUF base (including the GGUF file the base was converted from).

The format (llama.cpp's ``llama-adapter.cpp``): ``general.type = "adapter"``, ``adapter.type = "lora"``, one
float ``adapter.lora.alpha`` for the whole file, and for each adapted weight ``<gguf name>.lora_a`` (r × in)
and ``<gguf name>.lora_b`` (out × r), i.e. PEFT's ``lora_A`` / ``lora_B`` under the base's GGUF tensor names.
llama.cpp scales each pair by ``alpha / r`` with ``r`` that pair's own rank, so per-module ranks work, but
per-module alphas (``alpha_pattern``) and rsLoRA's ``alpha / √r`` do not: each module's true scale ``s`` is
therefore baked into its ``lora_b`` as ``B · s · r / alpha`` (exactly ``B`` for a plain LoRA, whose
``s = alpha / r``). For the llama architecture ``lora_b``'s rows are reordered like the base's q/k rows.

Refused, before anything is written, with the merged export offered instead: DoRA (its learned magnitude
rescales the merged weight by norms of the base weight, which no additive low-rank pair can express), full
tensors the adapter carries (``modules_to_save``), and LoRA on the embedding or output layer of a model that
ties the two (llama.cpp would apply it to both).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.core.adapters import LoraAdapter, check_adapter, load_adapter
from workbench.core.base_model import BaseCheckpoint, open_base_model
from workbench.core.errors import AdapterError, ModelSourceError

from .arch import architecture_for, head_counts, rope_permute
from .merged import general_metadata
from .types import gguf_type
from .writer import GgufPlan, PlannedTensor

__all__ = ["AdapterPlan", "plan_adapter", "check_against_gguf"]

_MERGED_INSTEAD = "export the merged model instead: `workbench export RUN --gguf --out DIR` (add --ollama for Ollama)"


@dataclass
class AdapterPlan:
    adapter: LoraAdapter
    checkpoint: BaseCheckpoint
    file: GgufPlan
    alpha: float

    @property
    def size(self) -> int:
        return self.file.size


def plan_adapter(adapter: str | Path | LoraAdapter, base: str | Path | BaseCheckpoint, type_name: str = "f32",
                 *, name: str | None = None) -> AdapterPlan:
    from gguf import GGUFValueType as T
    import gguf

    gtype = gguf_type(type_name, adapter=True)
    lora = adapter if isinstance(adapter, LoraAdapter) else load_adapter(adapter)
    if lora.use_dora:
        raise AdapterError(f"{lora.path} is a DoRA adapter, which has no GGUF adapter form: DoRA rescales every output "
                           "row of the merged weight by a learned magnitude over the row's norm, which depends on the "
                           "base weights, so llama.cpp's additive lora_a/lora_b pairs cannot express it", _MERGED_INSTEAD)
    checkpoint = base if isinstance(base, BaseCheckpoint) else open_base_model(base)
    # PEFT saves a targeted embedding's own weight beside its pair; an unchanged copy of the base's is harmless
    changed = [key for key, rep in lora.replacements.items() if not _same_as_base(checkpoint, key, rep.tensor)]
    if changed:
        names = ", ".join(sorted(changed)[:4])
        raise AdapterError(f"{lora.path} carries whole tensors ({names}: modules_to_save or a resized embedding), which "
                           "a GGUF adapter cannot hold", _MERGED_INSTEAD)
    arch = architecture_for(checkpoint.config, str(checkpoint.path))
    fit = check_adapter(lora, checkpoint)
    tied = checkpoint.tied_embeddings
    for module, target in fit.targets.items():
        if tied and target.weight_key in tied:
            raise AdapterError(f"{lora.path}: the adapter changes {module}, and the base model uses one tensor for its "
                               "input and output embeddings; llama.cpp would apply the adapter to both", _MERGED_INSTEAD)
        if target.layout == "conv1d":
            raise AdapterError(f"{lora.path}: {module} is a Conv1D layer, which the GGUF adapter export does not handle",
                               _MERGED_INSTEAD)
    heads, kv_heads, _ = head_counts(checkpoint.config)
    name_map = gguf.get_tensor_name_map(arch.gguf_arch(), int(checkpoint.config["num_hidden_layers"]))
    alpha = float(lora.config.get("lora_alpha") or max(m.rank for m in lora.modules.values()))
    matrix = gtype.tensor_type or "F32"

    tensors: list[PlannedTensor] = []
    for module_name, target in fit.targets.items():
        m = lora.modules[module_name]
        gguf_name = name_map.get_name(target.weight_key, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ModelSourceError(f"{checkpoint.path}: {target.weight_key} has no GGUF name for {arch.gguf_name!r}",
                                   _MERGED_INSTEAD)
        factor = m.scale * m.rank / alpha
        heads_for = heads if ".attn_q." in gguf_name else kv_heads if ".attn_k." in gguf_name else None
        a_shape = (m.in_features, m.rank) if target.layout == "embedding" else (m.rank, m.in_features)

        def lora_a(m=m, layout=target.layout) -> torch.Tensor:
            # llama.cpp looks up rows of an embedding's lora_a by token id: stored (vocabulary × r)
            return m.lora_A.T.contiguous() if layout == "embedding" else m.lora_A

        def lora_b(m=m, factor=factor, heads_for=heads_for) -> torch.Tensor:
            b = m.lora_B.float() if factor == 1.0 else m.lora_B.float() * factor
            return rope_permute(b, heads_for) if heads_for is not None and arch.permute_qk else b

        nbytes = (m.lora_A.numel() * m.lora_A.element_size(), m.lora_B.numel() * m.lora_B.element_size())
        tensors.append(PlannedTensor(f"{gguf_name}.lora_a", a_shape, matrix, nbytes[0], lora_a))
        tensors.append(PlannedTensor(f"{gguf_name}.lora_b", (m.out_features, m.rank), matrix, nbytes[1], lora_b))

    title = name or f"{checkpoint.path.name} LoRA"
    metadata = general_metadata(title, None, quantized=False)
    metadata += [("adapter.type", "lora", T.STRING, None), ("adapter.lora.alpha", alpha, T.FLOAT32, None)]
    return AdapterPlan(lora, checkpoint, GgufPlan(arch.gguf_name, metadata, tensors), alpha)


def check_against_gguf(plan: AdapterPlan, gguf_path: Path) -> None:
    """Every adapted tensor exists in the GGUF base with the shape the pair expects, and the architectures agree;
    ``AdapterError`` naming the first mismatches otherwise (llama.cpp would refuse the adapter at load time)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(gguf_path))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot read the GGUF base {gguf_path}: {exc}", "choose a valid .gguf file") from None
    arch_field = reader.fields.get("general.architecture")
    arch = arch_field.contents() if arch_field is not None else None
    if arch != plan.file.arch:
        raise AdapterError(f"the GGUF base {gguf_path} is a {arch!r} model, the adapter is for {plan.file.arch!r}",
                           "choose the GGUF file of the model the adapter was trained on")
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}  # GGUF order: (in, out)
    problems = []
    for t in plan.file.tensors:
        if not t.name.endswith(".lora_b"):
            continue
        weight = t.name.removesuffix(".lora_b")
        a = next(x for x in plan.file.tensors if x.name == f"{weight}.lora_a")
        token_embd = weight == "token_embd.weight"
        expected = (t.shape[0], a.shape[0]) if token_embd else (a.shape[1], t.shape[0])
        if weight not in shapes:
            problems.append(f"{weight}: not in the GGUF base")
        elif shapes[weight] != expected:
            problems.append(f"{weight}: {shapes[weight]} in the GGUF base, the adapter expects {expected}")
    if problems:
        raise AdapterError(f"the adapter does not fit the GGUF base {gguf_path}:\n  " + "\n  ".join(problems[:8]),
                           "choose the GGUF file of the model the adapter was trained on")


def _same_as_base(checkpoint: BaseCheckpoint, key: str, tensor: torch.Tensor) -> bool:
    stored = checkpoint.stored_key(key)
    if stored not in checkpoint.tensors or checkpoint.tensors[stored].shape != tuple(tensor.shape):
        return False
    return torch.equal(checkpoint.read(stored).to(tensor.dtype), tensor)
