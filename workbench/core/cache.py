"""Workbench's cache folder: where converted models live (``<cache>/models/``).

``$LORA_WORKBENCH_CACHE`` when set, else the platform's user cache folder from ``platformdirs``:
``$XDG_CACHE_HOME/lora-workbench`` (``~/.cache/lora-workbench``) on Linux, ``~/Library/Caches/lora-workbench``
on macOS, ``%LOCALAPPDATA%\\lora-workbench`` on Windows — the folders earlier versions chose by hand, so
their caches stay in use (``opinion=False`` keeps platformdirs from adding a ``Cache`` folder on Windows).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["APP_NAME", "CACHE_ENV", "cache_root"]

APP_NAME = "lora-workbench"
CACHE_ENV = "LORA_WORKBENCH_CACHE"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Workbench's cache folder: the argument, ``$LORA_WORKBENCH_CACHE``, or the platform's user cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    from platformdirs import user_cache_path

    return user_cache_path(APP_NAME, appauthor=False, opinion=False)
