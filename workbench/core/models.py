"""Model sources: a local Hugging Face folder, a Hub id, a GGUF file, or a built-in model.

``resolve_source`` turns what the user typed into a ``ModelSource`` (where the files are, which kind,
which weight format) and refuses unsafe or unusable input with a message that says what to do. A GGUF
file and a built-in model (``builtin:NAME``, itself a GGUF file inside a Python package) take one path:
``core/gguf_import.py`` converts the file once into a Hugging Face folder in the cache, and the source
points at that folder. ``load_config`` / ``load_tokenizer`` read the small files; ``checkpoint.build_skeleton``
builds the model on the ``meta`` device, so every module name, type and shape of a 70B model is known in
well under a second without reading a byte of weights. ``load_model`` loads real weights for training.

Safety: weights are read from safetensors (a GGUF file's are read into safetensors once). Pickle files (``*.bin``, ``*.pt``) are refused
unless the user allows them explicitly (``model.allow_pickle``), and a model's own Python code runs only
with ``model.trust_remote_code``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .builtin import ensure_builtin, is_builtin_source
from .checkpoint import (
    CONFIG_HINT,
    CONFIG_JSON_FIELDS,
    INDEX_FILE,
    auto_class,
    build_skeleton,
    read_json_object,
    safetensors_problem,
    weight_files,
    weight_shape_mismatches,
)
from .compat import known_model_types
from .errors import ConsentRequired, ModelSourceError, first_line
from .paths import not_regular_problem, require_regular_file
from .events import SinkLike, as_sink
from .gguf_import import convert_gguf
from .hub import _hub_reachable, download_progress_class, hub_suggestions, model_family  # noqa: F401  (public here)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PretrainedConfig

__all__ = [
    "ModelSource",
    "resolve_source",
    "load_config",
    "load_tokenizer",
    "load_model",
    "check_weight_files",
    "check_weight_shapes",
    "model_display_name",
    "gguf_file_of",
    "resolve_builtin",
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
    kind: SourceKind  # "gguf": converted from a GGUF file the user chose ("local" for a built-in model)
    path: Path  # the Hugging Face model folder (for a GGUF file: its conversion in the cache)
    weights: WeightFormat
    gguf_file: str | None = None  # the GGUF file a "gguf" source was converted from
    revision: str | None = None

    @property
    def display_name(self) -> str:
        return model_display_name(self.spec)


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
    sink: SinkLike = None,
) -> ModelSource:
    """Find the files behind ``spec`` and check that they can be used safely.

    ``download`` applies to Hub ids that are not fully in the local cache: ``"config"`` fetches only
    the small descriptive files (enough to show the tree), ``"all"`` the weights too, ``"none"`` nothing.
    A ``.gguf`` file, and ``builtin:NAME`` (a model shipped inside a Python package), are converted once
    into the cache (``Progress`` events go to ``sink``) and used from there.
    """
    spec = (spec or "").strip()
    kind, path = _source_kind(spec)
    if kind == "builtin":  # a model shipped in a Python package (core/builtin.py)
        return resolve_builtin(spec, sink=sink)
    if kind == "hub":
        return _resolve_hub(spec, revision, allow_pickle, download, sink)
    gguf = gguf_file_of(str(path))
    if gguf is not None:  # the path every GGUF file takes, the built-in model's too (core/gguf_import.py)
        return ModelSource(spec, "gguf", convert_gguf(gguf, sink=sink), "safetensors", gguf_file=str(gguf.resolve()))
    return _resolve_local(spec, path, allow_pickle)


def check_source(spec: str, *, allow_pickle: bool = False) -> None:
    """What ``resolve_source`` refuses before it converts, downloads or imports an ML library, with its errors: no
    model given, a path that is not there, a local folder that is no model folder (or holds pickles not allowed).
    A GGUF file, a built-in model and a Hub id pass here: converting or fetching them is where their checks are."""
    spec = (spec or "").strip()
    kind, path = _source_kind(spec)
    if kind == "local" and gguf_file_of(str(path)) is None:
        _resolve_local(spec, path, allow_pickle)


def _source_kind(spec: str) -> tuple[Literal["builtin", "local", "hub"], Path]:
    """Which kind of source a stripped ``spec`` names, and its path; raises for no model and a missing path."""
    if not spec:
        raise ModelSourceError("no model chosen", "pick a local model folder, a .gguf file, or type a Hub id such as org/name")
    path = Path(spec).expanduser()
    if is_builtin_source(spec):
        return "builtin", path
    # A FIFO or device would block the reader; a symbolic-link loop never resolves.
    require_regular_file(path, "model path", ModelSourceError, "choose a model folder or a .gguf file")
    if path.exists():
        return "local", path
    first_part = Path(spec.split("/")[0]).expanduser()
    if _looks_like_path(spec) or not HUB_ID.match(spec) or ("/" in spec and first_part.is_dir()):
        raise ModelSourceError(
            f"model path does not exist: {path}",
            "check the path, or type a Hub id in the form org/name",
        )
    return "hub", path


def resolve_builtin(spec: str, *, cache_dir: str | Path | None = None, sink: SinkLike = None) -> ModelSource:
    """``builtin:NAME`` → a ``ModelSource`` for the converted safetensors folder (converting once)."""
    folder = ensure_builtin(spec, cache_dir=cache_dir, sink=sink)
    return ModelSource(spec.strip(), "local", folder, "safetensors")


def gguf_file_of(spec: str) -> Path | None:
    """The GGUF file ``spec`` names — a ``.gguf`` file, or a folder without config.json that holds exactly
    one — or None. Reads no file, so a caller can refuse GGUF sources before anything is converted."""
    path = Path((spec or "").strip()).expanduser()
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        return ggufs[0] if len(ggufs) == 1 else None
    return None


def _resolve_local(spec: str, path: Path, allow_pickle: bool) -> ModelSource:
    """A local model folder (not a GGUF file: see resolve_source), checked."""
    if path.is_file():
        raise ModelSourceError(
            f"{path} is a file, not a model folder or a .gguf file",
            "choose the folder that holds config.json, or a .gguf file",
        )
    _refuse_special_files(path)
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        detail = f" (it holds {len(ggufs)} .gguf files: choose one of them)" if ggufs else ""
        raise ModelSourceError(
            f"{path} has no config.json, so it is not a Hugging Face model folder{detail}",
            "choose the folder that holds config.json and the weights, or a .gguf file",
        )
    return ModelSource(spec, "local", path.resolve(), _weight_format(path, allow_pickle))


def _refuse_special_files(folder: Path) -> None:
    """transformers opens a model folder's files by name (config.json, tokenizer.json, generation_config.json,
    a chat template...): a FIFO among them would block it forever, a link loop fail deep inside. One stat each."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise ModelSourceError(f"cannot read the model folder {folder}: {exc.strerror or exc}",
                               "check the folder's permissions") from None
    for entry in entries:
        problem = not_regular_problem(entry)
        if problem:
            raise ModelSourceError(f"{entry.name} in {folder} {problem}",
                                   "a model folder holds ordinary files only: replace it with the real file "
                                   "(copy or download the model again)")


