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

A config.json not seen before, of an architecture seen before, gets its tree from that architecture's template
(core/tree_template.py: learned from tiny probes when the first config of it was built, kept only where it
rebuilds them and that config exactly), also without modeling code; anything a template cannot explain is built
afresh. The common architectures' templates also ship with Workbench (core/builtin_templates/, learned from their
Hub config.json files under one exact transformers version), so that even the first config of one on a fresh
machine needs no modeling code; they are read after the user's own templates and never written to the cache.
``use_cache=False`` (``workbench inspect --no-cache``) turns all of it off. A tree from a template is not
written to the tree cache (a tree entry is only ever what the fresh path built).
"""

from __future__ import annotations

import hashlib
import json
import marshal
from dataclasses import fields
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Literal

from .cache import cache_root
from .events import SinkLike
from .fsutil import atomic_write_text
from .layers import LayerNode, LayerTree
from .models import ModelOverview, ModelSource, open_overview, resolve_source

__all__ = ["module_code_bytes", "open_overview_cached", "tree_from_json", "tree_to_json"]

FORMAT = 1
Origin = Literal["built", "cache", "template", "builtin"]
# The sizes estimate_for_config reads from a transformers config (its text config for multimodal models).
_MEMORY_FIELDS = ("hidden_size", "vocab_size", "num_attention_heads")
_NODE_FIELDS = tuple(f.name for f in fields(LayerNode) if f.name != "children")


def open_overview_cached(spec: str, *, revision: str | None = None, task: str = "causal-lm", num_labels: int | None = None,
                         trust_remote_code: bool = False, allow_pickle: bool = False, cache_dir: str | Path | None = None,
                         use_cache: bool = True, use_templates: bool = True,
                         sink: SinkLike = None) -> tuple[ModelOverview, Origin]:
    """``models.open_overview`` through the tree cache and the architecture templates (core/tree_template.py):
    (the overview, where its tree came from: ``"built"`` afresh, the remembered ``"cache"`` of this config.json,
    its architecture's ``"template"`` learned on this machine, or the ``"builtin"`` one shipped with Workbench;
    tried in that order, from the cache on). ``use_cache=False`` turns all of them off, ``use_templates=False``
    both kinds of template.

    From the cache or a template, ``overview.hf_config`` is a namespace with only the sizes the memory estimate
    reads (and ``model_type``, ``_name_or_path``), not a transformers config."""
    if not use_cache or trust_remote_code:
        return open_overview(spec, revision=revision, task=task, num_labels=num_labels,
                             trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, sink=sink), "built"
    source = resolve_source(spec, revision, allow_pickle=allow_pickle, sink=sink)
    if task != "sequence-classification":
        num_labels = None  # only a classifier's head has it (open_overview ignores it too): one entry for both faces
    entry = _entry_path(source, task, num_labels, cache_dir)
    if entry is not None and (cached := _read(entry, source)) is not None:
        return cached, "cache"
    raw, template_entry = _template_entry(source, task, num_labels, cache_dir) if use_templates else (None, None)
    if template_entry is not None and raw is not None:
        if done := _from_template(template_entry, source, raw):
            return done, "template"
        # Shipped with Workbench for the common architectures (core/builtin_templates/): nothing is written, so a
        # built-in template never stands in the cache for what this machine built or learned.
        if (builtin := _builtin_entry(raw, task, num_labels)) and (done := _from_template(builtin, source, raw)):
            return done, "builtin"
    overview = open_overview(spec, revision=revision, task=task, num_labels=num_labels, allow_pickle=allow_pickle,
                             sink=sink)
    if entry is not None:
        _write(entry, overview)
    if template_entry is not None and raw is not None:
        _learn(template_entry, raw, overview, task, num_labels)
    return overview, "built"


def tree_to_json(tree: LayerTree) -> dict[str, Any]:
    def node(n: LayerNode) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(n, k) for k in _NODE_FIELDS}  # not asdict: it copies every subtree again
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
        n = LayerNode(**values)
        nodes[n.name] = n  # before its children: the order build_tree gives (selections are sorted by it)
        n.children = [node(c) for c in d["children"]]
        return n

    root = node(data["root"])
    return LayerTree(root, data["model_type"], data["total_params"], data["blocks_prefix"], data["num_blocks"], nodes,
                     data["bias_params_total"])


def _code_fingerprint() -> str:
    """The source of the code whose output is cached: a changed tree walk must not be served an old tree."""
    from . import checkpoint, layers, models

    digest = hashlib.sha256()
    for module in (layers, checkpoint, models):
        digest.update(module_code_bytes(module))
    return digest.hexdigest()


def module_code_bytes(module: ModuleType) -> bytes:
    """A module's source bytes; in a frozen bundle, which may keep no .py files (PyInstaller puts the bytecode in
    its archive and sets ``__file__`` to a path that does not exist), its compiled code, which changes when the
    source does; failing both, the module's name and Workbench's version (a new build is a new version)."""
    try:
        return Path(module.__file__ or "").read_bytes()
    except OSError:
        pass
    try:
        code = module.__loader__.get_code(module.__name__)  # type: ignore[union-attr]
        if code is not None:
            return marshal.dumps(code)
    except Exception:  # noqa: BLE001  a loader without get_code, or one that cannot find the module's code
        pass
    from workbench import __version__

    return f"{module.__name__} {__version__}".encode()


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
        memory = _config_namespace({k: data["memory"].get(k) for k in _MEMORY_FIELDS}, data["tree"]["model_type"],
                                   data["memory"].get("attn"), source)
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


def _config_namespace(sizes: dict[str, Any], model_type: str, attn: Any, source: ModelSource) -> SimpleNamespace:
    """What the callers of an overview read of its config: the memory estimate's sizes and attention kernel, the
    window's Hub look-up its ``_name_or_path`` (transformers sets it to the folder it read)."""
    return SimpleNamespace(**sizes, model_type=model_type, _attn_implementation=attn, _name_or_path=str(source.path))


