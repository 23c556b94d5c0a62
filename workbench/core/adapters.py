"""Adapters in: read any PEFT LoRA adapter safely, and check that it fits the base model it belongs to.

Notation (GUIDE §1). A LoRA module adapts a weight ``W`` of shape (out × in) by ``ΔW = s · B @ A`` with
``A`` (r × in), ``B`` (out × r) and ``s = alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA. PEFT stores the
pair as ``lora_A.weight`` / ``lora_B.weight``. Three layer types carry adapters, and they differ only in
how ``W`` is laid out on disk:

* ``nn.Linear`` stores ``W`` as (out × in);
* GPT-2's ``Conv1D`` stores it transposed, (in × out);
* ``nn.Embedding`` stores (num_embeddings × dim), and PEFT's ``lora_embedding_A`` is (r × num_embeddings)
  and ``lora_embedding_B`` (dim × r): an embedding is the linear map from one-hot rows (in = vocabulary)
  to vectors (out = dim), stored transposed exactly like ``Conv1D``.

So every adapted weight is handled as "(out × in), possibly stored transposed" (``base_model.Layout``).

The base model, opened without loading its weights, is ``core/base_model.py``; what an adapter changes,
module by module, ``core/adapter_report.py``. PEFT's file names and key prefix come from
``core/peft_format.py``. Only ``adapter_model.safetensors`` is ever read: pickle files are never opened.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.core.base_model import BaseCheckpoint, Layout
from workbench.core.checkpoint import natural_key, read_json_object
from workbench.core.errors import AdapterError
from workbench.core.paths import require_regular_file
from workbench.core.peft_format import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, KEY_PREFIX, LORA_VARIANT_FIELDS,
                                        LORA_VARIANT_INITS, pattern_key)

__all__ = [
    "LoraModule",
    "Replacement",
    "LoraAdapter",
    "find_adapter_dir",
    "load_adapter",
    "Target",
    "AdapterFit",
    "adapter_problems",
    "check_adapter",
    "adapter_task",
    "is_weight_file",
    "input_folders",
]

# Files that hold weights (or pickled objects) rather than configuration; never copied or unpickled.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".npz")

_LORA_KEY = re.compile(
    r"(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B"
    r"|lora_magnitude_vector(?:\.weight)?)"
)


def is_weight_file(name: str) -> bool:
    """True for weight files and their indexes (``*.safetensors``, ``*.bin.index.json``, …)."""
    name = name.removesuffix(".index.json")
    return name.endswith(_WEIGHT_SUFFIXES)


# ============================================================================================ adapters


@dataclass(frozen=True, eq=False)
class LoraModule:
    """One adapted layer: ``ΔW = scale · lora_B @ lora_A`` in the layer's (out × in) orientation.

    ``magnitude`` is DoRA's learned norm of every output row of the merged weight, or None for LoRA.
    ``embedding`` says PEFT stored the pair as ``lora_embedding_A/B`` (the layer is an ``nn.Embedding``).
    """

    name: str
    lora_A: torch.Tensor  # (r × in)
    lora_B: torch.Tensor  # (out × r)
    alpha: float
    scale: float
    embedding: bool = False
    magnitude: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    @property
    def in_features(self) -> int:
        return self.lora_A.shape[1]

    @property
    def out_features(self) -> int:
        return self.lora_B.shape[0]


@dataclass(frozen=True, eq=False)
class Replacement:
    """A full tensor the adapter carries for the base model: a ``modules_to_save`` layer, or the weight of
    a targeted embedding that PEFT saved alongside (``…base_layer.weight``)."""

    adapter_key: str  # key in adapter_model.safetensors
    tensor: torch.Tensor


@dataclass(frozen=True, eq=False)
class LoraAdapter:
    path: Path
    config: dict[str, Any]  # adapter_config.json as read
    modules: dict[str, LoraModule]  # by module name in the base model, in natural order
    replacements: dict[str, Replacement]  # by the name of the base model tensor they replace

    @property
    def use_dora(self) -> bool:
        return bool(self.config.get("use_dora"))

    @property
    def use_rslora(self) -> bool:
        return bool(self.config.get("use_rslora"))

    @property
    def base_model_name(self) -> str | None:
        return self.config.get("base_model_name_or_path") or None

    @property
    def method(self) -> str:
        return "DoRA" if self.use_dora else "rsLoRA" if self.use_rslora else "LoRA"


def find_adapter_dir(path: str | Path) -> Path:
    """The PEFT adapter folder for ``path``: the folder itself, or ``path/adapter`` for a run folder."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"adapter folder {path} does not exist", "pass a run folder or a PEFT adapter folder")
    for candidate in (path, path / "adapter"):
        require_regular_file(candidate / ADAPTER_CONFIG, ADAPTER_CONFIG, AdapterError)  # a FIFO is no missing file
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    nested = sorted(str(c.parent) for c in path.glob(f"*/{ADAPTER_CONFIG}"))
    hint = (f"adapters found in sub-folders (PEFT saves adapters not named 'default' there): {', '.join(nested)}"
            if nested else "pass a run folder or a PEFT adapter folder (one with adapter_config.json)")
    raise AdapterError(f"no adapter in {path}: {ADAPTER_CONFIG} not found", hint)


