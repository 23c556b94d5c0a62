"""The base model an adapter applies to: a local Hugging Face folder, opened without loading its weights.

Every tensor's place on disk comes from the JSON headers of its safetensors files (names, dtypes, shapes,
byte ranges) and the layer type behind every module name from a model skeleton on the ``meta`` device,
which also tells whether the output embedding shares its weight with the input embedding (both read by
``core/checkpoint.py``). No weight is loaded until a caller asks for one tensor, and pickle files are never
opened. The streaming merge (``core/merge.py``) and the adapter checks (``core/adapters.py``) read it.

Layouts (GUIDE §1): ``nn.Linear`` stores a weight ``W`` as (out × in); GPT-2's ``Conv1D`` stores it
transposed, (in × out); ``nn.Embedding`` stores (num_embeddings × dim), the linear map from one-hot rows
(in = vocabulary) to vectors (out = dim), stored transposed exactly like ``Conv1D``. So every adaptable
weight is "(out × in), possibly stored transposed" (``Layout``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, Literal

import torch

from workbench.core.checkpoint import CONFIG_JSON_FIELDS, TensorInfo, read_json_object, read_safetensors_header, weight_files
from workbench.core.errors import ModelSourceError, first_line

__all__ = [
    "Layout",
    "TORCH_DTYPES",
    "SAFETENSORS_DTYPE",
    "FLOAT_DTYPES",
    "ModuleInfo",
    "BaseCheckpoint",
    "resolve_base_model",
    "open_base_model",
]

# "conv2d": a torch Conv2d, weight (out × in × kh × kw); its LoRA pair is handled as (out × in·kh·kw) matrices.
Layout = Literal["linear", "conv1d", "embedding", "conv2d"]

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

    def __init__(self, path: str | Path, task: str | None = None):
        self.path = Path(path)
        # The head the adapter was trained with ("sequence-classification", "image-classification"), when it is not
        # the class the checkpoint was saved as: a bare encoder (BertModel, ViTModel) trained as a classifier.
        self.task = task
        self.config = read_json_object(self.path / "config.json", fields=CONFIG_JSON_FIELDS)
        self.shard_files, self.indexed = weight_files(self.path)
        self.tensors: dict[str, TensorInfo] = {}
        for shard in self.shard_files:
            for info in read_safetensors_header(shard):
                self.tensors[info.key] = info

    def for_task(self, task: str | None) -> "BaseCheckpoint":
        """This checkpoint seen as the model ``task`` builds from it (None: as saved); the tensors are not read again."""
        if task is None or task == self.task:
            return self
        other = copy.copy(self)
        other.task = task
        for name in ("_skeleton", "_names", "module_order", "tied_embeddings"):  # cached for the other structure
            other.__dict__.pop(name, None)
        return other

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
            return build_skeleton(load_config(ModelSource(str(self.path), "local", self.path, "safetensors")), self.task)
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
            "embedding" if isinstance(mod, torch.nn.Embedding) else
            "conv2d" if isinstance(mod, torch.nn.Conv2d) and mod.groups == 1 else None
        )
        weight = getattr(mod, "weight", None)
        if not isinstance(weight, torch.Tensor):
            return ModuleInfo(None, type(mod).__name__, ())
        return ModuleInfo(layout, type(mod).__name__, tuple(weight.shape))

    @cached_property
    def _names(self) -> tuple[dict[str, str], tuple[str, ...]]:
        """``({model parameter name: stored tensor name}`` for every tensor loaded under another name than it is
        stored under, ``stored tensors that transformers converts on load)``.

        transformers 5 renames some models' modules on load and back on save (ViT's ``attention.query`` is the
        model's ``q_proj``), and adds the base model prefix to a bare encoder's tensors loaded with a head: an
        adapter names the model's modules, the files keep the stored names. The loader's own mapping decides
        (``compat.loaded_parameter_names``). Tensors a converter fuses or splits (no one stored tensor is the
        parameter) cannot be merged one at a time."""
        from workbench.core.compat import loaded_parameter_names

        loaded = loaded_parameter_names(self._skeleton, self.tensors)
        renamed = {model: stored for stored, model in loaded.items() if model is not None and model != stored}
        return renamed, tuple(stored for stored, model in loaded.items() if model is None)

    def stored_name(self, key: str) -> str:
        """The checkpoint's name for the model's tensor ``key`` (``key`` itself unless transformers renames it)."""
        return self._names[0].get(key, key)

    @property
    def converted_tensors(self) -> tuple[str, ...]:
        """Stored tensors that transformers fuses, splits or reshapes into the model's parameters when loading."""
        return self._names[1]

    def stored_key(self, key: str) -> str:
        """The stored tensor that holds ``key``'s values: its stored name, or the input embedding for a tied
        output embedding that the checkpoint does not store separately."""
        if key in self.tensors:
            return key
        key = self.stored_name(key)
        tied = self.tied_embeddings
        return tied[0] if tied and key == tied[1] and key not in self.tensors else key

    def parameter_shape(self, key: str) -> tuple[int, ...] | None:
        """Shape of a model tensor by name: from the checkpoint, or from the skeleton for a tied weight not stored."""
        if self.stored_name(key) in self.tensors:
            return self.tensors[self.stored_name(key)].shape
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
        """``(input_embedding_key, output_embedding_key)``, as stored names, when the model uses one tensor for both."""
        model = self._skeleton
        try:
            inp, out = model.get_input_embeddings(), model.get_output_embeddings()
        except NotImplementedError:  # vision models (ResNet) have no token embeddings to tie
            return None
        if inp is None or out is None or out.weight is not inp.weight:
            return None
        names = {id(m): n for n, m in model.named_modules()}
        return self.stored_name(f"{names[id(inp)]}.weight"), self.stored_name(f"{names[id(out)]}.weight")


def open_base_model(source: str | Path, task: str | None = None) -> BaseCheckpoint:
    return BaseCheckpoint(resolve_base_model(source), task)