def _weight_format(folder: Path, allow_pickle: bool) -> WeightFormat:
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if any(n.endswith(".safetensors") or n == INDEX_FILE for n in names):
        return "safetensors"
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        if not allow_pickle:
            raise ConsentRequired(
                f"{folder} holds only pickle weights ({', '.join(pickles[:3])}{', …' if len(pickles) > 3 else ''}); "
                "Workbench will not unpickle them, because unpickling can run arbitrary code",
                "convert the model to safetensors, or — only if you trust the file — allow it with "
                "model.allow_pickle = true (CLI: --allow-pickle)",
                setting="allow_pickle", files=[str(folder / n) for n in pickles],
            )
        return "pickle"
    return "none"


def remote_code_files(folder: Path, raw_config: dict) -> list[str]:
    """The Python files a model's ``auto_map`` would import: ``module.Class`` → ``folder/module.py``
    (a ``repo--module.Class`` reference to another repository is listed as written)."""
    files: list[str] = []
    refs = raw_config.get("auto_map") or {}
    for ref in refs.values():
        for one in (ref if isinstance(ref, list) else [ref]):
            if not isinstance(one, str) or "." not in one:
                continue
            module = one.rsplit(".", 1)[0]
            name = module if "--" in module else str(folder / (module.replace(".", "/") + ".py"))
            if name not in files:
                files.append(name)
    return files


def _resolve_hub(spec: str, revision: str | None, allow_pickle: bool, download: str, sink: SinkLike = None) -> ModelSource:
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
    progress = {"tqdm_class": download_progress_class(as_sink(sink), spec)} if sink is not None else {}
    try:
        folder = Path(snapshot_download(spec, revision=revision, allow_patterns=patterns, **progress))
    except Exception as exc:  # the hub client raises many types; all mean "could not get it"
        raise ModelSourceError(f"could not fetch {spec} from the Hub: {exc}", "check the id and your access rights") from None
    if not (folder / "config.json").is_file():
        raise ModelSourceError(f"{spec} on the Hub has no config.json", "is it a transformers model repository?")
    weights = _weight_format(folder, allow_pickle) if download == "all" else "safetensors"
    return ModelSource(spec, "hub", folder, weights, revision=revision)


