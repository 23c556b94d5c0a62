"""Adapters in: read any PEFT LoRA adapter safely, open the base model it belongs to without loading its
weights, check that the two fit, and measure what the adapter changes.

Notation (GUIDE §1). A LoRA module adapts a weight ``W`` of shape (out × in) by ``ΔW = s · B @ A`` with
``A`` (r × in), ``B`` (out × r) and ``s = alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA. PEFT stores the
pair as ``lora_A.weight`` / ``lora_B.weight``. Three layer types carry adapters, and they differ only in
how ``W`` is laid out on disk:

* ``nn.Linear`` stores ``W`` as (out × in);
* GPT-2's ``Conv1D`` stores it transposed, (in × out);
* ``nn.Embedding`` stores (num_embeddings × dim), and PEFT's ``lora_embedding_A`` is (r × num_embeddings)
  and ``lora_embedding_B`` (dim × r): an embedding is the linear map from one-hot rows (in = vocabulary)
  to vectors (out = dim), stored transposed exactly like ``Conv1D``.

So every adapted weight is handled as "(out × in), possibly stored transposed" (``Layout``).

The base model is read from the JSON headers of its safetensors files (names, dtypes, shapes, byte
ranges) plus a model skeleton on the ``meta`` device, which tells the layer type behind every module
name and whether the output embedding shares its weight with the input embedding (both from
``core/checkpoint.py``). No weight is loaded until a caller asks for one tensor, and pickle files are
never opened. PEFT's file names and key prefix come from ``core/peft_format.py``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Literal

import torch

from workbench.core.checkpoint import TensorInfo, natural_key, read_json_object, read_safetensors_header, weight_files
from workbench.core.errors import AdapterError, ModelSourceError, first_line
from workbench.core.events import Progress, as_sink
from workbench.core.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, KEY_PREFIX

__all__ = [
    "Layout",
    "LoraModule",
    "Replacement",
    "LoraAdapter",
    "find_adapter_dir",
    "load_adapter",
    "SAFETENSORS_DTYPE",
    "TORCH_DTYPES",
    "FLOAT_DTYPES",
    "BaseCheckpoint",
    "resolve_base_model",
    "open_base_model",
    "Target",
    "AdapterFit",
    "adapter_problems",
    "check_adapter",
    "is_weight_file",
    "ModuleStats",
    "Heatmap",
    "AdapterReport",
    "lowrank_singular_values",
    "effective_rank",
    "inspect_adapter",
]

Layout = Literal["linear", "conv1d", "embedding"]

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
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    nested = sorted(str(c.parent) for c in path.glob(f"*/{ADAPTER_CONFIG}"))
    hint = (f"adapters found in sub-folders (PEFT saves adapters not named 'default' there): {', '.join(nested)}"
            if nested else "pass a run folder or a PEFT adapter folder (one with adapter_config.json)")
    raise AdapterError(f"no adapter in {path}: {ADAPTER_CONFIG} not found", hint)


def load_adapter(path: str | Path) -> LoraAdapter:
    """Read a PEFT LoRA/DoRA adapter (ours or anyone's) from a run folder or an adapter folder.

    Only ``adapter_model.safetensors`` is read. An adapter whose weights exist only as a pickle file
    (``adapter_model.bin``) is refused without opening it: unpickling runs arbitrary code.
    """
    folder = find_adapter_dir(path)
    config = read_json_object(folder / ADAPTER_CONFIG, AdapterError)
    _refuse_unsupported_config(config, folder)
    weights = folder / ADAPTER_WEIGHTS
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
    return _parse_adapter(folder, config, tensors)


_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "eva", "loftq", "orthogonal", "lora_ga")


def _refuse_unsupported_config(config: dict[str, Any], folder: Path) -> None:
    """Refuse what the merge cannot reproduce exactly: other PEFT methods and LoRA variants other than DoRA.

    The list of variants comes from PEFT's own ``LoraConfig`` field metadata (the same flags PEFT uses to
    pick a variant layer), so a variant added to PEFT later is refused rather than merged wrongly.
    """
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise AdapterError(f"{folder} is a {peft_type or 'non-PEFT'} adapter (adapter_config.json: peft_type = "
                           f"{peft_type!r}); only LoRA and DoRA adapters are supported",
                           "choose a LoRA adapter folder (peft_type \"LORA\"), such as a run folder's adapter/")
    from peft import LoraConfig

    found = []
    for f in dataclasses.fields(LoraConfig):
        value = config.get(f.name)
        if f.metadata.get("is_lora_variant") and f.name != "use_dora" and value:
            found.append(f.name)
        elif f.name == "init_lora_weights" and isinstance(value, str):
            variant_prefixes = tuple(f.metadata.get("lora_variants", ()))  # values (or their prefixes) naming a variant
            if variant_prefixes and value.startswith(variant_prefixes):
                found.append(f"init_lora_weights={value!r}")
    init = config.get("init_lora_weights")
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
            "supported: LoRA, rsLoRA and DoRA on Linear, Conv1D and Embedding layers, with per-module rank and alpha",
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
    from peft.utils.other import get_pattern_key

    embedding = "lora_embedding_A" in p or "lora_embedding_B" in p
    a, b = (p.get("lora_embedding_A"), p.get("lora_embedding_B")) if embedding else (p.get("lora_A"), p.get("lora_B"))
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
    r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), name), config.get("r", 8))
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), name), config.get("lora_alpha", 8))
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


# ========================================================================================= base model


TORCH_DTYPES: dict[str, torch.dtype] = {  # safetensors dtype code → torch dtype
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
SAFETENSORS_DTYPE = {v: k for k, v in TORCH_DTYPES.items()}  # torch dtype → safetensors code
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def resolve_base_model(source: str | Path) -> Path:
    """The local folder of a base model: a Hugging Face folder, or a Hub id already in the local cache
    (nothing is downloaded). Its weights must be safetensors: the merge reads them tensor by tensor."""
    from workbench.core.models import gguf_file_of, resolve_source

    if gguf_file_of(str(source)) is not None:  # refused before resolve_source would convert it
        raise ModelSourceError(f"{source} is a GGUF model; its quantized weights cannot be merged exactly",
                               "merge into the original safetensors model, then convert the result to GGUF")
    resolved = resolve_source(str(source), download="none")
    if resolved.weights != "safetensors":
        raise ModelSourceError(f"{source} has no safetensors weights", "download the full model in safetensors format")
    return resolved.path


@dataclass(frozen=True)
class ModuleInfo:
    """What the base model's skeleton says about one module."""

    layout: Layout | None  # None: a layer type that cannot carry a mergeable adapter
    type_name: str
    weight_shape: tuple[int, ...]  # stored shape of its ``weight``