def input_folders(*, adapter: "LoraAdapter | None" = None, base: "BaseCheckpoint | None" = None,
                  gguf_base: Path | None = None) -> dict[str, Path | None]:
    """The folders a merge or export reads, by description, for ``paths.check_new_output``: no output may be
    written inside them (it would change the input, and be read back as part of it next time). The one list for
    every writer: the adapter's folder, the base model's folder, the folder of a GGUF base file. (A run folder
    itself is not one: the window exports into it by default, beside ``adapter/``.)"""
    return {"the base model": base.path if base is not None else None,
            "the adapter": adapter.path if adapter is not None else None,
            "the GGUF base's folder": gguf_base.parent if gguf_base is not None else None}


def load_adapter(path: str | Path) -> LoraAdapter:
    """Read a PEFT LoRA/DoRA adapter (ours or anyone's) from a run folder or an adapter folder.

    Only ``adapter_model.safetensors`` is read. An adapter whose weights exist only as a pickle file
    (``adapter_model.bin``) is refused without opening it: unpickling runs arbitrary code.
    """
    folder = find_adapter_dir(path)
    config = read_json_object(folder / ADAPTER_CONFIG, AdapterError)
    _refuse_unsupported_config(config, folder)
    weights = require_regular_file(folder / ADAPTER_WEIGHTS, ADAPTER_WEIGHTS, AdapterError)
    if not weights.is_file():
        pickles = sorted(f.name for f in folder.iterdir() if f.suffix in (".bin", ".pt", ".pth"))
        if pickles:
            raise AdapterError(
                f"{folder} holds its weights only as the pickle file {pickles[0]}; pickle files can run "
                "arbitrary code when opened, so they are never loaded",
                "convert it once where you trust the file: load it with PEFT and save_pretrained() it "
                "(PEFT writes adapter_model.safetensors)",
            )
        raise AdapterError(f"{folder} has no {ADAPTER_WEIGHTS}, so the adapter folder is incomplete",
                           f"copy {ADAPTER_WEIGHTS} along with {ADAPTER_CONFIG}, or export the adapter again")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"cannot read {weights}: {exc}",
                           "the file is damaged or incomplete: copy or export the adapter again") from None
    _refuse_non_finite(weights, tensors)
    return _parse_adapter(folder, config, tensors)


