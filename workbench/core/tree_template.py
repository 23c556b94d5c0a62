"""An architecture's module tree learned once, so that any other config of it is inspected without modeling code.

The first time a config of an architecture is opened (``tree_cache.open_overview_cached`` builds it on the meta
device through transformers), the same ``model_type`` is also built five times as a tiny *probe*: the config with
its size fields (``SIZE_FIELDS``: hidden, intermediate, head and vocabulary sizes, head counts, positions) replaced
by small distinct values and 2 or 3 blocks. From the probes, each number of the tree — every weight's dimensions,
a linear layer's in/out features, every parameter tensor's shape — is written as a sum of at most two terms
``coefficient × field [× field]`` over the size fields (``num_attention_heads × head_dim``, ``2 ×
intermediate_size``, ...), and the blocks as one block repeated ``num_hidden_layers`` times. That *template* is
stored only if it rebuilds every probe and the real config's own fresh tree exactly (names, types, kinds,
shapes, parameter counts, ties, memory fields); it lives in ``<cache>/templates/<key>.json``. The templates of
the common architectures are also learned ahead of time, from their Hub config.json files, and ship with Workbench
(core/builtin_templates/, keyed by ``template_key(..., builtin=True)``).

The key holds everything a template cannot vary: the model type, the task and label count, the installed
transformers version, the source of the code that builds and walks trees, and the exact value of every config
field that is not a size field — booleans such as ``tie_word_embeddings`` or ``attention_bias``, strings such as
``hidden_act``, every other integer, the dtype, ``rope_scaling`` — with only the *types* of the fields that cannot
change a module (floats such as ``rope_theta`` or ``rms_norm_eps``, token ids, ``transformers_version``). A probe
is also built with all those floats changed, and a template is kept only if that changes nothing.

A config is not templated (and always built afresh) when it has code of its own (``auto_map``), a nested
configuration (``text_config``, ``quantization_config``, ...), mixture-of-experts fields (any field naming
experts), per-layer lists (``layer_types`` whose entries differ), blocks that are not all alike, or any number
the two-term sums do not explain; and at use, when the learned candidate formulas of one number disagree for the
config at hand (e.g. ``hidden_size`` and ``num_attention_heads × head_dim`` when the two differ).
"""

from __future__ import annotations

import hashlib
import json
import sys
from fractions import Fraction
from itertools import combinations
from typing import Any

from .layers import LayerNode, LayerTree

__all__ = ["SIZE_FIELDS", "learn_template", "template_key", "tree_from_template"]

FORMAT = 1
SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
               "vocab_size", "max_position_embeddings")
LAYERS = "num_hidden_layers"
MEMORY_FIELDS = ("hidden_size", "vocab_size", "num_attention_heads")  # what estimate_for_config reads
_NEUTRAL_NAMES = ("transformers_version", "_name_or_path")
# Probe sizes: key/value heads, heads per key/value head, head size, hidden size per head (used when config.json
# names head_dim; otherwise hidden = heads × head size, as those models derive it), intermediate, vocabulary,
# positions, blocks. Small, distinct, and chosen so that no two size products coincide across the probes.
_PROBES = ((2, 3, 10, 7, 46, 101, 67, 2), (3, 2, 6, 11, 58, 89, 53, 3), (1, 5, 4, 9, 38, 131, 71, 2),
           (4, 1, 8, 5, 70, 97, 61, 2), (2, 2, 14, 3, 34, 113, 59, 2))