def load_config(source: ModelSource, *, trust_remote_code: bool = False, num_labels: int | None = None) -> "PretrainedConfig":
    """Read the model configuration. Unknown architectures and remote code give a clear error."""
    from transformers import AutoConfig

    raw = read_json_object(source.path / "config.json", fields=CONFIG_JSON_FIELDS)
    known = known_model_types()
    if "auto_map" in raw and not trust_remote_code and raw.get("model_type") not in known:
        code = remote_code_files(source.path, raw)
        raise ConsentRequired(
            f"{source.spec} needs its own Python code to run (config.json has auto_map: "
            f"{', '.join(sorted(raw['auto_map']))}); it is not run unless you allow it. "
            f"The code: {', '.join(code) or '(modules named in auto_map, not in the folder)'}",
            "read the model's .py files, then allow them with model.trust_remote_code = true (CLI: --trust-remote-code)",
            setting="trust_remote_code", files=code,
        )
    if "model_type" not in raw and not trust_remote_code:
        raise ModelSourceError(
            f"{source.path / 'config.json'} has no model_type, so the architecture is unknown",
            'choose a Hugging Face transformers model folder; its config.json names the architecture ("model_type": "llama", …)',
        )
    if raw.get("model_type") not in known and not trust_remote_code:
        raise ModelSourceError(
            f"unknown model_type {raw.get('model_type')!r} in {source.path / 'config.json'}: "
            f"this version of transformers does not know that architecture",
            "upgrade transformers, or if the model ships its own code and you trust it, set model.trust_remote_code = true",
        )
    kwargs: dict[str, Any] = {} if num_labels is None else {"num_labels": num_labels}
    try:
        return AutoConfig.from_pretrained(source.path, revision=None, trust_remote_code=trust_remote_code, **kwargs)
    except (ValueError, OSError) as exc:
        raise ModelSourceError(f"cannot read the configuration of {source.spec}: {first_line(exc)}", CONFIG_HINT) from None
    except Exception as exc:
        # transformers 5 validates config fields with huggingface_hub's strict dataclasses, whose errors are no
        # ValueError ("Field 'hidden_size' expected int, got str"): a damaged or hand-edited config.json.
        if type(exc).__module__.startswith("huggingface_hub"):
            raise ModelSourceError(f"{source.path / 'config.json'} has an invalid value: {_config_problem(exc)}",
                                   CONFIG_HINT) from None
        if isinstance(exc, (ArithmeticError, AssertionError, KeyError, TypeError)):
            raise ModelSourceError(f"{source.path / 'config.json'} has values transformers cannot use "
                                   f"({type(exc).__name__}: {first_line(exc)})", CONFIG_HINT) from None
        raise


def _config_problem(exc: BaseException) -> str:
    """The most specific line of a config validation error: the cause says which field and what was found."""
    cause = exc.__cause__ or exc
    return first_line(cause) or first_line(exc) or type(exc).__name__


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        if not trust_remote_code and "trust_remote_code" in str(exc):  # transformers' own verdict: custom code
            code = _tokenizer_code_files(source.path)
            raise ConsentRequired(
                f"the tokenizer of {source.spec} needs its own Python code to run "
                f"({', '.join(code) or 'named in its auto_map'}); it is not run unless you allow it",
                "read the tokenizer's .py files, then allow them with model.trust_remote_code = true "
                "(CLI: --trust-remote-code)",
                setting="trust_remote_code", files=code,
            ) from None
        raise ModelSourceError(
            f"cannot load the tokenizer of {source.spec}: {exc}",
            "the model folder needs tokenizer files (tokenizer.json or tokenizer.model)",
        ) from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # batching needs a pad id; the labels mask padding anyway
    return tok


def _tokenizer_code_files(folder: Path) -> list[str]:
    refs: dict = {}
    for name in ("tokenizer_config.json", "config.json"):
        try:
            auto_map = read_json_object(folder / name).get("auto_map")
        except ModelSourceError:
            continue
        if isinstance(auto_map, dict) and "AutoTokenizer" in auto_map:
            refs["AutoTokenizer"] = auto_map["AutoTokenizer"]
            break
    return remote_code_files(folder, {"auto_map": refs})


