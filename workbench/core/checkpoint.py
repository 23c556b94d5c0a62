"""A Hugging Face model folder on disk, read without loading its weights: one home for the facts about its files.

``read_json_object``
    ``config.json``, ``adapter_config.json``, ``model.safetensors.index.json``: one reader, one wording for
    each way such a file can be wrong (unreadable, not UTF-8, not JSON, not an object).
``weight_files``
    Which safetensors files hold the weights, by transformers' own rule: the shards the index lists (every one
    of them present), else ``model.safetensors``.
``safetensors_problem``
    Whether a safetensors file is whole. The safetensors library's own check decides (``safe_open``, the one
    every loader applies, so no file passes here and fails there); when it refuses, the JSON header explains
    why in words the user can act on: how many bytes the header describes and how many the file has.
``read_safetensors_header``
    Every tensor's dtype, shape and absolute byte range, for the streaming merge, which reads and copies
    tensors by offset (``safe_open`` hides the offsets). The only raw header reader.
``build_skeleton``
    The model built on the ``meta`` device: every module name, type and shape, no memory, no weights read.

Importing this module imports neither torch nor transformers (``workbench inspect`` and the window import it
on their short paths); ``build_skeleton`` imports them when called.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .errors import ModelSourceError, WorkbenchError, first_line
from .paths import require_inside, require_regular_file

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PretrainedConfig

__all__ = [
    "INDEX_FILE",
    "SAFETENSORS_FILE",
    "MAX_LAYERS",
    "CONFIG_HINT",
    "natural_key",
    "read_json_object",
    "CONFIG_JSON_FIELDS",
    "ShapeMismatch",
    "weight_shape_mismatches",
    "weight_files",
    "TensorInfo",
    "SafetensorsProblem",
    "safetensors_problem",
    "read_safetensors_header",
    "auto_class",
    "build_skeleton",
]

SAFETENSORS_FILE = "model.safetensors"  # transformers' name for unsharded weights
INDEX_FILE = "model.safetensors.index.json"  # and for the index of sharded ones
_MAX_HEADER = 100 << 20  # the safetensors format's own limit on its JSON header
MAX_LAYERS = 10_000  # far above any real model (the largest have a few hundred blocks)
CONFIG_HINT = "compare config.json with the model's original one and fix the value, or download the model again"
_JSON_HINT = "the file is damaged or not JSON; copy or download it again"


def natural_key(name: str) -> list[Any]:
    """Sort ``layers.10`` after ``layers.9`` (and ``model-00010-of-00012`` after ``model-00009-…``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# ------------------------------------------------------------------------------------------------ JSON


# The config.json fields Workbench reads itself, before transformers does, and the JSON types they must have
# (null is allowed: transformers treats it as unset). A list where a name should be raised TypeError deep in a
# set lookup; now the message names the field.
CONFIG_JSON_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model_type": str,
    "architectures": list,
    "auto_map": dict,
    "torch_dtype": str,
    "dtype": str,
    "hidden_size": int,
    "intermediate_size": int,
    "num_hidden_layers": int,
    "num_attention_heads": int,
    "num_key_value_heads": int,
    "vocab_size": int,
    "tie_word_embeddings": bool,
    "rope_scaling": dict,
    "quantization_config": dict,
}
_JSON_TYPE_NAMES = {str: "a string", list: "a list", dict: "an object", int: "a whole number", bool: "true or false",
                    float: "a number"}


