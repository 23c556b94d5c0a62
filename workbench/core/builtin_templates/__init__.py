"""Architecture templates shipped with Workbench, so that even the first ``workbench inspect`` of a common
architecture on a fresh machine imports no modeling code (issue #22).

Each ``<key>.json`` here is a template exactly as core/tree_template.py learns it at run time (from tiny probes,
checked against a fresh build), learned from one of the Hub config.json files in core/builtin_template_sources.py,
and named by ``template_key(raw, task, num_labels, builtin=True)``: the architecture, the task and every non-size
field, with the exact transformers version they were learned under and no source fingerprint. So another
transformers version finds none of them and builds afresh, as before; a change to the tree code is caught by
``python -m workbench.core.builtin_templates --check`` (CI), which learns them all again and compares.

core/tree_cache.py reads them after the user's own cache and templates, before a fresh build; it never writes
here. This module only locates the files: the generator (``generate.py``) imports transformers.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DIRECTORY", "builtin_template_path"]

DIRECTORY = Path(__file__).resolve().parent  # package data: in the wheel, and in the PyInstaller bundle (its spec)


def builtin_template_path(key: str) -> Path:
    return DIRECTORY / f"{key}.json"