class BaseCheckpoint:
    """A local Hugging Face model folder, opened without loading its weights.

    ``tensors`` maps every tensor name to where it lies on disk (from the safetensors headers);
    ``read`` and ``copy_bytes`` fetch one tensor at a time with plain positioned reads, so memory holds
    at most one tensor (a memory map of a whole shard would stay resident until it is closed).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = read_json_object(self.path / "config.json")
        self.shard_files, self.indexed = weight_files(self.path)
        self.tensors: dict[str, TensorInfo] = {}
        for shard in self.shard_files:
            for info in read_safetensors_header(shard):
                self.tensors[info.key] = info

    def shard_tensors(self, shard: Path) -> list[TensorInfo]:
        return [t for t in self.tensors.values() if t.file == shard]

    def read(self, key: str) -> torch.Tensor:
        """One tensor, read into fresh memory."""
        info = self.tensors[key]
        if info.dtype not in TORCH_DTYPES:
            raise ModelSourceError(f"tensor {key} in {info.file.name} has dtype {info.dtype}, which cannot be computed on here",
                                   "use a floating-point (not quantized) copy of the model")
        buf = torch.empty(info.nbytes, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        with open(info.file, "rb") as fh:
            fh.seek(info.offset)
            filled = 0
            while filled < info.nbytes:
                n = fh.readinto(view[filled:])
                if not n:
                    raise ModelSourceError(f"{info.file} is truncated (tensor {key})", "the download may be incomplete")
                filled += n
        return buf.view(TORCH_DTYPES[info.dtype]).reshape(info.shape)

    def copy_bytes(self, key: str, out: BinaryIO, chunk: int = 16 << 20) -> None:
        """Append the raw bytes of one tensor to ``out`` through a small buffer (no dtype needed)."""
        info = self.tensors[key]
        with open(info.file, "rb") as fh:
            fh.seek(info.offset)
            left = info.nbytes
            while left:
                data = fh.read(min(chunk, left))
                if not data:
                    raise ModelSourceError(f"{info.file} is truncated (tensor {key})", "the download may be incomplete")
                out.write(data)
                left -= len(data)

    # -- structure, from a meta-device skeleton ------------------------------------------------------------
    @cached_property
    def _skeleton(self) -> torch.nn.Module:
        """The model built on the ``meta`` device: every module's type and shape, no memory, no weights.

        Built as the class the checkpoint was saved as (``config.architectures``), from the configuration read
        the way every model's is (``models.load_config``: its own code is never run)."""
        from transformers.utils import logging as hf_logging

        from workbench.core.checkpoint import build_skeleton
        from workbench.core.models import ModelSource, load_config

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            return build_skeleton(load_config(ModelSource(str(self.path), "local", self.path, "safetensors")), None)
        except Exception as exc:
            # A configuration or constructor error the shared code does not word (it re-raises what it does not
            # know) still names this model: the merge must end in a message, not a traceback.
            known = (ModelSourceError, OSError, ValueError, KeyError, TypeError, AttributeError, ImportError,
                     ArithmeticError, AssertionError)
            if not isinstance(exc, known) and not type(exc).__module__.startswith("huggingface_hub"):
                raise
            detail = exc.message if isinstance(exc, ModelSourceError) else first_line(exc.__cause__ or exc)
            raise ModelSourceError(f"cannot build the structure of the model in {self.path}: {detail}",
                                   "check its config.json against the original (or download the model again); "
                                   "a new architecture may need a newer transformers") from None
        finally:
            hf_logging.set_verbosity(verbosity)

    def module(self, name: str) -> ModuleInfo | None:
        """The layer behind a module name, or None if the model has no such module."""
        from transformers.pytorch_utils import Conv1D

        try:
            mod = self._skeleton.get_submodule(name)
        except AttributeError:
            return None
        layout: Layout | None = (
            "conv1d" if isinstance(mod, Conv1D) else
            "linear" if isinstance(mod, torch.nn.Linear) else
            "embedding" if isinstance(mod, torch.nn.Embedding) else None
        )
        weight = getattr(mod, "weight", None)
        if not isinstance(weight, torch.Tensor):
            return ModuleInfo(None, type(mod).__name__, ())
        return ModuleInfo(layout, type(mod).__name__, tuple(weight.shape))

    def stored_key(self, key: str) -> str:
        """The stored tensor that holds ``key``'s values: ``key`` itself, or the input embedding for a tied
        output embedding that the checkpoint does not store separately."""
        tied = self.tied_embeddings
        return tied[0] if tied and key == tied[1] and key not in self.tensors else key

    def parameter_shape(self, key: str) -> tuple[int, ...] | None:
        """Shape of a tensor by name: from the checkpoint, or from the skeleton for a tied weight not stored."""
        if key in self.tensors:
            return self.tensors[key].shape
        try:
            return tuple(self._skeleton.get_parameter(key).shape)
        except AttributeError:
            return None

    @cached_property
    def module_order(self) -> dict[str, int]:
        """Position of every module name in the model, in forward order (q, k, v, o, gate, up, down)."""
        return {name: i for i, (name, _) in enumerate(self._skeleton.named_modules())}

    @cached_property
    def tied_embeddings(self) -> tuple[str, str] | None:
        """``(input_embedding_key, output_embedding_key)`` when the model uses one tensor for both."""
        model = self._skeleton
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
        if inp is None or out is None or out.weight is not inp.weight:
            return None
        names = {id(m): n for n, m in model.named_modules()}
        return f"{names[id(inp)]}.weight", f"{names[id(out)]}.weight"