def _template_entry(source: ModelSource, task: str, num_labels: int | None,
                    cache_dir: str | Path | None) -> tuple[dict[str, Any] | None, Path | None]:
    """config.json as read (checked as the fresh path checks it) and its architecture's template file, or Nones."""
    from .checkpoint import CONFIG_JSON_FIELDS, read_json_object
    from .errors import ModelSourceError
    from .tree_template import template_key

    try:
        raw = read_json_object(source.path / "config.json", fields=CONFIG_JSON_FIELDS)
    except ModelSourceError:
        return None, None  # the fresh path says what is wrong
    key = template_key(raw, task, num_labels)
    return (raw, cache_root(cache_dir) / "templates" / f"{key}.json") if key else (None, None)


def _builtin_entry(raw: dict[str, Any], task: str, num_labels: int | None) -> Path | None:
    from .builtin_templates import builtin_template_path
    from .tree_template import template_key

    key = template_key(raw, task, num_labels, builtin=True)
    return builtin_template_path(key) if key else None


def _from_template(entry: Path, source: ModelSource, raw: dict[str, Any]) -> ModelOverview | None:
    from .tree_template import FORMAT as TEMPLATE_FORMAT
    from .tree_template import memory_of, tree_from_template

    try:
        template = json.loads(entry.read_text(encoding="utf-8"))
        if template.get("format") != TEMPLATE_FORMAT:
            return None
        tree = tree_from_template(template, raw)
        if tree is None:
            return None
        memory = _config_namespace(memory_of(template, raw), template["model_type"], template["attn"], source)
        return ModelOverview(source, memory, tree, template["architecture"], _raw_dtype(raw))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None  # no template yet, or an unreadable one: built afresh (and learned again)


def _raw_dtype(raw: dict[str, Any]) -> str:
    """``models.open_overview``'s dtype, from config.json: transformers reads "dtype" (or the older "torch_dtype")."""
    return str(raw.get("dtype") or raw.get("torch_dtype") or "float32").replace("torch.", "")


def _readable_template(entry: Path) -> bool:
    from .tree_template import FORMAT as TEMPLATE_FORMAT

    try:
        return json.loads(entry.read_text(encoding="utf-8")).get("format") == TEMPLATE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _learn(entry: Path, raw: dict[str, Any], overview: ModelOverview, task: str, num_labels: int | None) -> None:
    """Learn the architecture's template from probes (core/tree_template.py) and keep it if it explains them all.

    Never lets a failure reach the user: the overview is already built, a template only makes the next one fast."""
    from .tree_template import learn_template

    if _readable_template(entry) or _raw_dtype(raw) != overview.dtype:
        return  # one that could not explain this config would not be learned otherwise; a damaged one is replaced
    try:
        template = learn_template(raw, overview, task, num_labels)
    except Exception:  # noqa: BLE001  a probe transformers refuses (a size it cannot build): no template
        return
    if template is None:
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(entry, json.dumps(template, separators=(",", ":")))
    except OSError:
        pass
