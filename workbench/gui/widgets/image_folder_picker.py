"""The "Add image folder…" button of the Data tab's file lists, shown while ``model.task = "image-classification"``.

An image-classification run reads its images from a folder with one sub-folder per class (``digits/0/*.png``,
``digits/1/*.png``, …; core/images.py), which the lists' "Add files…" cannot choose. The button opens a folder
dialog — Qt's own, opened window-modal with ``open()``, so the GUI thread never waits in a nested loop for it — and
reports the folder chosen; the Data tab adds it to its list like a file, and reads the thumbnails and the class
histogram from it as for any image data.
"""

from __future__ import annotations

from typing import Callable

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFileDialog, QPushButton

from workbench.core.images import IMAGE_SUFFIXES

IMAGE_TASK = "image-classification"
TOOLTIP = ("A folder with one sub-folder per class, e.g. digits/0/….png, digits/1/….png: each sub-folder's name is "
           f"the label of the images in it ({' '.join(IMAGE_SUFFIXES)}).")


class ImageFolderButton(QPushButton):
    """Shown only for image classification; emits ``folderChosen`` with the folder the user picked."""

    folderChosen = Signal(str)

    def __init__(self, store, title: str, start_folder: Callable[[], str], parent=None):
        super().__init__("Add image folder…", parent)
        self.store = store
        self.title = title
        self.start_folder = start_folder
        self.dialog: QFileDialog | None = None  # the open dialog, while it is open
        self.setToolTip(TOOLTIP)
        self.clicked.connect(self.choose)
        store.changed.connect(self._follow_task)
        self._follow_task("model")

    def _follow_task(self, section: str = "") -> None:
        if section in ("", "model"):
            self.setVisible(self.store.config.model.task == IMAGE_TASK)

    def choose(self) -> None:
        if self.dialog is not None:  # one dialog at a time: a second click shows the open one
            self.dialog.raise_()
            return
        dialog = QFileDialog(self.window(), self.title, self.start_folder())
        dialog.setFileMode(QFileDialog.FileMode.Directory)
        dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
        dialog.fileSelected.connect(self.folderChosen)
        dialog.finished.connect(self._closed)
        self.dialog = dialog
        dialog.open()

    def _closed(self) -> None:
        if self.dialog is not None:
            self.dialog.deleteLater()
        self.dialog = None