Term = tuple[int, tuple[str, ...]]  # coefficient, the fields multiplied (0 to 2 of them)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def split_config(raw: dict[str, Any]) -> tuple[dict[str, int], dict[str, Any], dict[str, str]] | None:
    """(size fields, fields whose exact values are in the key, neutral fields' types), or None: not templated."""
    if not isinstance(raw.get("model_type"), str) or "auto_map" in raw:
        return None
    layers = raw.get(LAYERS)
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        return None
    sizes: dict[str, int] = {}
    exact: dict[str, Any] = {}
    neutral: dict[str, str] = {}
    for k, v in raw.items():
        if k == LAYERS:
            continue
        if k in SIZE_FIELDS and _is_int(v) and v > 0:
            sizes[k] = v
        elif k in _NEUTRAL_NAMES or k.endswith("_token_id") or isinstance(v, float):
            neutral[k] = type(v).__name__
        elif "expert" in k.lower() or (k.endswith("_config") and isinstance(v, dict)):
            return None  # mixture of experts, or a nested configuration (multimodal, quantized)
        elif k == "layer_types":
            if not isinstance(v, list) or len(v) != layers or len({json.dumps(x) for x in v}) != 1:
                return None  # blocks of several kinds
            exact[k] = ["uniform", v[0]]
        elif isinstance(v, list) and k != "architectures" and len(v) == layers:
            return None  # a per-layer list
        else:
            exact[k] = v
    return sizes, exact, neutral


def template_key(raw: dict[str, Any], task: str, num_labels: int | None, *, builtin: bool = False) -> str | None:
    """The template's file stem for this config, or None when it is not templated.

    ``builtin``: the key of a template shipped with Workbench (core/builtin_templates/): without the code
    fingerprint, since the shipped files must not depend on source bytes (a frozen bundle may hold none; a change
    to the tree code is caught by ``python -m workbench.core.builtin_templates --check`` instead), but with the
    exact transformers version, like every key, so that another version finds no built-in template and builds."""
    from importlib.metadata import PackageNotFoundError, version

    split = split_config(raw)
    if split is None:
        return None
    sizes, exact, neutral = split
    try:
        transformers_version = version("transformers")
    except PackageNotFoundError:
        return None
    code = "builtin" if builtin else _code_fingerprint()
    ident = [FORMAT, task, num_labels, transformers_version, code, sorted(sizes), exact, neutral]
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _code_fingerprint() -> str:
    from .tree_cache import _code_fingerprint as tree_code
    from .tree_cache import module_code_bytes

    return hashlib.sha256(tree_code().encode() + module_code_bytes(sys.modules[__name__])).hexdigest()


def _atoms(sizes: dict[str, int]) -> dict[str, int]:
    """The size fields, and the head size those models derive when config.json names none."""
    atoms = dict(sizes)
    if "head_dim" not in atoms and sizes.get("num_attention_heads") and "hidden_size" in sizes:
        atoms["head_dim"] = sizes["hidden_size"] // sizes["num_attention_heads"]
    return atoms


# ------------------------------------------------------------------------------------------ flattening a tree


def _records(model: Any, tree: LayerTree) -> list[tuple[tuple, list[int]]] | None:
    """Per module, in tree order: (what no size changes, the numbers sizes change), as build_tree saw it."""
    from .quantization import logical_numel

    seen: set[str] = set()
    owner: dict[int, str] = {}
    out: list[tuple[tuple, list[int]]] = []
    for name, module in model.named_modules(remove_duplicate=False):
        if name in seen:
            continue
        seen.add(name)
        node = tree.nodes[name]
        params, nums = [], []
        for pname, p in module.named_parameters(recurse=False):
            if logical_numel(p) != p.numel():
                return None  # quantized: not a meta skeleton
            params.append((pname, id(p) in owner, p.dim()))
            owner.setdefault(id(p), name)
            nums += [int(s) for s in p.shape]
        shape = list(node.shape) if node.shape is not None else None
        nums += (shape or []) + [node.in_features, node.out_features]
        fixed = (node.name, node.type, node.adaptable, node.kind, node.block, node.tied_to, node.has_bias,
                 tuple(params), None if shape is None else len(shape))
        out.append((fixed, nums))
    return out


