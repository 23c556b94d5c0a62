"""A titled list of data files with Add…/Remove buttons and a line for the problem that concerns the list.

Long paths are elided in the middle (the file name and the top folders stay visible) and shown whole in the
tooltip. The list only displays: the Data tab decides what the files are and keeps them in the run settings.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QAbstractItemView, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget

from .inline_problem import PROBLEM_COLOUR, InlineProblem


class FileListBox(QWidget):
    addRequested = Signal()
    removeRequested = Signal(list)  # the paths selected

    def __init__(self, title: str, tooltip: str, parent=None):
        super().__init__(parent)
        self.title = QLabel(f"<b>{title}</b>")
        self.files = QListWidget()
        self.files.setToolTip(tooltip)
        self.files.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.files.setWordWrap(False)
        self.files.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.add_button = QPushButton("Add files…")
        self.remove_button = QPushButton("Remove")
        self.remove_button.setEnabled(False)
        self.problem = InlineProblem()
        buttons = self._buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.title)
        layout.addWidget(self.files, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.problem)
        self.add_button.clicked.connect(self.addRequested)
        self.remove_button.clicked.connect(lambda: self.removeRequested.emit(self.selected()))
        self.files.itemSelectionChanged.connect(lambda: self.remove_button.setEnabled(bool(self.selected())))

    def add_button_widget(self, widget: QWidget) -> None:
        """Another button beside Add…/Remove (the image-folder picker, gui/widgets/image_folder_picker.py)."""
        self._buttons.insertWidget(1, widget)

    def set_paths(self, paths: list[str]) -> None:
        self.files.clear()
        for path in paths:
            item = QListWidgetItem(path)
            item.setToolTip(path)
            item.setData(Qt.ItemDataRole.UserRole, path)
            self.files.addItem(item)
        self.remove_button.setEnabled(False)

    def paths(self) -> list[str]:
        return [self.files.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.files.count())]

    def selected(self) -> list[str]:
        return [item.data(Qt.ItemDataRole.UserRole) for item in self.files.selectedItems()]

    def mark_problem(self, message: str) -> None:
        """Show the file a problem starts with in the problem colour (the others as usual)."""
        for i in range(self.files.count()):
            item = self.files.item(i)
            path = str(Path(item.data(Qt.ItemDataRole.UserRole)).expanduser())
            bad = message.startswith((f"{path}:", f"{path} "))
            item.setForeground(QColor(PROBLEM_COLOUR) if bad else self.files.palette().text().color())

    def set_rows(self, rows: dict[str, str]) -> None:
        """What was found in each file ("jsonl, 120 rows"), shown after the path and in its tooltip."""
        for i in range(self.files.count()):
            item = self.files.item(i)
            path = item.data(Qt.ItemDataRole.UserRole)
            found = rows.get(path) or rows.get(str(Path(path).expanduser()))
            item.setText(f"{path}  ({found})" if found else path)
            item.setToolTip(f"{path}\n{found}" if found else path)
