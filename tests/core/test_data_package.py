"""The shape of the workbench.core.data package: every public name importable from the package, the light modules
light (the window imports them at start-up), and one list of formats. That no module of it imports Qt is
tests/core/test_headless.py's check, which imports every module of workbench.core, these included."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

import workbench.core.data as data
from workbench.core.config import DataFormat

HEAVY = ("torch", "datasets", "pyarrow", "transformers")


def test_every_public_name_resolves_from_its_module():
    for name, module in data._EXPORTS.items():
        assert getattr(data, name) is getattr(importlib.import_module(f"workbench.core.data.{module}"), name)
    assert set(data.__all__) == set(data._EXPORTS) <= set(dir(data))


def test_the_names_type_checkers_see_are_the_names_exported():
    tree = ast.parse(Path(data.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    seen = {alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert seen == data._EXPORTS


def _modules_loaded_by(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


@pytest.mark.subprocess
def test_the_modules_the_window_imports_at_start_up_pull_in_no_ml_stack():
    loaded = _modules_loaded_by(
        "from workbench.core.data import DATA_SUFFIXES, FORMAT_ROLES, formats, inspect_data, readers, results")
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_the_run_file_schema_knows_exactly_the_formats_the_data_package_reads():
    assert get_args(DataFormat) == ("auto", *data.FORMAT_ROLES)