def _blocks_folded(tree: LayerTree, records: list) -> tuple[list, list[int]] | None:
    """The records with the blocks folded into one (names relative to the block), and all numbers in order:
    those before the blocks, block 0's, those after. None when a block differs from block 0 in anything."""
    prefix = tree.blocks_prefix
    rel: list[Any] = []
    nums: list[int] = []
    block0: list[tuple] = []
    others: dict[int, list] = {}
    at = -1  # where block 0's numbers go
    for fixed, values in records:
        name, block, tied = fixed[0], fixed[4], fixed[5]
        if tied is not None and prefix and tied.startswith(prefix + "."):
            return None  # a tie into a block
        if block is None:
            if prefix and name.startswith(prefix + "."):
                return None
            rel.append(fixed)
            nums += values
            continue
        item = ((name[len(f"{prefix}.{block}"):],) + fixed[1:4] + (0,) + fixed[5:], tuple(values))
        if block == 0:
            if not block0:
                if not rel or rel[-1][0] != prefix:
                    return None
                rel.append("<blocks>")
                at = len(nums)
            block0.append(item)
        else:
            others.setdefault(block, []).append(item)
    if not block0:
        return (rel, nums) if prefix is None else None
    if sorted(others) != list(range(1, tree.num_blocks)) or any(items != block0 for items in others.values()):
        return None  # the blocks are not all alike (sizes included)
    rel[rel.index("<blocks>")] = ("<blocks>", tuple(fixed for fixed, _ in block0))
    return rel, nums[:at] + [n for _, values in block0 for n in values] + nums[at:]


# ------------------------------------------------------------------------------------------ the formulas


def _monomials(atoms: list[str]) -> list[tuple[str, ...]]:
    return [()] + [(a,) for a in atoms] + [tuple(c) for c in combinations(atoms, 2)] + [(a, a) for a in atoms]


def _value(terms: tuple[Term, ...] | list, atoms: dict[str, int]) -> int:
    total = 0
    for coef, fields in terms:
        product = coef
        for f in fields:
            product *= atoms[f]
        total += product
    return total


def _solve(values: list[int], probes: list[dict[str, int]], monomials: list) -> list[tuple[Term, ...]]:
    """Every one-term formula that gives ``values`` on all probes, else every two-term one."""
    def m(mono: tuple[str, ...], p: dict[str, int]) -> int:
        return _value([(1, mono)], p)

    singles: list[tuple[Term, ...]] = []
    for mono in monomials:
        base = m(mono, probes[0])
        if base and values[0] % base == 0:
            coef = values[0] // base
            if (coef or not mono) and all(coef * m(mono, p) == v for p, v in zip(probes, values)):
                singles.append(((coef, mono),))
    if singles:
        return singles
    pairs: list[tuple[Term, ...]] = []
    for m1, m2 in combinations(monomials, 2):
        rows = [(m(m1, p), m(m2, p), v) for p, v in zip(probes, values)]
        for (a, b, y), (c, d, z) in combinations(rows, 2):
            det = a * d - b * c
            if det:
                c1, c2 = Fraction(y * d - b * z, det), Fraction(a * z - c * y, det)
                if c1.denominator == c2.denominator == 1 and c1 and c2 and all(
                        c1 * r[0] + c2 * r[1] == r[2] for r in rows):
                    pairs.append(((int(c1), m1), (int(c2), m2)))
                break
    return pairs


# ------------------------------------------------------------------------------------------ learning


def _probe_configs(raw: dict[str, Any], sizes: dict[str, int]) -> list[dict[str, Any]]:
    probes = []
    for kv, group, head, per_head, inter, vocab, positions, layers in _PROBES:
        p = dict(raw)
        heads = kv * group
        values = {"num_key_value_heads": kv, "num_attention_heads": heads, "intermediate_size": inter,
                  "vocab_size": vocab, "max_position_embeddings": positions,
                  "hidden_size": heads * (per_head if "head_dim" in sizes else head), "head_dim": head}
        p.update({k: values[k] for k in sizes})
        p[LAYERS] = layers
        if "layer_types" in raw:
            p["layer_types"] = [raw["layer_types"][0]] * layers
        for k, v in raw.items():  # token ids must lie inside the probe's small vocabulary
            if k.endswith("_token_id") and v is not None:
                p[k] = [min(x, 1) if _is_int(x) else x for x in v] if isinstance(v, list) else (
                    min(v, 1) if _is_int(v) else v)
        probes.append(p)
    return probes