def _refuse_non_finite(weights: Path, tensors: dict[str, torch.Tensor]) -> None:
    """NaN or infinite weights would be merged, exported and served as they are (a merged model that answers
    NaN), and break the report's SVD: every reader of an adapter refuses them here, naming the tensors."""
    import torch

    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        names = ", ".join(sorted(bad, key=natural_key)[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise AdapterError(f"{weights} holds NaN or infinite values in {len(bad)} tensor(s): {names}",
                           "the training that made it diverged: train again from an earlier checkpoint, with a lower "
                           "learning rate (or max_grad_norm set)")


_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "eva", "loftq", "orthogonal", "lora_ga")


def _refuse_unsupported_config(config: dict[str, Any], folder: Path) -> None:
    """Refuse what the merge cannot reproduce exactly: other PEFT methods and LoRA variants other than DoRA.

    The list of variants is PEFT's own ``LoraConfig`` field metadata (the same flags PEFT uses to pick a variant
    layer), written out in ``peft_format`` and checked against the installed PEFT by a test, so a variant added
    to PEFT later fails the suite rather than being merged wrongly; reading an adapter does not import PEFT.
    """
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise AdapterError(f"{folder} is a {peft_type or 'non-PEFT'} adapter (adapter_config.json: peft_type = "
                           f"{peft_type!r}); only LoRA and DoRA adapters are supported",
                           "choose a LoRA adapter folder (peft_type \"LORA\"), such as a run folder's adapter/")
    found = [name for name in LORA_VARIANT_FIELDS if config.get(name)]
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.startswith(LORA_VARIANT_INITS):
        found.append(f"init_lora_weights={init!r}")
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS) and f"init_lora_weights={init!r}" not in found:
        # These initialisations subtract the initial adapter from the base weights; the adapter is only
        # correct against that modified base, so merging or exporting it against the original is wrong.
        found.append(f"init_lora_weights={init!r} (it rewrites the base weights; save it with PEFT's "
                     "path_initial_model_for_weight_conversion to get a plain LoRA first)")
    for name, what in (("lora_bias", "lora_bias"), ("target_parameters", "target_parameters (LoRA on raw parameters)"),
                       ("layer_replication", "layer_replication")):
        if config.get(name):
            found.append(what)
    if found:
        raise AdapterError(
            f"{folder} uses {', '.join(found)}, which cannot be merged or exported here",
            "supported: LoRA, rsLoRA and DoRA on Linear, Conv1D and Embedding layers (LoRA on Conv2d), with per-module rank and alpha",
        )


_MALFORMED_CONFIG_HINT = "fix that value in adapter_config.json, or export the adapter again"