def open_base_model(source: str | Path) -> BaseCheckpoint:
    return BaseCheckpoint(resolve_base_model(source))


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
        return self.layout != "linear"


@dataclass(frozen=True, eq=False)
class AdapterFit:
    """An adapter checked against its base: every module found, every shape right."""

    adapter: LoraAdapter
    base: BaseCheckpoint
    targets: dict[str, Target]  # by module name


def _match(adapter: LoraAdapter, base: BaseCheckpoint) -> tuple[dict[str, Target], list[str], int]:
    """Targets, problems (each naming its module), and how many adapted modules the base lacks."""
    problems: list[str] = []
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
            problems.append(f"{name}: a {info.type_name} cannot carry a LoRA adapter here (Linear, Conv1D, Embedding can)")
            continue
        if mod.embedding != (info.layout == "embedding"):
            kind = "embedding" if mod.embedding else "linear"
            problems.append(f"{name}: the adapter has {kind} LoRA weights but the base layer is a {info.type_name}")
            continue
        key = f"{name}.weight"
        if key not in base.tensors and key != tied_out:
            problems.append(f"{name}: its weight {key} is not in the checkpoint files")
            continue
        shape = base.tensors[key].shape if key in base.tensors else info.weight_shape
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
        if shape is None:
            problems.append(f"{key}: the adapter replaces this tensor (modules_to_save) but the base model has no such tensor")
        elif shape != tuple(rep.tensor.shape):
            problems.append(f"{key}: shape mismatch: the adapter's copy is {tuple(rep.tensor.shape)}, the base's {shape}"
                            + (" (trained with a resized vocabulary?)" if "embed" in key or "lm_head" in key else ""))
    return targets, problems, missing


