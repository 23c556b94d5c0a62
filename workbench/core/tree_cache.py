"""A model's module tree remembered between commands, so that inspecting a model again imports no modeling code.

Building the tree needs the architecture's modeling module on the meta device, and importing it (transformers'
masking utilities, torch's dynamo, the generation utilities, accelerate) costs more than the rest of
``workbench inspect`` together: about 1.5 s on a 2-core machine, every time, although the tree of a given
``config.json`` never changes. So the tree, with the few sizes the memory estimate reads, is kept in
``<cache>/trees/<key>.json``; the key is a hash of everything the tree depends on: the bytes of ``config.json``,
the task and its label count, the installed transformers version and the source of the code that builds and
walks the skeleton (a change to ``layers.py`` or ``checkpoint.py`` invalidates every entry). The model itself
is still resolved and checked every time (``models.resolve_source``: safetensors only, no pickles, no remote
code), only its configuration is not read through transformers again.

What is cached never decides anything the fresh path would refuse: an entry is written only after the fresh
path succeeded, a model with code of its own (``trust_remote_code``) is never cached, and an unreadable or
foreign entry is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .cache import cache_root
from .fsutil import atomic_write_text
from .layers import LayerNode, LayerTree
from .models import ModelOverview, ModelSource, open_overview, resolve_source

__all__ = ["open_overview_cached", "tree_from_json", "tree_to_json"]

FORMAT = 1
# The sizes estimate_for_config reads from a transformers config (its text config for multimodal models).
_MEMORY_FIELDS = ("hidden_size", "vocab_size", "num_attention_heads")
_NODE_FIELDS = tuple(f.name for f in fields(LayerNode) if f.name != "children")


def open_overview_cached(spec: str, *, revision: str | None = None, task: str = "causal-lm", num_labels: int | None = None,
                         trust_remote_code: bool = False, allow_pickle: bool = False, cache_dir: str | Path | None = None,
                         use_cache: bool = True) -> tuple[ModelOverview, bool]:
    """``models.open_overview`` through the tree cache: (the overview, whether it came from the cache).

    From the cache, ``overview.hf_config`` is a namespace with only the sizes the memory estimate reads (and
    ``model_type``), not a transformers config."""
    if not use_cache or trust_remote_code:
        return open_overview(spec, revision=revision, task=task, num_labels=num_labels,
                             trust_remote_code=trust_remote_code, allow_pickle=allow_pickle), False
    source = resolve_source(spec, revision, allow_pickle=allow_pickle)
    entry = _entry_path(source, task, num_labels, cache_dir)
    if entry is not None and (cached := _read(entry, source)) is not None:
        return cached, True
    overview = open_overview(spec, revision=revision, task=task, num_labels=num_labels, allow_pickle=allow_pickle)
    if entry is not None:
        _write(entry, overview)
    return overview, False


def tree_to_json(tree: LayerTree) -> dict[str, Any]:
    def node(n: LayerNode) -> dict[str, Any]:
        d = {k: v for k, v in asdict(n).items() if k != "children"}
        d["children"] = [node(c) for c in n.children]
        return d

    return {"root": node(tree.root), "model_type": tree.model_type, "total_params": tree.total_params,
            "blocks_prefix": tree.blocks_prefix, "num_blocks": tree.num_blocks, "bias_params_total": tree.bias_params_total}


def tree_from_json(data: dict[str, Any]) -> LayerTree:
    nodes: dict[str, LayerNode] = {}

    def node(d: dict[str, Any]) -> LayerNode:
        values = {k: d[k] for k in _NODE_FIELDS}
        if values["shape"] is not None:
            values["shape"] = tuple(values["shape"])
        n = LayerNode(**values, children=[node(c) for c in d["children"]])
        nodes[n.name] = n
        return n

    root = node(data["root"])
    return LayerTree(root, data["model_type"], data["total_params"], data["blocks_prefix"], data["num_blocks"], nodes,
                     data["bias_params_total"])


def _code_fingerprint() -> str:
    """The source of the code whose output is cached: a changed tree walk must not be served an old tree."""
    from . import checkpoint, layers, models

    digest = hashlib.sha256()
    for module in (layers, checkpoint, models):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()


def _entry_path(source: ModelSource, task: str, num_labels: int | None, cache_dir: str | Path | None) -> Path | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        config_bytes = (source.path / "config.json").read_bytes()
        transformers_version = version("transformers")
    except (OSError, PackageNotFoundError):
        return None  # the fresh path names the problem
    key = hashlib.sha256(json.dumps([FORMAT, task, num_labels, transformers_version, _code_fingerprint()]).encode()
                         + b"\0" + config_bytes).hexdigest()
    return cache_root(cache_dir) / "trees" / f"{key}.json"


def _read(entry: Path, source: ModelSource) -> ModelOverview | None:
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            return None
        memory = SimpleNamespace(**{k: data["memory"].get(k) for k in _MEMORY_FIELDS},
                                 model_type=data["tree"]["model_type"], _attn_implementation=data["memory"].get("attn"))
        return ModelOverview(source, memory, tree_from_json(data["tree"]), data["architecture"], data["dtype"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # unreadable, truncated or from another version: rebuilt and rewritten


def _write(entry: Path, overview: ModelOverview) -> None:
    hf_config = overview.hf_config
    text_cfg = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    data = {
        "format": FORMAT, "architecture": overview.architecture, "dtype": overview.dtype,
        "memory": {**{k: getattr(text_cfg, k, None) for k in _MEMORY_FIELDS},
                   "attn": getattr(hf_config, "_attn_implementation", None)},
        "tree": tree_to_json(overview.tree),
    }
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(entry, json.dumps(data, separators=(",", ":")))
    except OSError:
        pass  # a read-only or full cache folder only costs the next inspect its speed
