"""Model sources: a local Hugging Face folder, a Hub id, or a GGUF file.

``resolve_source`` turns what the user typed into a ``ModelSource`` (where the files are, which kind,
which weight format) and refuses unsafe or unusable input with a message that says what to do.
``load_config`` / ``load_tokenizer`` read the small files; ``build_skeleton`` builds the model on the
``meta`` device, so every module name, type and shape of a 70B model is known in well under a second
without reading a byte of weights. ``load_model`` loads real weights for training.

Safety: weights are read from safetensors (or GGUF). Pickle files (``*.bin``, ``*.pt``) are refused
unless the user allows them explicitly (``model.allow_pickle``), and a model's own Python code runs only
with ``model.trust_remote_code``.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import ModelSourceError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PretrainedConfig

__all__ = [
    "ModelSource",
    "resolve_source",
    "load_config",
    "load_tokenizer",
    "build_skeleton",
    "load_model",
    "model_display_name",
]

SourceKind = Literal["local", "hub", "gguf"]
WeightFormat = Literal["safetensors", "pickle", "gguf", "none"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Files that describe a model without holding weights: all that inspecting needs from the Hub.
SMALL_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "*.jinja"]


@dataclass(frozen=True)
class ModelSource:
    spec: str  # what the user typed
    kind: SourceKind
    path: Path  # the model folder (for a GGUF source: the folder holding the file)
    weights: WeightFormat
    gguf_file: str | None = None  # file name inside ``path`` for GGUF sources
    revision: str | None = None

    @property
    def display_name(self) -> str:
        return model_display_name(self.spec)

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that point transformers' ``from_pretrained`` at this source's files."""
        kw: dict[str, Any] = {}
        if self.gguf_file:
            kw["gguf_file"] = self.gguf_file
        return kw


def model_display_name(spec: str) -> str:
    """A short human name: folder or file stem, or the Hub repo name."""
    name = Path(spec.rstrip("/\\")).name or spec
    return name[:-5] if name.lower().endswith(".gguf") else name


def _looks_like_path(spec: str) -> bool:
    """True for things that can only be paths (``org/name`` is left to the Hub check)."""
    return spec.startswith((".", "/", "~", "\\")) or spec.lower().endswith(".gguf") or bool(re.match(r"^[A-Za-z]:[\\/]", spec))


def resolve_source(
    spec: str,
    revision: str | None = None,
    *,
    allow_pickle: bool = False,
    download: Literal["none", "config", "all"] = "config",
    sink: Any = None,
) -> ModelSource:
    """Find the files behind ``spec`` and check that they can be used safely.

    ``download`` applies to Hub ids that are not fully in the local cache: ``"config"`` fetches only
    the small descriptive files (enough to show the tree), ``"all"`` the weights too, ``"none"`` nothing.
    ``builtin:NAME`` names a model shipped inside a Python package; it is converted once into the cache
    (``Progress`` events go to ``sink``) and used from there.
    """
    spec = (spec or "").strip()
    if not spec:
        raise ModelSourceError("no model chosen", "pick a local model folder, a .gguf file, or type a Hub id such as org/name")
    if spec.lower().startswith("builtin:"):  # a model shipped in a Python package, converted once (core/builtin.py)
        from .builtin import resolve_builtin

        return resolve_builtin(spec, sink=sink)
    path = Path(spec).expanduser()
    if path.exists():
        return _resolve_local(spec, path, allow_pickle)
    first_part = Path(spec.split("/")[0]).expanduser()
    if _looks_like_path(spec) or not HUB_ID.match(spec) or ("/" in spec and first_part.is_dir()):
        raise ModelSourceError(
            f"model path does not exist: {path}",
            "check the path, or type a Hub id in the form org/name",
        )
    return _resolve_hub(spec, revision, allow_pickle, download)


def _resolve_local(spec: str, path: Path, allow_pickle: bool) -> ModelSource:
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError(
                f"{path} is a file, not a model folder or a .gguf file",
                "choose the folder that holds config.json, or a .gguf file",
            )
        return ModelSource(spec, "gguf", path.parent.resolve(), "gguf", gguf_file=path.name)
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(spec, "gguf", path.resolve(), "gguf", gguf_file=ggufs[0].name)
        detail = f" (it holds {len(ggufs)} .gguf files: choose one of them)" if ggufs else ""
        raise ModelSourceError(
            f"{path} has no config.json, so it is not a Hugging Face model folder{detail}",
            "choose the folder that holds config.json and the weights, or a .gguf file",
        )
    return ModelSource(spec, "local", path.resolve(), _weight_format(path, allow_pickle))


