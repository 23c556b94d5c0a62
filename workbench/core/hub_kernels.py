"""No kernel fetched from the Hugging Face Hub behind the user's back when bitsandbytes is imported.

bitsandbytes 0.50's CPU backend, on a processor with AVX512-BF16, asks the ``kernels`` package (a dependency of
transformers 5) at *import* for ``kernels-community/quantization-bitsandbytes``: compiled code downloaded from the
Hub and loaded into the process. peft imports bitsandbytes whenever it is installed, so every run, merge check or
playground would reach the network and might load native code nobody asked for (the project's rule: no remote code
without the user saying so), and where it fails it prints a warning on every command. While bitsandbytes itself is
imported, ``kernels.get_kernel`` refuses (bitsandbytes catches that and keeps its built-in CPU code) and the
warnings bitsandbytes and kernels log about it are not shown. Nothing global changes: other Hub downloads (models,
tokenizers) in other threads at the same moment are untouched, and ``kernels`` works as before once the import is
done.

``install()`` adds an import hook for the top-level ``bitsandbytes`` module (and, during its import only, for
``kernels``); ``workbench.core`` calls it on import, which imports nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from contextlib import contextmanager
from functools import partial
from types import ModuleType
from typing import Any, Callable, Iterator

__all__ = ["install", "no_hub_kernels"]

_GUARDED = "bitsandbytes"
_KERNELS = "kernels"
_active = False  # inside bitsandbytes' import
_original: dict[str, Callable[..., Any]] = {}  # kernels.get_kernel while it is replaced


def _refuse(repo_id: str, *args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(f"{repo_id}: not fetched — Workbench loads no kernel from the Hub unasked (core/hub_kernels.py)")


def _patch(kernels: ModuleType | None) -> None:
    if kernels is not None and "get_kernel" not in _original and hasattr(kernels, "get_kernel"):
        _original["get_kernel"] = kernels.get_kernel
        kernels.get_kernel = _refuse  # type: ignore[attr-defined]


@contextmanager
def no_hub_kernels() -> Iterator[None]:
    """``kernels.get_kernel`` refuses (``kernels`` patched as soon as it is imported, if it is not yet), and the
    bitsandbytes / kernels loggers are muted below errors, for the length of the block."""
    global _active
    loggers = [logging.getLogger(name) for name in (_GUARDED, _KERNELS)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    _active = True
    _patch(sys.modules.get(_KERNELS))
    try:
        yield
    finally:
        _active = False
        if "get_kernel" in _original and (kernels := sys.modules.get(_KERNELS)) is not None:
            kernels.get_kernel = _original.pop("get_kernel")  # type: ignore[attr-defined]
        _original.clear()
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _WrappedLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, run: Callable[[ModuleType], None]) -> None:
        self.loader, self.run = loader, run

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, get_data, is_package …: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.run(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == _GUARDED:
            def run(module: ModuleType, loader: Any) -> None:
                with no_hub_kernels():  # its CPU backend, imported from its __init__, asks for the Hub kernel
                    loader.exec_module(module)
        elif fullname == _KERNELS and _active:
            def run(module: ModuleType, loader: Any) -> None:
                loader.exec_module(module)
                _patch(module)  # before bitsandbytes' `from kernels import get_kernel` reads it
        else:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    real = spec.loader
                    spec.loader = _WrappedLoader(real, partial(run, loader=real))
                return spec
        return None


def install() -> None:
    """Put the hook first on ``sys.meta_path`` (once). Nothing happens to a bitsandbytes imported already."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