def _perturbed(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: (v * 0.75 + 0.001 if isinstance(v, float) else v) for k, v in raw.items()}


def _build(raw: dict[str, Any], task: str, num_labels: int | None) -> tuple[Any, Any, LayerTree]:
    from transformers import CONFIG_MAPPING

    from .checkpoint import build_skeleton
    from .layers import build_tree

    kwargs = {} if num_labels is None else {"num_labels": num_labels}
    config = CONFIG_MAPPING[raw["model_type"]].from_dict(dict(raw), **kwargs)
    model = build_skeleton(config, task)
    return config, model, build_tree(model)


def _memory(config: Any) -> dict[str, Any]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {k: getattr(text, k, None) for k in MEMORY_FIELDS}


def learn_template(raw: dict[str, Any], fresh: Any, task: str, num_labels: int | None) -> dict[str, Any] | None:
    """The template of ``raw``'s architecture, learned from probes and checked against ``fresh`` (the overview
    built from ``raw`` through transformers), or None when it cannot explain them all exactly."""
    split = split_config(raw)
    if split is None:
        return None
    sizes = split[0]
    labels = num_labels if task == "sequence-classification" else None
    probes = _probe_configs(raw, sizes)
    folded, atoms_of, memories, attns, trees = [], [], [], set(), []
    for p in probes + [_perturbed(probes[0])]:
        config, model, tree = _build(p, task, labels)
        trees.append(tree)
        records = _records(model, tree)
        fold = _blocks_folded(tree, records) if records is not None else None
        if fold is None or tree.num_blocks != p[LAYERS] or type(model).__name__ != fresh.architecture:
            return None
        folded.append(fold)
        atoms_of.append(_atoms({k: p[k] for k in sizes}))
        memories.append(_memory(config))
        attns.add(getattr(config, "_attn_implementation", None))
    structure = folded[0][0]
    if any(f[0] != structure for f in folded) or folded[-1][1] != folded[0][1]:
        return None  # the probes differ in structure, or a float field changed a size
    atom_names = sorted(atoms_of[0])
    monomials = _monomials(atom_names)
    solved: dict[tuple[int, ...], list] = {}
    formulas = []
    for i in range(len(folded[0][1])):
        vector = tuple(f[1][i] for f in folded[:-1])
        if vector not in solved:
            solved[vector] = _solve(list(vector), atoms_of[:-1], monomials)
        if not solved[vector]:
            return None
        formulas.append(solved[vector])
    memory: dict[str, Any] = {}
    for k in MEMORY_FIELDS:
        if k in sizes:
            if any(mem[k] != p[k] for mem, p in zip(memories, probes)):
                return None
        elif len({json.dumps(mem[k]) for mem in memories}) != 1:
            return None
        else:
            memory[k] = memories[0][k]
    if len(attns) != 1 or getattr(fresh.hf_config, "_attn_implementation", None) not in attns:
        return None
    template = {"format": FORMAT, "architecture": fresh.architecture, "model_type": fresh.tree.model_type,
                "blocks_prefix": fresh.tree.blocks_prefix, "structure": _jsonable(structure),
                "formulas": [[[[c, list(f)] for c, f in cand] for cand in cands] for cands in formulas],
                "memory": memory, "attn": attns.pop()}
    template = json.loads(json.dumps(template))
    for p, tree in zip(probes, trees):  # the template must give back every probe it was learned from ...
        if not _same(tree_from_template(template, p), tree):
            return None
    rebuilt = tree_from_template(template, raw)  # ... and the real config's tree
    if rebuilt is None or not _same(rebuilt, fresh.tree) or memory_of(template, raw) != _memory(fresh.hf_config):
        return None
    return template


def _jsonable(x: Any) -> Any:
    return [_jsonable(v) for v in x] if isinstance(x, (list, tuple)) else x