def _weight_format(folder: Path, allow_pickle: bool) -> WeightFormat:
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names):
        return "safetensors"
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        if not allow_pickle:
            raise ModelSourceError(
                f"{folder} holds only pickle weights ({', '.join(pickles[:3])}{', …' if len(pickles) > 3 else ''}); "
                "Workbench will not unpickle them, because unpickling can run arbitrary code",
                "convert the model to safetensors, or — only if you trust the file — allow it with "
                "model.allow_pickle = true (CLI: --allow-pickle)",
            )
        return "pickle"
    return "none"


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = re.sub(r"^https?://", "", constants.ENDPOINT).split("/")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _resolve_hub(spec: str, revision: str | None, allow_pickle: bool, download: str) -> ModelSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(spec, revision=revision, local_files_only=True))
        if (folder / "config.json").is_file():
            return ModelSource(spec, "hub", folder, _weight_format(folder, allow_pickle), revision=revision)
    except LocalEntryNotFoundError:
        pass
    if download == "none":
        raise ModelSourceError(f"{spec} is not in the local Hugging Face cache", "download it first, or open a local folder")
    if not _hub_reachable():
        raise ModelSourceError(
            f"{spec} is not in the local Hugging Face cache and the Hub cannot be reached (offline)",
            "connect to the internet, or open a local model folder or .gguf file instead",
        )
    patterns = SMALL_FILES if download == "config" else None
    try:
        folder = Path(snapshot_download(spec, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # the hub client raises many types; all mean "could not get it"
        raise ModelSourceError(f"could not fetch {spec} from the Hub: {exc}", "check the id and your access rights") from None
    if not (folder / "config.json").is_file():
        raise ModelSourceError(f"{spec} on the Hub has no config.json", "is it a transformers model repository?")
    weights = _weight_format(folder, allow_pickle) if download == "all" else "safetensors"
    return ModelSource(spec, "hub", folder, weights, revision=revision)


def load_config(source: ModelSource, *, trust_remote_code: bool = False, num_labels: int | None = None) -> "PretrainedConfig":
    """Read the model configuration. Unknown architectures and remote code give a clear error."""
    from transformers import AutoConfig

    if source.kind != "gguf":
        raw = _read_config_json(source.path / "config.json")
        if "auto_map" in raw and not trust_remote_code and raw.get("model_type") not in _known_model_types():
            raise ModelSourceError(
                f"{source.spec} needs its own Python code to run (config.json has auto_map: "
                f"{', '.join(sorted(raw['auto_map']))}); it is not run unless you allow it",
                "read the model's .py files, then allow them with model.trust_remote_code = true (CLI: --trust-remote-code)",
            )
        if "model_type" not in raw and not trust_remote_code:
            raise ModelSourceError(f"{source.path / 'config.json'} has no model_type", "is this a transformers model folder?")
        if raw.get("model_type") not in _known_model_types() and not trust_remote_code:
            raise ModelSourceError(
                f"unknown model_type {raw.get('model_type')!r} in {source.path / 'config.json'}: "
                f"this version of transformers does not know that architecture",
                "upgrade transformers, or if the model ships its own code and you trust it, set model.trust_remote_code = true",
            )
    kwargs = source.from_pretrained_kwargs()
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    try:
        return AutoConfig.from_pretrained(
            source.path, revision=None, trust_remote_code=trust_remote_code, **kwargs
        )
    except ValueError as exc:
        if source.kind == "gguf":
            raise ModelSourceError(
                f"{source.gguf_file}: {exc}",
                f"GGUF files of these architectures can be opened: {', '.join(gguf_architectures())}",
            ) from None
        raise ModelSourceError(f"cannot read the configuration of {source.spec}: {exc}") from None
    except OSError as exc:
        raise ModelSourceError(f"cannot read the configuration of {source.spec}: {exc}") from None


def _read_config_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelSourceError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})", "the file is damaged; download it again") from None
    except UnicodeDecodeError:
        raise ModelSourceError(f"{path} is not UTF-8 text", "the file is damaged; download it again") from None
    if not isinstance(data, dict):
        raise ModelSourceError(f"{path} does not hold a JSON object", "the file is damaged; download it again")
    return data


