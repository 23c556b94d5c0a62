"""The arithmetic over a layer selection that PEFT will agree with: trainable parameters (``r·(in+out)`` per
module, plus DoRA magnitudes, trained biases and ``modules_to_save`` copies), the share of the model, and the
adapter's size on disk. Plain Python over ``layers.LayerTree``; ``layers`` re-exports both names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .layers import LayerNode, LayerTree, Selection


@dataclass(frozen=True)
class SelectionCounts:
    modules: int
    lora_params: int  # A and B matrices
    dora_params: int  # DoRA magnitude vectors
    bias_params: int  # biases trained because of lora.bias
    saved_module_params: int  # full copies in modules_to_save
    trainable_params: int
    total_params: int  # base model
    adapter_bytes: int  # adapter_model.safetensors on disk

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0


def count_selection(tree: LayerTree, sel: Selection, adapter_dtype_bytes: int = 4) -> SelectionCounts:
    """Trainable parameters exactly as PEFT counts them after ``get_peft_model``, and the adapter's file size.

    * LoRA: ``r·(in+out)`` per module (``r`` per module with overrides);
    * DoRA: plus one magnitude per output feature;
    * ``bias="all"``: every bias in the model; ``"lora_only"``: biases of adapted modules;
    * ``modules_to_save``: a trainable copy of each listed module.
    PEFT stores adapter weights in float32 by default (it up-casts half-precision adapters), hence 4 bytes.
    """
    lora = sum(tree.nodes[n].lora_params(sel.rank_of(n)) for n in sel.targets)
    dora = sum(tree.nodes[n].out_features for n in sel.targets) if sel.use_dora else 0
    # A saved module gets its own trainable copy, even of weights it shares with another module.
    saved = sum(_full_params(tree.nodes[n]) for n in sel.modules_to_save)
    saved_set = set(sel.modules_to_save)
    if sel.bias == "all":
        bias = sum(n.bias_params for n in tree.nodes.values() if not _under(n.name, saved_set))
    elif sel.bias == "lora_only":
        bias = sum(tree.nodes[n].bias_params for n in sel.targets)
    else:
        bias = 0
    trainable = lora + dora + bias + saved
    return SelectionCounts(
        modules=len(sel.targets), lora_params=lora, dora_params=dora, bias_params=bias, saved_module_params=saved,
        trainable_params=trainable, total_params=tree.total_params,
        adapter_bytes=_adapter_file_bytes(tree, sel, adapter_dtype_bytes),
    )


def _full_params(node: LayerNode) -> int:
    return sum(n.own_params + n.shared_params for n in node.walk())


def _under(name: str, roots: set[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def _adapter_file_bytes(tree: LayerTree, sel: Selection, dtype_bytes: int) -> int:
    """Size of ``adapter_model.safetensors``: tensor bytes plus the JSON header naming each tensor."""
    tensors: list[tuple[str, int]] = []
    for n in sel.targets:
        node, r = tree.nodes[n], sel.rank_of(n)
        key = f"base_model.model.{n}"
        tensors.append((f"{key}.lora_A.weight", r * node.in_features))
        tensors.append((f"{key}.lora_B.weight", node.out_features * r))
        if sel.use_dora:
            tensors.append((f"{key}.lora_magnitude_vector", node.out_features))
        if sel.bias == "lora_only" and node.has_bias:
            tensors.append((f"{key}.bias", node.bias_params))
    for m in sel.modules_to_save:
        for node in tree.nodes[m].walk():
            if node.own_params + node.shared_params:
                tensors.append((f"base_model.model.{node.name}.weight", node.own_params + node.shared_params))
    if sel.bias == "all":
        saved = set(sel.modules_to_save)
        for node in tree.nodes.values():
            if node.bias_params and not _under(node.name, saved):
                tensors.append((f"base_model.model.{node.name}.bias", node.bias_params))
    data = sum(c for _, c in tensors) * dtype_bytes
    # header: {"name":{"dtype":"F32","shape":[a,b],"data_offsets":[x,y]},...} ≈ key + ~70 chars, padded to 8
    header = sum(len(k) + 70 for k, _ in tensors) + 30
    return data + 8 + header
