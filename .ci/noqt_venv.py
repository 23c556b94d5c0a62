"""Build a virtual environment that has everything the main one has except Qt, for `make test-core-noqt`.

    python .ci/noqt_venv.py MAIN_VENV NEW_VENV REPO

Installing torch and the ML stack a second time would take minutes and gigabytes, so the new environment is
created from the same interpreter and its site-packages is a farm of symlinks to the main one's entries, leaving
out PySide6, shiboken6, pyqtgraph and pytest-qt (which refuses to load without a Qt binding) along with their
metadata. Qt is then not installed there, as far as Python can tell: `import PySide6` fails and
`importlib.metadata` does not list it. The project itself is put on the path with a .pth file pointing at REPO
(the main environment's editable install may point at another checkout).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

# Top-level names in site-packages (packages, modules, .dist-info folders, .pth files) left out of the farm.
LEFT_OUT = re.compile(
    r"^(PySide6|shiboken6|pyqtgraph|pytestqt|pyside6_essentials|pyside6_addons|pyside6)([-_.].*)?$"
    r"|^pytest_qt-.*\.dist-info$"
    r"|^shiboken6_generator.*$"
    # The project: its editable install names the main checkout; REPO goes on the path instead.
    r"|^__editable__.*lora_workbench.*$|^lora_workbench-.*\.dist-info$",
    re.IGNORECASE,
)


def site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def main(main_venv: Path, new_venv: Path, repo: Path) -> int:
    main_python = main_venv / "bin" / "python"
    source = site_packages(main_python)
    shutil.rmtree(new_venv, ignore_errors=True)
    # The main venv's python knows its base interpreter; --without-pip: nothing is ever installed here.
    subprocess.run([str(main_python), "-m", "venv", "--without-pip", str(new_venv)], check=True)
    target = site_packages(new_venv / "bin" / "python")
    kept = left = 0
    for entry in sorted(source.iterdir()):
        if LEFT_OUT.match(entry.name) or entry.name == "__pycache__":
            left += 1
            continue
        (target / entry.name).symlink_to(entry.resolve())
        kept += 1
    (target / "lora_workbench_checkout.pth").write_text(f"{repo.resolve()}\n")
    print(f"{new_venv}: {kept} entries of {source} linked, {left} left out (Qt, pytest-qt, the main checkout)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