def _known_model_types() -> set[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return set(CONFIG_MAPPING_NAMES)


def gguf_architectures() -> list[str]:
    """GGUF architectures transformers can de-quantise into a PyTorch model."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(k for k in GGUF_CONFIG_MAPPING if k not in ("general", "tokenizer"))


def training_weight_dtype(setting: str, device: str, precision: str) -> str:
    """The dtype the frozen base weights are held in while training — one rule for the engine and the estimates.

    An explicit ``model.dtype`` wins. Otherwise: float32 on the CPU (half-precision matmuls there are slow and
    imprecise); on a GPU the compute precision (bf16 or fp16; bf16 when still 'auto'), or float32 for fp32 runs.
    """
    if setting != "auto":
        return setting
    if device == "cpu":
        return "float32"
    return {"bf16": "bfloat16", "fp16": "float16", "auto": "bfloat16"}.get(precision, "float32")


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code, **source.from_pretrained_kwargs())
    except (OSError, ValueError, TypeError) as exc:
        raise ModelSourceError(
            f"cannot load the tokenizer of {source.spec}: {exc}",
            "the model folder needs tokenizer files (tokenizer.json or tokenizer.model)",
        ) from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # batching needs a pad id; the labels mask padding anyway
    return tok


def _auto_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if task == "sequence-classification" else AutoModelForCausalLM


def build_skeleton(config: "PretrainedConfig", task: str = "causal-lm", *, trust_remote_code: bool = False) -> "torch.nn.Module":
    """The model with every parameter on the ``meta`` device: structure and shapes, no memory, no weights read."""
    import torch

    cls = _auto_class(task)
    try:
        with torch.device("meta"):
            return cls.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise ModelSourceError(
            f"{config.model_type} cannot be built as a {task} model: {exc}".split("\n")[0],
            "choose the other task (causal-lm or sequence-classification) or another model",
        ) from None


def load_model(source: ModelSource, config: "PretrainedConfig", *, task: str = "causal-lm", dtype: Any = "auto",
               trust_remote_code: bool = False, device_map: Any = None) -> "torch.nn.Module":
    """Load real weights. Safetensors and GGUF as they are; pickle only when ``resolve_source`` allowed it."""
    if source.weights == "none":
        raise ModelSourceError(
            f"{source.spec} has no weight files (no *.safetensors)",
            "download the full model, or choose a folder that holds the weights",
        )
    kwargs: dict[str, Any] = dict(config=config, dtype=dtype, trust_remote_code=trust_remote_code, **source.from_pretrained_kwargs())
    if source.weights == "safetensors":
        kwargs["use_safetensors"] = True
    if device_map is not None:
        kwargs["device_map"] = device_map
    from safetensors import SafetensorError

    try:
        return _auto_class(task).from_pretrained(source.path, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # RuntimeError: shape mismatch in a state dict
        raise ModelSourceError(f"cannot load the weights of {source.spec}: {exc}".split("\n")[0],
                               "the weight files may be incomplete or damaged") from None


@dataclass
class ModelOverview:
    """What the window and ``workbench inspect`` show about a model before any weight is loaded."""

    source: ModelSource
    hf_config: Any
    tree: Any  # layers.LayerTree
    architecture: str  # e.g. LlamaForCausalLM
    dtype: str  # dtype the checkpoint is stored in


def open_overview(spec: str, *, revision: str | None = None, task: str = "causal-lm", num_labels: int | None = None,
                  trust_remote_code: bool = False, allow_pickle: bool = False) -> ModelOverview:
    """Resolve, read the config and build the meta-device tree: the whole 'open a model' step, no weights read."""
    from .layers import build_tree

    source = resolve_source(spec, revision, allow_pickle=allow_pickle)
    hf_config = load_config(source, trust_remote_code=trust_remote_code,
                            num_labels=num_labels if task == "sequence-classification" else None)
    skeleton = build_skeleton(hf_config, task, trust_remote_code=trust_remote_code)
    dtype = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None) or "float32"
    return ModelOverview(source, hf_config, build_tree(skeleton), type(skeleton).__name__, str(dtype).replace("torch.", ""))