def read_json_object(path: Path, error: type[WorkbenchError] = ModelSourceError, *,
                     fields: Mapping[str, type | tuple[type, ...]] | None = None) -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` (with the file named, and what is wrong with it) if there is none.

    Every message starts ``cannot read <path>:`` and then names the file again with its problem
    (``config.json is not valid JSON (line 3: Expecting ',' delimiter)``), so it reads the same for a model's
    configuration, an adapter's and a shard index. ``fields`` maps top-level keys to the JSON type each must
    have when present and not null (``CONFIG_JSON_FIELDS`` for a model's config.json).
    """
    path = Path(path)
    require_regular_file(path, path.name, error)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}", "check that the file exists and can be read") from None
    except UnicodeDecodeError:
        raise error(f"cannot read {path}: {path.name} is not UTF-8 text", _JSON_HINT) from None
    except json.JSONDecodeError as exc:
        raise error(f"cannot read {path}: {path.name} is not valid JSON (line {exc.lineno}: {exc.msg})", _JSON_HINT) from None
    except RecursionError:
        raise error(f"cannot read {path}: {path.name} is nested too deeply to be a configuration file", _JSON_HINT) from None
    if not isinstance(data, dict):
        raise error(f"cannot read {path}: {path.name} does not hold a JSON object", _JSON_HINT)
    for key, expected in (fields or {}).items():
        value = data.get(key)
        if value is None:
            continue
        types = expected if isinstance(expected, tuple) else (expected,)
        wrong_bool = isinstance(value, bool) and bool not in types  # JSON true is no count of layers
        if wrong_bool or not isinstance(value, types):
            want = " or ".join(_JSON_TYPE_NAMES.get(t, t.__name__) for t in types)
            raise error(f"cannot read {path}: {path.name} has \"{key}\": {_short_json(value)}, which is "
                        f"{_json_type_name(value)}; it must be {want}", CONFIG_HINT)
    return data


def _json_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    return next((name for t, name in _JSON_TYPE_NAMES.items() if type(value) is t), type(value).__name__)


def _short_json(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------------------------- weight files


def weight_files(folder: Path) -> tuple[list[Path], bool]:
    """The safetensors files of a model folder in shard order, and whether an index lists them.

    transformers' rule: ``model.safetensors.index.json`` names the shards (each must be there), otherwise the
    weights are ``model.safetensors``. Raises ``ModelSourceError`` for an index that lists nothing, missing
    shards, or a folder with neither (naming its pickle files when those are all it has: they are never read).
    """
    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelSourceError(f"{index} lists no weights (no weight_map)", "the file is damaged; download the model again")
        if not all(isinstance(name, str) for name in weight_map.values()):
            raise ModelSourceError(f"{index} is damaged: its weight_map must map tensor names to file names",
                                   "download the model again")
        names = sorted(set(weight_map.values()), key=natural_key)
        for name in names:  # '../elsewhere/x.safetensors', an absolute path, a symbolic link out: never read
            require_inside(folder, name, f"{INDEX_FILE}: the shard", ModelSourceError)
            require_regular_file(folder / name, "shard", ModelSourceError)
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ModelSourceError(
                f"{folder} is incomplete: {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''} "
                f"listed in {index.name} but missing",
                "download the missing shards (or the whole model) again",
            )
        return [folder / n for n in names], True
    require_regular_file(folder / SAFETENSORS_FILE, SAFETENSORS_FILE, ModelSourceError)
    if (folder / SAFETENSORS_FILE).is_file():
        return [folder / SAFETENSORS_FILE], False
    pickles = sorted(f.name for f in folder.glob("*.bin"))
    if pickles:
        raise ModelSourceError(f"{folder} holds its weights only as pickle files ({pickles[0]}); they are never "
                               "loaded because unpickling can run arbitrary code",
                               "use a safetensors version of the model (most Hub models have one)")
    raise ModelSourceError(f"{folder} has no {SAFETENSORS_FILE} or {INDEX_FILE}",
                           "choose a model folder that holds its safetensors weights (download the full model)")


# ----------------------------------------------------------------------------------------- safetensors


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in a safetensors file, from the file's JSON header."""

    key: str
    file: Path
    dtype: str  # safetensors code: "F32", "BF16", …
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file
    nbytes: int


@dataclass(frozen=True)
class SafetensorsProblem:
    """Why a file is not a whole safetensors file, in words (``str()`` gives them)."""

    reason: str  # "its header is missing or cut off", "the header describes 1,024 bytes but the file has 512", …
    truncated: bool = False  # shorter than its header says: an interrupted download or copy

    def __str__(self) -> str:
        return self.reason


class _Unreadable(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _parse_header(path: Path) -> tuple[int, int, list[TensorInfo]]:
    """``(file size, bytes the header describes, tensors in file order)``; ``_Unreadable`` if there is no header."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or not 0 < n <= min(size - 8, _MAX_HEADER):
                raise _Unreadable("its header is missing or cut off")
            header = json.loads(fh.read(n))
        infos = []
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            infos.append(TensorInfo(key, path, str(entry["dtype"]), tuple(entry["shape"]), 8 + n + begin, end - begin))
    except OSError as exc:
        raise _Unreadable(f"it cannot be read ({exc.strerror or exc})") from None
    except (ValueError, TypeError, KeyError, AttributeError):  # ValueError: bad JSON, bad UTF-8, bad unpacking
        raise _Unreadable("its header is not valid safetensors JSON") from None
    needed = max((t.offset + t.nbytes for t in infos), default=8 + n)
    return size, needed, sorted(infos, key=lambda t: t.offset)


def safetensors_problem(path: Path) -> SafetensorsProblem | None:
    """Why ``path`` is not a whole safetensors file, or None. Reads the header only (milliseconds, any size)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):  # the loaders' own check of header, offsets and size
            return None
    except (SafetensorError, OSError) as exc:
        refused = exc
    try:
        size, needed, _ = _parse_header(Path(path))
    except _Unreadable as exc:
        return SafetensorsProblem(exc.reason)
    if needed > size:
        return SafetensorsProblem(f"the header describes {needed:,} bytes but the file has {size:,}", truncated=True)
    # Whole by its size, refused all the same: extra bytes after the data, tensors that overlap or leave gaps...
    return SafetensorsProblem(f"the safetensors library refuses it ({first_line(refused)})")


def read_safetensors_header(path: Path) -> list[TensorInfo]:
    """The tensors of a whole safetensors file in file order, from its header alone (the data is not touched);
    ``ModelSourceError`` for a file ``safetensors_problem`` finds fault with."""
    path = Path(path)
    problem = safetensors_problem(path)
    if problem is not None:
        raise ModelSourceError(f"{path} is not a readable safetensors file ({'truncated: ' if problem.truncated else ''}"
                               f"{problem})", "the download or copy may be incomplete: download the model again")
    return _parse_header(path)[2]


# ------------------------------------------------------------------------------------------- skeleton


def auto_class(task: str):
    """transformers' auto class for ``task``: sequence or image classification, or (anything else) a causal LM."""
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForSequenceClassification

    if task == "image-classification":
        return AutoModelForImageClassification
    return AutoModelForSequenceClassification if task == "sequence-classification" else AutoModelForCausalLM


def build_skeleton(config: "PretrainedConfig", task: str | None = "causal-lm", *,
                   trust_remote_code: bool = False) -> "torch.nn.Module":
    """The model with every parameter on the ``meta`` device: structure and shapes, no memory, no weights read.

    ``task`` picks the head: ``"causal-lm"`` or ``"sequence-classification"``; None builds the class the
    checkpoint was saved as (``config.architectures``; a causal LM when it names none), which is what a merge
    writes back.
    """
    import torch
    import transformers

    layers = getattr(config, "num_hidden_layers", None)
    where = getattr(config, "name_or_path", "") or "the model"
    if isinstance(layers, int) and not 0 < layers <= MAX_LAYERS:
        # Building the skeleton costs time and memory per module: a damaged value must not hang the window.
        raise ModelSourceError(f"the config.json of {where} says num_hidden_layers = {layers:,}; "
                               f"a real model has between 1 and a few hundred", CONFIG_HINT)
    arch = (getattr(config, "architectures", None) or [None])[0]
    saved_as = getattr(transformers, arch, None) if task is None and isinstance(arch, str) else None
    task = task or "causal-lm"
    try:
        with torch.device("meta"):
            if saved_as is not None:
                return saved_as(config)
            return auto_class(task).from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise ModelSourceError(
            f"{config.model_type} cannot be built as a {arch if saved_as is not None else task} model: {exc}".split("\n")[0],
            "set model.task to what the model is (causal-lm, sequence-classification or image-classification), or choose another model",
        ) from None
    except (ArithmeticError, AssertionError, AttributeError, IndexError, KeyError, TypeError) as exc:
        # transformers builds whatever config.json describes; values it cannot use (0 attention heads, an
        # unknown rope_type) fail deep inside the model's constructor with a bare exception.
        raise ModelSourceError(
            f"the {config.model_type} model in {where} cannot be built from its config.json: "
            f"{type(exc).__name__}: {first_line(exc)}",
            CONFIG_HINT,
        ) from None


# -------------------------------------------------------------------------------------- weight shapes


@dataclass(frozen=True)
class ShapeMismatch:
    """A tensor whose shape in the weight files differs from the one config.json implies."""

    key: str
    stored: tuple[int, ...]  # in the weight files
    expected: tuple[int, ...]  # what the model built from config.json holds
    fields: tuple[tuple[str, int], ...]  # config.json fields whose value is one of the differing sizes

    def describe(self) -> str:
        blame = ", ".join(f"{name} = {value}" for name, value in self.fields)
        says = f"config.json says {blame}, so the model expects" if blame else "the model built from config.json expects"
        return f"{self.key} is {list(self.stored)} in the weight files, but {says} {list(self.expected)}"


def weight_shape_mismatches(folder: Path, config: "PretrainedConfig", *, trust_remote_code: bool = False,
                            limit: int = 3) -> list[ShapeMismatch]:
    """The first ``limit`` tensors whose stored shape (safetensors headers only) disagrees with the meta-device
    model built from ``config``. A wrong config.json (vocab_size edited, another model's config copied in) used to
    surface as transformers' "size mismatch" report blamed on the weights; the weights are what was downloaded."""
    skeleton = build_skeleton(config, None, trust_remote_code=trust_remote_code)
    expected = {key: tuple(t.shape) for key, t in skeleton.state_dict().items()}
    prefix = getattr(skeleton, "base_model_prefix", "") or ""
    ints = {k: v for k, v in config.to_dict().items() if isinstance(v, int) and not isinstance(v, bool) and v > 1}
    found: list[ShapeMismatch] = []
    for shard in weight_files(folder)[0]:
        for info in read_safetensors_header(shard):
            key = next((k for k in (info.key, f"{prefix}.{info.key}", info.key.removeprefix(f"{prefix}."))
                        if k in expected), None)
            if key is None or expected[key] == info.shape:
                continue  # a tensor the model renames or does not hold is transformers' to judge
            differing = {e for e, s in zip(expected[key], info.shape) if e != s} or set(expected[key])
            fields = tuple((name, value) for name, value in ints.items() if value in differing)
            found.append(ShapeMismatch(info.key, info.shape, expected[key], fields))
            if len(found) >= limit:
                return found
    return found
