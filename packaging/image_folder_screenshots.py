"""Screenshots of the Data tab choosing an image folder for ``model.task = "image-classification"``: scikit-learn's
bundled handwritten digits (1,797 8 × 8 images, 10 classes) exported to a folder of class sub-folders, the folder
dialog the "Add image folder…" button opens, and the tab after the folder is chosen (a thumbnail per class and a bar
per class).

    .venv/bin/python packaging/image_folder_screenshots.py [OUT_FOLDER]   (default: docs/screenshots/data-tab)

The digits are read from the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``), found through the
installed package without importing it (its import needs scipy, which the workbench does not): install it with
``pip install --no-deps --target DIR scikit-learn`` and put DIR on PYTHONPATH, or into the environment. Runs itself
under ``xvfb-run`` when there is no display (packaging/screenshots.py).
"""

from __future__ import annotations

import gzip
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import screenshots as shots  # noqa: E402  (the window-driving helpers of the README screenshots)

PER_CLASS = 40


def export_digits(folder: Path, per_class: int = PER_CLASS) -> Path:
    """scikit-learn's digits as ``folder/<digit>/<n>.png`` (dark ink on white, as scikit-learn's own plots show them)."""
    import numpy as np
    from PIL import Image

    spec = find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("scikit-learn is not installed: pip install --no-deps --target DIR scikit-learn, then PYTHONPATH=DIR")
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(data, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    images, labels = table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(int)
    for digit in range(10):
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
        for n, i in enumerate(np.flatnonzero(labels == digit)[:per_class]):
            ink = (255 - images[i] * 255 / 16).astype("uint8")
            Image.fromarray(ink, mode="L").save(folder / str(digit) / f"{n:03d}.png")
    return folder


def main() -> int:
    shots.ensure_display()
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else shots.OUT / "data-tab"
    out.mkdir(parents=True, exist_ok=True)
    from PySide6.QtCore import QSettings
    from PySide6.QtGui import QGuiApplication

    from workbench.gui.app import create_app
    from workbench.gui.main_window import MainWindow

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        digits = export_digits(folder / "digits")
        create_app()
        window = MainWindow(QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat))
        window.resize(*shots.SIZE)
        window.move(0, 0)
        window.store.update("output", runs_root=str(folder / "runs"), name="digits")
        window.store.update("model", task="image-classification")
        window.show()
        window.tabs.setCurrentWidget(window.data)
        inspected: list = []
        window.data_inspected.connect(lambda: inspected.append(1))

        window.data.train_folder.click()
        dialog = window.data.train_folder.dialog
        dialog.selectFile(str(digits))
        shots.settle(800)
        screen = QGuiApplication.primaryScreen().grabWindow(0, 0, 0, *shots.SIZE)  # the window and its dialog
        screen.save(str(out / "image-folder-dialog.png"))
        print("saved", out / "image-folder-dialog.png")
        dialog.accept()
        shots.wait(lambda: inspected and window._jobs == 0 and not window._data_timer.isActive())
        shots.settle()
        window.grab().save(str(out / "image-folder-digits.png"))
        print("saved", out / "image-folder-digits.png")
        window.ask_before_discarding = False
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