def _parse_adapter(folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LoraAdapter:
    parts: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    replacements: dict[str, Replacement] = {}
    unknown: list[str] = []
    for key, tensor in tensors.items():
        if not key.startswith(KEY_PREFIX):
            unknown.append(key)
            continue
        name = key[len(KEY_PREFIX):]
        match = _LORA_KEY.fullmatch(name)
        if match:
            parts[match["module"]][match["part"].removesuffix(".weight")] = tensor
        elif any(p.startswith("lora_") or p == "token_adapter" for p in name.split(".")):
            unknown.append(key)  # a LoRA tensor of a kind we do not know how to merge
        else:
            replacements[name.replace(".base_layer.", ".")] = Replacement(key, tensor)
    if unknown:
        raise AdapterError(f"{folder / ADAPTER_WEIGHTS} has tensors this version cannot interpret: {', '.join(unknown[:5])}",
                           "only PEFT LoRA/DoRA adapters are supported: choose one saved by PEFT's save_pretrained")

    modules: dict[str, LoraModule] = {}
    for name in sorted(parts, key=natural_key):
        modules[name] = _make_module(name, parts[name], config, folder)
    if not modules:
        raise AdapterError(f"{folder / ADAPTER_WEIGHTS} contains no LoRA weights",
                           "the file is not a LoRA adapter's: copy or export the adapter again")
    return LoraAdapter(folder, config, modules, replacements)


def _make_module(name: str, p: dict[str, torch.Tensor], config: dict[str, Any], folder: Path) -> LoraModule:
    """Pair A and B, and compute the module's scale exactly as PEFT does (patterns resolved by PEFT's matcher)."""
    embedding = "lora_embedding_A" in p or "lora_embedding_B" in p
    a, b = (p.get("lora_embedding_A"), p.get("lora_embedding_B")) if embedding else (p.get("lora_A"), p.get("lora_B"))
    if a is not None and b is not None and a.ndim == 4 and b.ndim == 4 and tuple(b.shape[2:]) == (1, 1):
        # PEFT's LoRA on a Conv2d: A is an r-filter convolution with the layer's kernel (r × in × kh × kw), B a 1 × 1
        # convolution (out × r × 1 × 1). B·A over the flattened kernel is the weight update, in the layer's layout.
        a, b = a.flatten(1), b.flatten(1)
    if a is None or b is None or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        shapes = {k: tuple(v.shape) for k, v in p.items()}
        raise AdapterError(f"{folder}: module {name} has an incomplete or inconsistent A/B pair {shapes} "
                           "(a module needs lora_A (r × in) and lora_B (out × r))",
                           f"{ADAPTER_WEIGHTS} is damaged or was edited: copy or export the adapter again")
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    for field_name, value in (("rank_pattern", rank_pattern), ("alpha_pattern", alpha_pattern)):
        if not isinstance(value, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
            raise AdapterError(f"{folder / 'adapter_config.json'}: {field_name} must map module names to numbers, got {value!r}",
                               _MALFORMED_CONFIG_HINT)
    for field_name in ("r", "lora_alpha"):
        value = config.get(field_name, 8)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise AdapterError(f"{folder / 'adapter_config.json'}: {field_name} must be a positive number, got {value!r}",
                               _MALFORMED_CONFIG_HINT)
    r = rank_pattern.get(pattern_key(rank_pattern.keys(), name), config.get("r", 8))
    alpha = alpha_pattern.get(pattern_key(alpha_pattern.keys(), name), config.get("lora_alpha", 8))
    if a.shape[0] != r:
        raise AdapterError(f"{folder}: module {name} has rank {a.shape[0]} in its weights but {r} in {ADAPTER_CONFIG}",
                           f"the configuration does not belong to these weights: keep {ADAPTER_CONFIG} and "
                           f"{ADAPTER_WEIGHTS} from the same save, or export the adapter again")
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    magnitude = p.get("lora_magnitude_vector")
    if config.get("use_dora") and magnitude is None:
        raise AdapterError(f"{folder}: DoRA adapter (use_dora = true) without a magnitude vector for {name}",
                           f"{ADAPTER_WEIGHTS} is incomplete, or use_dora was set by hand: export the adapter again")
    return LoraModule(name, a, b, float(alpha), scale, embedding, magnitude)


# ======================================================================================= fit / import


@dataclass(frozen=True)
class Target:
    """Where one adapted module's weight lives in the base model."""

    module: str
    layout: Layout
    weight_key: str  # tensor name; may be absent from the checkpoint for a tied output embedding

    @property
    def transposed(self) -> bool:
        """Stored as (in × out) rather than (out × in)."""
        return self.layout in ("conv1d", "embedding")


@dataclass(frozen=True, eq=False)
class AdapterFit:
    """An adapter checked against its base: every module found, every shape right."""

    adapter: LoraAdapter
    base: BaseCheckpoint
    targets: dict[str, Target]  # by module name
    # A classification adapter's tensors the base checkpoint lacks or holds in another shape: the head (and
    # any module the base did not have, BERT's pooler under a masked-LM base), added to the merged model whole.
    added: tuple[str, ...] = ()


def _is_classification(adapter: LoraAdapter) -> bool:
    """A text (PEFT's SEQ_CLS) or image classifier's adapter (an image run saves labels.json, and has no PEFT task)."""
    return adapter.config.get("task_type") == "SEQ_CLS" or (adapter.path / "labels.json").is_file()


def adapter_task(adapter: LoraAdapter) -> str | None:
    """The head a classification adapter was trained with, which the base is seen as when the adapter is checked
    against it (a bare encoder's checkpoint has none); None for every other adapter (the base as saved)."""
    if not _is_classification(adapter):
        return None
    return "sequence-classification" if adapter.config.get("task_type") == "SEQ_CLS" else "image-classification"


def _match(adapter: LoraAdapter, base: BaseCheckpoint) -> tuple[dict[str, Target], list[str], int]:
    """Targets, problems (each naming its module), and how many adapted modules the base lacks."""
    targets, problems, missing, _ = _match_all(adapter, base)
    return targets, problems, missing


def _match_all(adapter: LoraAdapter, base: BaseCheckpoint) -> tuple[dict[str, Target], list[str], int, list[str]]:
    """``_match`` plus the tensors a classification adapter adds to the base."""
    problems: list[str] = []
    added: list[str] = []
    targets: dict[str, Target] = {}
    missing = 0
    tied_out = base.tied_embeddings[1] if base.tied_embeddings else None
    for name, mod in adapter.modules.items():
        info = base.module(name)
        if info is None:
            missing += 1
            problems.append(f"{name}: no such module in the base model")
            continue
        if info.layout is None:
            problems.append(f"{name}: a {info.type_name} cannot carry a LoRA adapter here (Linear, Conv1D, Embedding and Conv2d with groups = 1 can)")
            continue
        if mod.embedding != (info.layout == "embedding"):
            kind = "embedding" if mod.embedding else "linear"
            problems.append(f"{name}: the adapter has {kind} LoRA weights but the base layer is a {info.type_name}")
            continue
        key = base.stored_name(f"{name}.weight")  # the model's name for it may not be the checkpoint's
        if key not in base.tensors and key != tied_out:
            converted = base.converted_tensors
            problems.append(f"{name}: its weight {key} is not in the checkpoint files" + (
                f" (transformers builds it on load by converting stored tensors such as {converted[0]}, so it "
                "cannot be merged tensor by tensor; merge with PEFT's merge_and_unload)" if converted else ""))
            continue
        shape = base.tensors[key].shape if key in base.tensors else info.weight_shape
        if info.layout == "conv2d":  # (out, in, kh, kw): the pair maps in·kh·kw → out
            out_f, in_f = shape[0], math.prod(shape[1:])
            if mod.magnitude is not None:
                problems.append(f"{name}: DoRA on a convolution cannot be merged here; merge it with PEFT")
                continue
        else:
            out_f, in_f = shape if info.layout == "linear" else shape[::-1]
        if (mod.out_features, mod.in_features) != (out_f, in_f):
            problems.append(f"{name}: shape mismatch: the adapter maps {mod.in_features} → {mod.out_features} features "
                            f"(A {tuple(mod.lora_A.shape)}, B {tuple(mod.lora_B.shape)}) but the base layer maps "
                            f"{in_f} → {out_f}")
            continue
        if mod.magnitude is not None and tuple(mod.magnitude.shape) != (out_f,):
            problems.append(f"{name}: DoRA magnitude has shape {tuple(mod.magnitude.shape)}, expected ({out_f},)")
            continue
        targets[name] = Target(name, info.layout, key)
    for key, rep in adapter.replacements.items():
        shape = base.parameter_shape(key)
        # A classification head is trained in full for the task's classes: the base has none, or one of
        # another size (a checkpoint fine-tuned for other classes), and the adapter's copy is the head.
        head = _is_classification(adapter) and bool({"classifier", "score"} & set(key.split(".")[:-1]))
        stored = base.stored_name(key) in base.tensors  # the classifier's own skeleton has a head the files may lack
        if _is_classification(adapter) and (not stored or (head and shape != tuple(rep.tensor.shape))):
            added.append(base.stored_name(key))
        elif shape is None:
            problems.append(f"{key}: the adapter replaces this tensor (modules_to_save) but the base model has no such tensor")
        elif shape != tuple(rep.tensor.shape):
            problems.append(f"{key}: shape mismatch: the adapter's copy is {tuple(rep.tensor.shape)}, the base's {shape}"
                            + (" (trained with a resized vocabulary?)" if "embed" in key or "lm_head" in key else ""))
    return targets, problems, missing, added


def adapter_problems(adapter: LoraAdapter, base: BaseCheckpoint) -> list[str]:
    """Everything that keeps ``adapter`` from applying to ``base``, one line per module; empty if it fits."""
    return _match(adapter, base.for_task(adapter_task(adapter)))[1]


def check_adapter(adapter: LoraAdapter, base: BaseCheckpoint) -> AdapterFit:
    """Check that ``adapter`` fits ``base`` and say where each module's weight is; raise AdapterError if not.

    A classification adapter is checked against the base seen as a classifier (``AdapterFit.base``), which is
    what its module names refer to even when the checkpoint is a bare encoder."""
    base = base.for_task(adapter_task(adapter))
    targets, problems, missing, added = _match_all(adapter, base)
    if not problems:
        return AdapterFit(adapter, base, targets, tuple(added))
    shown = "\n  ".join(problems[:12]) + (f"\n  … and {len(problems) - 12} more" if len(problems) > 12 else "")
    if missing == len(adapter.modules):
        head = f"the adapter {adapter.path} does not belong to the base model {base.path}: none of its {missing} adapted modules exists there"
    else:
        head = f"the adapter {adapter.path} does not fit the base model {base.path} ({len(problems)} problems)"
    trained_on = adapter.base_model_name
    hint = (f"the adapter was trained on {trained_on!r}; use that model as the base" if trained_on
            else "use the base model the adapter was trained on")
    raise AdapterError(f"{head}:\n  {shown}", hint)

