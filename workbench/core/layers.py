"""The module tree of a model and the LoRA selection made on it.

``build_tree(skeleton)`` walks a (meta-device) model once and records, for every module: its dotted
name, class, weight shape, parameter count, whether LoRA can adapt it, which transformer block it sits
in and what *kind* of module it is (attention q/k/v/o, MLP in/out, output head, …). Everything else in
this file is plain Python over that tree, so the window, the CLI and the tests share one truth:

* selections by exact names, presets, glob / regex patterns, block ranges, "same module in every block";
* ``Selection`` → PEFT ``LoraConfig`` (``target_modules`` as exact names, ``rank_pattern``, ``alpha_pattern``);
* the arithmetic PEFT will agree with (``layer_counts``): trainable parameters (``r·(in+out)`` per module, plus DoRA
  magnitudes, trained biases and ``modules_to_save`` copies), share of the model, adapter size on disk.

Adaptable modules are ``torch.nn.Linear``, transformers' GPT-2-style ``Conv1D`` (weight stored
``in × out``) and ``torch.nn.Conv2d`` without groups (vision models). PEFT's LoRA on a convolution is an
r-filter convolution with the layer's kernel (A: r × in × kh × kw) followed by a 1 × 1 convolution back to the
output channels (B: out × r), so ``in`` counts ``in_channels · kh · kw`` and ``r·(in+out)`` still holds.
Convolutions are their own kind (``conv``), picked by the ``conv`` preset only. Embeddings are shown but not
offered for LoRA.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .config import PRESETS, LoraSettings, parse_block_spec
from .errors import SelectionError
from .layer_counts import SelectionCounts, count_selection  # noqa: F401  (the arithmetic: its home is layer_counts)

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "LayerNode",
    "LayerTree",
    "Selection",
    "build_tree",
    "resolve_selection",
    "lora_config_from_selection",
]

# Module kinds, used by presets and by the heatmap of the adapter inspection.
ATTN_KINDS = ("q", "k", "v", "qkv", "o")
MLP_KINDS = ("mlp_in", "mlp_out")

# Leaf-name vocabulary of the architectures transformers ships. The leaf name decides the kind inside an
# attention module; in an MLP the position (in or out projection) decides.
_ATTN_LEAF = {
    "q": {"q_proj", "query", "q", "wq", "q_lin"},
    "k": {"k_proj", "key", "k", "wk", "k_lin"},
    "v": {"v_proj", "value", "v", "wv", "v_lin"},
    "qkv": {"qkv_proj", "c_attn", "query_key_value", "wqkv", "qkv", "in_proj", "w_pack", "att_proj"},
    "o": {"o_proj", "out_proj", "c_proj", "dense", "o", "wo", "out_lin", "attn_out", "proj"},
}
_MLP_OUT_LEAF = {"down_proj", "c_proj", "fc2", "dense_4h_to_h", "w2", "wo", "fc_out", "proj_out", "lin2"}
_MLP_IN_LEAF = {"gate_proj", "up_proj", "gate_up_proj", "c_fc", "fc1", "dense_h_to_4h", "w1", "w3", "wi",
                "wi_0", "wi_1", "fc_in", "lin1"}
_ATTN_SCOPES = ("attn", "attention")
_MLP_SCOPES = ("mlp", "feed_forward", "ffn", "ff", "intermediate")
_HEAD_NAMES = {"lm_head", "classifier", "score", "embed_out", "output", "qa_outputs", "head"}


@dataclass
class LayerNode:
    name: str  # full dotted path; "" for the root
    type: str  # class name
    own_params: int = 0  # parameters held directly by this module (not its children)
    params: int = 0  # parameters in the whole subtree (each shared tensor counted once)
    shape: tuple[int, ...] | None = None  # weight shape, if the module has a weight
    adaptable: bool = False  # LoRA can wrap it (Linear / Conv1D)
    in_features: int = 0
    out_features: int = 0
    has_bias: bool = False
    bias_params: int = 0
    block: int | None = None  # index of the transformer block it belongs to
    kind: str = "other"  # q/k/v/qkv/o, mlp_in/mlp_out, head, embedding, norm, other
    tied_to: str | None = None  # name of the module whose weight this one shares
    shared_params: int = 0  # parameters of tensors owned by another module (tied weights), not in own_params
    quantized: str | None = None  # "nf4" / "fp4" / "int8": held quantized (core/quantization.py marks it)
    stored_bytes: int = 0  # bytes of the quantized weight as stored (0 when not quantized)
    children: list["LayerNode"] = field(default_factory=list)

    @property
    def short(self) -> str:
        return self.name.rsplit(".", 1)[-1] if self.name else "(model)"

    def walk(self) -> Iterator["LayerNode"]:
        yield self
        for c in self.children:
            yield from c.walk()

    def lora_params(self, r: int) -> int:
        return r * (self.in_features + self.out_features) if self.adaptable else 0


@dataclass
class LayerTree:
    root: LayerNode
    model_type: str
    total_params: int  # the base model, shared tensors counted once
    blocks_prefix: str | None  # e.g. "model.layers"; None if no repeated blocks were found
    num_blocks: int
    nodes: dict[str, LayerNode]
    bias_params_total: int = 0

    def adaptable(self) -> list[LayerNode]:
        return [n for n in self.root.walk() if n.adaptable]

    def __getitem__(self, name: str) -> LayerNode:
        return self.nodes[name]

    def head_names(self) -> list[str]:
        return [n.name for n in self.adaptable() if n.kind == "head"]

    # -- selection helpers -----------------------------------------------------------------------------
    def preset(self, name: str) -> list[str]:
        """Exact names selected by a preset (see config.PRESETS)."""
        nodes = [n for n in self.adaptable() if n.block is not None or n.kind in ATTN_KINDS + MLP_KINDS]
        if name == "attention-qv":
            # Fused q/k/v projections (GPT-2 c_attn, GPT-NeoX query_key_value, Phi-3 qkv_proj) cannot be split:
            # adapt the fused module, as PEFT's own defaults do.
            picked = [n for n in nodes if n.kind in ("q", "v", "qkv")]
        elif name == "attention":
            picked = [n for n in nodes if n.kind in ATTN_KINDS]
        elif name == "mlp":
            picked = [n for n in nodes if n.kind in MLP_KINDS]
        elif name == "all-linear":
            picked = [n for n in nodes if n.kind not in ("head", "conv")]
        elif name == "conv":
            picked = [n for n in self.adaptable() if n.kind == "conv"]
        elif name == "none":
            picked = []
        else:
            raise SelectionError(f"unknown preset {name!r}", f"choose one of {', '.join(PRESETS)}")
        return sorted({n.name for n in picked}, key=self._order)

    def match(self, pattern: str, adaptable_only: bool = True) -> list[str]:
        """Names matching ``pattern``: ``re:<regex>`` (full match), a glob (``*.q_proj``, ``*layers.1?.*``),
        or a plain name, which matches the whole name or any dot-bounded suffix (``q_proj``,
        ``self_attn.q_proj``) — the same rule PEFT applies to a list of target modules."""
        pool = self.adaptable() if adaptable_only else list(self.root.walk())[1:]
        if pattern.startswith("re:"):
            try:
                rx = re.compile(pattern[3:])
            except re.error as exc:
                raise SelectionError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
            hits = [n.name for n in pool if rx.fullmatch(n.name)]
        elif any(ch in pattern for ch in "*?["):
            hits = [n.name for n in pool if fnmatch.fnmatchcase(n.name, pattern)]
        else:
            hits = [n.name for n in pool if n.name == pattern or n.name.endswith("." + pattern)]
        return sorted(hits, key=self._order)

    def in_blocks(self, names: Iterable[str], blocks: Iterable[int]) -> list[str]:
        wanted = set(blocks)
        return [n for n in names if self.nodes[n].block in wanted]

    def same_in_every_block(self, name: str) -> list[str]:
        """``model.layers.3.mlp.up_proj`` → that module in every block."""
        node = self.nodes[name]
        if node.block is None or not self.blocks_prefix:
            return [name]
        prefix = f"{self.blocks_prefix}.{node.block}."
        suffix = name[len(prefix):]
        out = [f"{self.blocks_prefix}.{b}.{suffix}" for b in range(self.num_blocks)]
        return [n for n in out if n in self.nodes]

    def _order(self, name: str) -> int:
        return self._index.get(name, 0)

    @property
    def _index(self) -> dict[str, int]:
        idx = getattr(self, "_index_cache", None)
        if idx is None:
            idx = {n: i for i, n in enumerate(self.nodes)}
            object.__setattr__(self, "_index_cache", idx)
        return idx


def _is_adaptable(module: "torch.nn.Module") -> tuple[bool, int, int]:
    import torch

    if isinstance(module, torch.nn.Linear):
        return True, module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "weight") and module.weight.dim() == 2:
        # transformers.pytorch_utils.Conv1D stores weight as (in, out)
        return True, int(module.weight.shape[0]), int(module.weight.shape[1])
    if isinstance(module, torch.nn.Conv2d) and module.groups == 1:  # PEFT's LoRA has no grouped convolutions
        kh, kw = module.kernel_size
        return True, module.in_channels * kh * kw, module.out_channels
    return False, 0, 0


def _find_blocks(model: "torch.nn.Module") -> tuple[str | None, int]:
    """The longest ModuleList of identical blocks: the transformer layers (``model.layers``, ``transformer.h``…)."""
    import torch

    best: tuple[str | None, int] = (None, 0)
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > best[1]:
            types = {type(m) for m in mod}
            if len(types) == 1 and sum(1 for _ in mod[0].parameters()) > 0:
                best = (name, len(mod))
    return best


def _classify(name: str, blocks_prefix: str | None, adaptable: bool, type_name: str) -> str:
    parts = name.split(".")
    leaf = parts[-1].lower()
    lname = name.lower()
    in_block = blocks_prefix is not None and name.startswith(blocks_prefix + ".")
    if "embed" in type_name.lower() or "embed" in leaf or leaf in {"wte", "wpe"}:
        return "embedding"
    if "norm" in type_name.lower() or "norm" in leaf or leaf.startswith("ln"):
        return "norm"
    if not adaptable:
        return "other"
    if type_name == "Conv2d":
        return "conv"
    if not in_block:
        return "head" if leaf in _HEAD_NAMES or parts[0] in _HEAD_NAMES else "other"
    scopes = [p.lower() for p in parts[:-1]]
    inner = parts[len(blocks_prefix.split(".")) + 1:]  # path inside the block, e.g. ['attention', 'output', 'dense']
    in_attn = any(any(s in p for s in _ATTN_SCOPES) for p in scopes)
    if in_attn:
        for kind, leaves in _ATTN_LEAF.items():
            if leaf in leaves:
                return kind
        return "o"
    if any(p in _MLP_SCOPES or p.endswith("mlp") for p in scopes) or leaf in _MLP_IN_LEAF | _MLP_OUT_LEAF:
        if leaf in _MLP_OUT_LEAF:
            return "mlp_out"
        return "mlp_in"
    # BERT-style: <block>.output.dense is the MLP's output projection (<block>.attention.output.dense was caught above)
    if len(inner) >= 2 and inner[-2].lower() == "output":
        return "mlp_out"
    if "proj" in lname or leaf.startswith(("fc", "dense", "w")):
        return "mlp_in"
    return "other"


def build_tree(model: "torch.nn.Module") -> LayerTree:
    """Walk the model once. Works on meta-device skeletons (no weights needed), and on quantized models (their
    modules marked, parameters counted as the weights they stand for)."""
    from .quantization import logical_numel, module_mark

    blocks_prefix, num_blocks = _find_blocks(model)
    nodes: dict[str, LayerNode] = {}
    owner_of: dict[int, str] = {}  # id(parameter) → first module that holds it (tied weights)
    block_re = re.compile(rf"^{re.escape(blocks_prefix)}\.(\d+)(\.|$)") if blocks_prefix else None

    for name, module in model.named_modules(remove_duplicate=False):
        if name in nodes:
            continue
        adaptable, fin, fout = _is_adaptable(module)
        own = list(module.named_parameters(recurse=False))
        node = LayerNode(name=name, type=type(module).__name__, adaptable=adaptable, in_features=fin, out_features=fout)
        for pname, p in own:
            if id(p) in owner_of:
                node.tied_to = owner_of[id(p)]
                node.shared_params += logical_numel(p)
                continue
            owner_of[id(p)] = name
            node.own_params += logical_numel(p)  # a 4-bit weight's tensor packs two parameters per byte
            if pname == "bias":
                node.has_bias = True
                node.bias_params = p.numel()
        weight = getattr(module, "weight", None)
        if weight is not None and hasattr(weight, "shape"):
            node.shape = tuple(int(s) for s in getattr(getattr(weight, "quant_state", None), "shape", weight.shape))
        if (mark := module_mark(module)) is not None:
            node.quantized, node.stored_bytes = mark
        if block_re and (m := block_re.match(name)):
            node.block = int(m.group(1))
        node.kind = _classify(name, blocks_prefix, adaptable, node.type)
        nodes[name] = node
        if name:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            nodes[parent].children.append(node)

    def total(n: LayerNode) -> int:
        n.params = n.own_params + sum(total(c) for c in n.children)
        return n.params

    root = nodes[""]
    total(root)
    model_type = getattr(getattr(model, "config", None), "model_type", "") or ""
    bias_total = sum(n.bias_params for n in nodes.values())
    return LayerTree(root, model_type, root.params, blocks_prefix, num_blocks, nodes, bias_total)


# ------------------------------------------------------------------------------------------- selection


@dataclass
class Selection:
    """Exact module names to adapt, with the global rank/alpha and per-module overrides."""

    targets: list[str]
    r: int
    alpha: float
    rank_overrides: dict[str, int] = field(default_factory=dict)  # exact name → rank
    alpha_overrides: dict[str, float] = field(default_factory=dict)  # exact name → alpha
    use_dora: bool = False
    use_rslora: bool = False
    bias: str = "none"
    modules_to_save: list[str] = field(default_factory=list)  # exact names
    warnings: list[str] = field(default_factory=list)

    def rank_of(self, name: str) -> int:
        return self.rank_overrides.get(name, self.r)

    def alpha_of(self, name: str) -> float:
        return self.alpha_overrides.get(name, self.alpha)

    def scale_of(self, name: str) -> float:
        r = self.rank_of(name)
        return self.alpha_of(name) / (r ** 0.5 if self.use_rslora else r)


def resolve_selection(tree: LayerTree, lora: LoraSettings, task: str = "causal-lm") -> Selection:
    """Turn the LoRA settings into exact module names (and exact-name overrides), checking every part."""
    problems: list[str] = []
    if lora.target_modules:
        targets: list[str] = []
        for name in lora.target_modules:
            hits = [name] if name in tree.nodes else tree.match(name)
            if not hits:
                problems.append(f"target {name!r} matches no module of this {tree.model_type or 'model'}")
            targets += hits
    else:
        targets = tree.preset(lora.preset) if lora.preset != "none" else []
        for pat in lora.include:
            hits = tree.match(pat)
            if not hits:
                problems.append(f"pattern {pat!r} matches no adaptable module")
            targets += hits
    for name in targets:
        if name in tree.nodes and not tree.nodes[name].adaptable:
            problems.append(f"{name} is a {tree.nodes[name].type}, which LoRA cannot adapt (only Linear, Conv1D and Conv2d)")
    if lora.blocks is not None:
        if not tree.blocks_prefix:
            problems.append("blocks: this model has no repeated transformer blocks to choose from")
        else:
            wanted = parse_block_spec(lora.blocks)
            out_of_range = [b for b in wanted if b >= tree.num_blocks]
            if out_of_range:
                problems.append(f"blocks {lora.blocks!r}: the model has blocks 0–{tree.num_blocks - 1} only")
            targets = tree.in_blocks(targets, wanted)
    targets = sorted(set(targets), key=tree._order)
    if not targets and not problems:
        problems.append("the selection is empty: no module would get an adapter")

    rank_overrides = _resolve_overrides(tree, targets, lora.rank_pattern, "rank_pattern", problems)
    alpha_overrides = _resolve_overrides(tree, targets, lora.alpha_pattern, "alpha_pattern", problems)
    modules_to_save = _modules_to_save(tree, lora.modules_to_save, task, problems)
    if problems:
        raise SelectionError("; ".join(problems), "check the names against `workbench inspect MODEL`")

    sel = Selection(targets, lora.r, lora.alpha, rank_overrides, alpha_overrides, lora.use_dora, lora.use_rslora,
                    lora.bias, modules_to_save)
    for name in targets:
        node, r = tree.nodes[name], sel.rank_of(name)
        if r > min(node.in_features, node.out_features):
            sel.warnings.append(
                f"{name}: rank {r} exceeds the module's smaller dimension {min(node.in_features, node.out_features)}; "
                "ranks above that add parameters but no capacity"
            )
    return sel


def _resolve_overrides(tree: LayerTree, targets: list[str], patterns: dict, field_name: str, problems: list[str]) -> dict:
    out: dict[str, Any] = {}
    target_set = set(targets)
    for pat, value in patterns.items():
        hits = [n for n in ([pat] if pat in tree.nodes else tree.match(pat)) if n in target_set]
        if not hits:
            problems.append(f"{field_name} key {pat!r} matches no selected module")
        for n in hits:
            out[n] = value
    return out


def _modules_to_save(tree: LayerTree, names: list[str], task: str, problems: list[str]) -> list[str]:
    out = []
    for name in names:
        hits = [name] if name in tree.nodes else tree.match(name, adaptable_only=False)
        if not hits:
            problems.append(f"modules_to_save {name!r} matches no module")
        out += hits
    if task in ("sequence-classification", "image-classification"):
        # PEFT adds the classification head to modules_to_save for SEQ_CLS; count it the same way (an image
        # classifier has no PEFT task type: lora_config_from_selection names its head itself).
        out += [n for n in ("classifier", "score") if n in tree.nodes]
    return sorted(set(out), key=tree._order)


def lora_config_from_selection(sel: Selection, lora: LoraSettings, task: str = "causal-lm"):
    """The PEFT ``LoraConfig`` that builds exactly this selection."""
    from peft import LoraConfig, TaskType

    from .lora_init import peft_init

    init, init_kwargs = peft_init(lora.init)
    # rank_pattern/alpha_pattern keys are regexes PEFT matches against the end of a module's name;
    # full dotted names only ever match themselves (a '.' can only meet a '.' in real names).
    return LoraConfig(
        task_type=(TaskType.SEQ_CLS if task == "sequence-classification" else None if task == "image-classification"
                   else TaskType.CAUSAL_LM),
        r=sel.r,
        lora_alpha=sel.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(sel.targets),
        rank_pattern=dict(sel.rank_overrides),
        alpha_pattern=dict(sel.alpha_overrides),
        use_rslora=sel.use_rslora,
        use_dora=sel.use_dora,
        init_lora_weights=init,
        **init_kwargs,
        bias=sel.bias,
        modules_to_save=[m for m in sel.modules_to_save if m not in ("classifier", "score")] or None
        if task == "sequence-classification" else (list(sel.modules_to_save) or None),
    )