def adapter_problems(adapter: LoraAdapter, base: BaseCheckpoint) -> list[str]:
    """Everything that keeps ``adapter`` from applying to ``base``, one line per module; empty if it fits."""
    return _match(adapter, base)[1]


def check_adapter(adapter: LoraAdapter, base: BaseCheckpoint) -> AdapterFit:
    """Check that ``adapter`` fits ``base`` and say where each module's weight is; raise AdapterError if not."""
    targets, problems, missing = _match(adapter, base)
    if not problems:
        return AdapterFit(adapter, base, targets)
    shown = "\n  ".join(problems[:12]) + (f"\n  … and {len(problems) - 12} more" if len(problems) > 12 else "")
    if missing == len(adapter.modules):
        head = f"the adapter {adapter.path} does not belong to the base model {base.path}: none of its {missing} adapted modules exists there"
    else:
        head = f"the adapter {adapter.path} does not fit the base model {base.path} ({len(problems)} problems)"
    trained_on = adapter.base_model_name
    hint = (f"the adapter was trained on {trained_on!r}; use that model as the base" if trained_on
            else "use the base model the adapter was trained on")
    raise AdapterError(f"{head}:\n  {shown}", hint)


# ========================================================================================= inspection


def lowrank_singular_values(lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> torch.Tensor:
    """Singular values of ``ΔW = scale · B @ A`` (descending, float64) without forming ΔW.

    With ``Aᵀ = Q_A R_A`` and ``B = Q_B R_B`` (thin QR, Q with orthonormal columns),
    ``ΔW = Q_B (scale · R_B R_Aᵀ) Q_Aᵀ``; multiplying by matrices with orthonormal columns keeps singular
    values, so ΔW has those of the small r × r core. Cost O((in + out) r²) instead of O(out · in · min).
    """
    _, r_a = torch.linalg.qr(lora_A.double().T)
    _, r_b = torch.linalg.qr(lora_B.double())
    return torch.linalg.svdvals(scale * (r_b @ r_a.T))


def effective_rank(singular_values: torch.Tensor, energy: float = 0.9) -> int:
    """How many singular values carry ``energy`` of ``||ΔW||_F² = Σ σᵢ²``; 0 for ΔW = 0."""
    power = singular_values.double() ** 2
    total = float(power.sum())
    if total == 0.0:
        return 0
    cumulative = torch.cumsum(power, 0) / total
    return int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=torch.float64) - 1e-12)) + 1


_BLOCK = re.compile(r"^(?P<stack>.*?)\.(?P<index>\d+)\.(?P<kind>.+)$")


