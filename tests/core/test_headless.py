"""workbench.core must never import Qt: the engine runs on servers without a display.

tests/test_contracts.py checks the import statements (import-linter); this checks what importing really loads.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

QT = ("PySide6", "PyQt5", "PyQt6", "pyqtgraph", "shiboken6")


@pytest.mark.subprocess
def test_core_imports_no_qt():
    # walk_packages, not iter_modules: core/runs, core/data and core/gguf_export are packages with modules inside.
    code = (
        "import sys, pkgutil, importlib, workbench.core as c\n"
        "names = [m.name for m in pkgutil.walk_packages(c.__path__, 'workbench.core.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {QT!r})\n"
        "print(len(names))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, bad = out.stdout.split("\n")[:2]
    assert bad == "", f"workbench.core pulled in Qt modules: {bad}"
    # The walk reached the sub-packages' modules, not only the top level (about 30 modules there today).
    assert int(count) > 50, out.stdout


@pytest.mark.subprocess
def test_core_import_is_cheap():
    """`import workbench.core` (what the window does before showing itself) must not drag in torch."""
    code = "import sys, workbench.core, workbench.core.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.subprocess
@pytest.mark.skipif(importlib.util.find_spec("PySide6") is not None, reason="Qt is installed (make test-core-noqt runs it)")
def test_without_qt_the_window_command_says_what_to_install():
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run([sys.executable, "-m", "workbench", "gui"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "the window cannot start: No module named 'PySide6'" in out.stderr and "make run" in out.stderr
    assert "Traceback" not in out.stderr
