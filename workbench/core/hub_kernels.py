"""No kernel fetched from the Hugging Face Hub behind the user's back when bitsandbytes is imported.

bitsandbytes 0.50's CPU backend, on a processor with AVX512-BF16, asks the ``kernels`` package (a dependency of
transformers 5) at *import* for ``kernels-community/quantization-bitsandbytes``: compiled code downloaded from the
Hub and loaded into the process. peft imports bitsandbytes whenever it is installed, so every run, merge check or
playground would reach the network and might load native code nobody asked for (the project's rule: no remote code
without the user saying so), and where it fails it prints a warning on every command. While bitsandbytes itself is
imported, this module makes ``kernels`` see the Hub as offline (``huggingface_hub.constants.HF_HUB_OFFLINE``, which
it reads at each call): a kernel already in the user's own cache still loads, nothing is downloaded, and the
warning that bitsandbytes logs when it falls back to its built-in CPU code is not shown. bitsandbytes' own kernels
and every other Hub download (models, tokenizers) are untouched.

``install()`` adds an import hook for the top-level ``bitsandbytes`` module only; ``workbench.core`` calls it on
import, which costs no import of its own.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Iterator

__all__ = ["install", "hub_kernels_offline"]

_MODULE = "bitsandbytes"


@contextmanager
def hub_kernels_offline() -> Iterator[None]:
    """``kernels`` resolves from the local cache only, and bitsandbytes' "failed to load … from kernels-community"
    warnings are dropped, for the length of the block."""
    try:
        from huggingface_hub import constants
    except ImportError:  # no huggingface_hub, so no kernels package either
        yield
        return
    # bitsandbytes' fallback warning, and kernels' "skipping publisher trust check … offline mode" (a kernel from
    # the user's own cache was trusted when they downloaded it).
    loggers = [logging.getLogger(name) for name in ("bitsandbytes", "kernels")]
    offline, levels = constants.HF_HUB_OFFLINE, [lg.level for lg in loggers]
    constants.HF_HUB_OFFLINE = True
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _OfflineLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, get_data, is_package …: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with hub_kernels_offline():  # its CPU backend, imported from its __init__, asks for the Hub kernel
            self.loader.exec_module(module)


class _BitsandbytesFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _OfflineLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the hook first on ``sys.meta_path`` (once). Nothing happens if bitsandbytes is imported already."""
    if any(isinstance(f, _BitsandbytesFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BitsandbytesFinder())