def node_facts(tree: LayerTree) -> list[tuple]:
    """Everything a tree says about each module, for comparing two trees."""
    return [(n.name, n.type, n.shape, n.params, n.own_params, n.shared_params, n.adaptable, n.kind, n.block,
             n.tied_to, n.in_features, n.out_features, n.has_bias, n.bias_params, n.quantized, n.stored_bytes,
             [c.name for c in n.children]) for n in tree.nodes.values()] + [
        (tree.model_type, tree.total_params, tree.blocks_prefix, tree.num_blocks, tree.bias_params_total)]


def _same(a: LayerTree | None, b: LayerTree) -> bool:
    return a is not None and node_facts(a) == node_facts(b) and list(a.nodes) == list(b.nodes)


# ------------------------------------------------------------------------------------------ using a template


def _token_outside(raw: dict[str, Any], sizes: dict[str, int]) -> bool:
    """A token id beyond the vocabulary: an embedding with that padding index cannot be built (transformers warns
    about the others), so the fresh path has the say."""
    vocab = sizes.get("vocab_size")
    ids = [x for k, v in raw.items() if k.endswith("_token_id") for x in (v if isinstance(v, list) else [v])]
    return vocab is not None and any(not _is_int(x) or not 0 <= x < vocab for x in ids if x is not None)


def memory_of(template: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    return {k: raw[k] if k not in template["memory"] else template["memory"][k] for k in MEMORY_FIELDS}


def tree_from_template(template: dict[str, Any], raw: dict[str, Any]) -> LayerTree | None:
    """The tree of ``raw`` from its architecture's template, or None when the template cannot say it exactly."""
    from .checkpoint import MAX_LAYERS

    split = split_config(raw)
    if split is None or not 0 < raw[LAYERS] <= MAX_LAYERS or _token_outside(raw, split[0]):
        return None
    atoms = _atoms(split[0])
    numbers = []
    for cands in template["formulas"]:
        try:
            values = {_value([(c, tuple(f)) for c, f in cand], atoms) for cand in cands}
        except KeyError:
            return None
        if len(values) != 1 or (v := values.pop()) < 0:
            return None  # the candidate formulas disagree here: only a fresh build knows
        numbers.append(v)
    prefix, layers = template["blocks_prefix"], raw[LAYERS]
    nodes: dict[str, LayerNode] = {}
    pos = 0

    def add(fixed: list, name: str, block: int | None) -> None:
        nonlocal pos
        _, type_, adaptable, kind, _, tied, has_bias, params, ndims = fixed
        node = LayerNode(name=name, type=type_, adaptable=adaptable, kind=kind, block=block, tied_to=tied,
                         has_bias=has_bias)
        for pname, shared, dims in params:
            numel = 1
            for s in numbers[pos:pos + dims]:
                numel *= s
            pos += dims
            if shared:
                node.shared_params += numel
            else:
                node.own_params += numel
                if pname == "bias":
                    node.bias_params = numel
        if ndims is not None:
            node.shape = tuple(numbers[pos:pos + ndims])
            pos += ndims
        node.in_features, node.out_features = numbers[pos], numbers[pos + 1]
        pos += 2
        nodes[name] = node
        if name:
            nodes[name.rsplit(".", 1)[0] if "." in name else ""].children.append(node)

    for fixed in template["structure"]:
        if fixed[0] != "<blocks>":
            add(fixed, fixed[0], None)
            continue
        start = pos
        for b in range(layers):
            pos = start
            for inner in fixed[1]:
                add(inner, f"{prefix}.{b}{inner[0]}", b)
    if pos != len(numbers):
        return None

    def total(n: LayerNode) -> int:
        n.params = n.own_params + sum(total(c) for c in n.children)
        return n.params

    root = nodes[""]
    total(root)
    return LayerTree(root, template["model_type"], root.params, prefix, layers if prefix else 0, nodes,
                     sum(n.bias_params for n in nodes.values()))