def load_model(source: ModelSource, config: "PretrainedConfig", *, task: str = "causal-lm", dtype: Any = "auto",
               trust_remote_code: bool = False, device_map: Any = None,
               quantization_config: Any = None, loading_info: dict[str, Any] | None = None) -> "torch.nn.Module":
    """Load real weights: safetensors (a GGUF file's conversion too); pickle only when ``resolve_source`` allowed it.

    ``loading_info``, when given, is filled with transformers' loading report (``missing_keys``,
    ``mismatched_keys``, …), and weights whose shape differs from ``config`` are initialised afresh instead of
    failing: a classification head of another number of classes (core/classification.py trains those in full)."""
    if source.weights == "none":
        raise ModelSourceError(
            f"{source.spec} has no weight files (no *.safetensors)",
            "download the full model, or choose a folder that holds the weights",
        )
    kwargs: dict[str, Any] = dict(config=config, dtype=dtype, trust_remote_code=trust_remote_code)
    if source.weights == "safetensors":
        kwargs["use_safetensors"] = True
        weight_files(source.path)  # transformers follows a shard index anywhere: only shards inside the folder
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quantization_config is not None:  # core/quantization.py: the base is quantized while it loads
        kwargs["quantization_config"] = quantization_config
    if loading_info is not None:
        kwargs.update(output_loading_info=True, ignore_mismatched_sizes=True)
    from safetensors import SafetensorError

    import pickle

    try:
        if loading_info is not None:
            model, info = auto_class(task).from_pretrained(source.path, **kwargs)
            loading_info.update(info)
            return model
        return auto_class(task).from_pretrained(source.path, **kwargs)
    except pickle.UnpicklingError as exc:  # pickle allowed, but torch.load(weights_only=True) met more than tensors
        raise ModelSourceError(
            f"refused to load the pickle weights of {source.spec}: they hold objects other than tensors "
            f"({first_line(exc)})", "this file is not a plain checkpoint and may run code; do not use it",
        ) from None
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # RuntimeError: shape mismatch in a state dict
        if source.weights == "safetensors":  # a config.json that disagrees with the weights is the config's fault
            check_weight_shapes(source, config, trust_remote_code=trust_remote_code)
        raise ModelSourceError(f"cannot load the weights of {source.spec}: {exc}".split("\n")[0],
                               "the weight files may be incomplete or damaged") from None


def check_weight_files(source: ModelSource, config: "PretrainedConfig | None" = None) -> None:
    """Check, from file sizes and safetensors headers only, that the weights ``load_model`` will read are all
    there: the weight files (every shard the index lists) and each one whole (``checkpoint.safetensors_problem``).

    Takes milliseconds, so a training run can call it before it creates its run folder: a partial download or a
    truncated copy is then reported before anything is written. Pickle weights, Hub sources whose weights are
    not downloaded yet, and the conversions of GGUF files (complete by construction) are not checked here.
    ``config``: the model's config when the caller has read it already (``load_config(source)``), so it is not
    read twice.
    """
    if source.kind != "local" or source.weights == "pickle":
        return
    if source.weights == "none":
        raise ModelSourceError(
            f"{source.spec} has no weight files (no *.safetensors)",
            "download the full model, or choose a folder that holds the weights",
        )
    for path in weight_files(source.path)[0]:
        problem = safetensors_problem(path)
        if problem:
            raise ModelSourceError(f"{path} is damaged or incomplete: {problem}",
                                   "download the model again (an interrupted download or copy leaves a short file)")
    if config is None:
        try:  # a model that needs its own code is built with it, at training, which reports its shapes then
            config = load_config(source)
        except ConsentRequired:
            return
    check_weight_shapes(source, config)


def check_weight_shapes(source: ModelSource, config: "PretrainedConfig", *, trust_remote_code: bool = False) -> None:
    """Refuse weights whose shapes disagree with ``config`` (safetensors headers and a meta-device model only),
    blaming config.json and naming the tensor, both shapes and the config value behind them."""
    mismatches = weight_shape_mismatches(source.path, config, trust_remote_code=trust_remote_code)
    if mismatches:
        more = " (other tensors too)" if len(mismatches) > 1 else ""
        raise ModelSourceError(f"{source.path / 'config.json'} does not match the weights: {mismatches[0].describe()}{more}",
                               "config.json was edited or comes from another model: restore the model's original "
                               "config.json (the weights are as downloaded)")


@dataclass
class ModelOverview:
    """What the window and ``workbench inspect`` show about a model before any weight is loaded."""

    source: ModelSource
    hf_config: Any
    tree: Any  # layers.LayerTree
    architecture: str  # e.g. LlamaForCausalLM
    dtype: str  # dtype the checkpoint is stored in


def open_overview(spec: str, *, revision: str | None = None, task: str = "causal-lm", num_labels: int | None = None,
                  trust_remote_code: bool = False, allow_pickle: bool = False, sink: SinkLike = None) -> ModelOverview:
    """Resolve, read the config and build the meta-device tree: the whole 'open a model' step, no weights read.

    ``sink`` receives ``Progress`` events when opening means converting first (a GGUF file's first use)."""
    from .layers import build_tree

    source = resolve_source(spec, revision, allow_pickle=allow_pickle, sink=sink)
    hf_config = load_config(source, trust_remote_code=trust_remote_code,
                            num_labels=num_labels if task == "sequence-classification" else None)
    skeleton = build_skeleton(hf_config, task, trust_remote_code=trust_remote_code)
    dtype = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None) or "float32"
    return ModelOverview(source, hf_config, build_tree(skeleton), type(skeleton).__name__, str(dtype).replace("torch.", ""))
