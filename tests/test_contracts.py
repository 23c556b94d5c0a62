"""The layering, checked by import-linter against the contracts in pyproject.toml ([tool.importlinter]).

import-linter reads every import statement, including the lazy ones inside functions that a runtime check
(tests/core/test_headless.py) only sees when the function runs.
"""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    # Run in `root`: import-linter reads ./pyproject.toml and finds the package from the current folder first.
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 kept, 0 broken" in out.stdout, out.stdout


def test_a_lazy_qt_import_in_core_breaks_the_contract(tmp_path):
    """The contract is not vacuous: a copy of the tree whose core imports Qt inside a function is refused."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "workbench", tmp_path / "workbench", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "workbench" / "core" / "paths.py", "a") as fh:
        fh.write("\n\ndef _window():\n    from PySide6 import QtWidgets\n\n    return QtWidgets\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0
    assert "workbench.core.paths -> PySide6" in out.stdout, out.stdout