@dataclass(frozen=True)
class ModuleStats:
    """What the adapter does to one layer. All numbers are of ``ΔW = s · B @ A``; for DoRA this is the
    directional update, before the learned magnitude rescales each output row."""

    name: str
    stack: str | None  # "model.layers" for "model.layers.3.self_attn.q_proj"; None outside numbered blocks
    block: int | None  # 3
    kind: str  # "self_attn.q_proj" (the whole name outside blocks)
    rank: int
    scale: float
    delta_norm: float  # ||ΔW||_F
    weight_norm: float | None  # ||W||_F, when the base model was given
    singular_values: tuple[float, ...]
    effective_rank: int  # singular values carrying 90 % of the energy

    @property
    def relative_norm(self) -> float | None:
        """``||ΔW||_F / ||W||_F``: how large the change is compared to the weight it changes."""
        if self.weight_norm is None or self.weight_norm == 0.0:
            return None
        return self.delta_norm / self.weight_norm

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "singular_values": list(self.singular_values),
                "relative_norm": self.relative_norm}


@dataclass(frozen=True)
class Heatmap:
    """One metric over blocks × module kinds: ``values[i][j]`` belongs to ``blocks[i]`` and ``kinds[j]``
    (None where that block has no adapter of that kind). Modules outside numbered blocks are left out."""

    metric: str
    blocks: list[int]
    kinds: list[str]
    values: list[list[float | None]]


HEATMAP_METRICS = ("relative_norm", "delta_norm", "effective_rank")


@dataclass(frozen=True)
class AdapterReport:
    adapter: str
    base: str | None
    method: str
    modules: list[ModuleStats]

    def heatmap(self, metric: str = "relative_norm") -> Heatmap:
        """Grid for the window's heatmap. A model with several numbered stacks (encoder and decoder) gets
        one column per stack and kind, so no two modules share a cell."""
        if metric not in HEATMAP_METRICS:
            raise ValueError(f"metric must be one of {HEATMAP_METRICS}, not {metric!r}")
        in_blocks = [m for m in self.modules if m.block is not None]
        several = len({m.stack for m in in_blocks}) > 1
        label = (lambda m: f"{m.stack}.{m.kind}") if several else (lambda m: m.kind)
        blocks = sorted({m.block for m in in_blocks})
        kinds = list(dict.fromkeys(label(m) for m in in_blocks))
        values: list[list[float | None]] = [[None] * len(kinds) for _ in blocks]
        for m in in_blocks:
            values[blocks.index(m.block)][kinds.index(label(m))] = getattr(m, metric)
        return Heatmap(metric, blocks, kinds, values)

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "base": self.base, "method": self.method,
                "modules": [m.to_dict() for m in self.modules]}


def inspect_adapter(adapter: str | Path | LoraAdapter, base: str | Path | BaseCheckpoint | None = None,
                    *, sink: Any = None) -> AdapterReport:
    """Per adapted module: ``||ΔW||_F``, its singular values and effective rank, and with a base model
    ``||W||_F`` (read one tensor at a time, after checking that the adapter fits)."""
    lora = adapter if isinstance(adapter, LoraAdapter) else load_adapter(adapter)
    fit = None
    if base is not None:
        fit = check_adapter(lora, base if isinstance(base, BaseCheckpoint) else open_base_model(base))
    sink = as_sink(sink)
    names = list(lora.modules)  # natural order of names, the best guess without the model
    if fit is not None:
        names.sort(key=fit.base.module_order.__getitem__)
    stats = []
    for i, name in enumerate(names):
        mod = lora.modules[name]
        sv = lowrank_singular_values(mod.lora_A, mod.lora_B, mod.scale)
        weight_norm = None
        if fit is not None:
            weight = fit.base.read(fit.base.stored_key(fit.targets[name].weight_key))
            weight_norm = float(torch.linalg.vector_norm(weight.double()))
            sink.emit(Progress("inspect", i + 1, len(names), unit="modules", detail=name))
        m = _BLOCK.match(name)
        stats.append(ModuleStats(
            name=name,
            stack=m["stack"] if m else None,
            block=int(m["index"]) if m else None,
            kind=m["kind"] if m else name,
            rank=mod.rank,
            scale=mod.scale,
            delta_norm=float(torch.linalg.vector_norm(sv)),
            weight_norm=weight_norm,
            singular_values=tuple(float(s) for s in sv),
            effective_rank=effective_rank(sv),
        ))
    return AdapterReport(str(lora.path), str(fit.base.path) if fit else None, lora.method, stats)
