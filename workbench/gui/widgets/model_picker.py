"""Choosing the base model: a local folder, a .gguf file, a Hub id, or a recent model; and what it is."""

from __future__ import annotations

import html

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from .layer_tree_model import human_count


class ModelPicker(QWidget):
    openRequested = Signal(str)  # what the user typed or picked

    def __init__(self, parent=None):
        super().__init__(parent)
        self.source = QComboBox(editable=True)
        self.source.setMinimumWidth(380)
        self.source.lineEdit().setPlaceholderText("Model folder, .gguf file, or Hub id (org/name)")
        self.source.setToolTip("A local Hugging Face model folder, a .gguf file, or a Hub id such as "
                               "HuggingFaceTB/SmolLM2-135M. The list holds recently opened models. "
                               "You can also drop a folder or .gguf file on the window.")
        self.folder_button = QPushButton("Folder…")
        self.gguf_button = QPushButton("GGUF file…")
        self.open_button = QPushButton("Open model")
        self.open_button.setDefault(True)
        self.info = QLabel("Open a model to see its layers.")
        self.info.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(QLabel("Model:"))
        row.addWidget(self.source, 1)
        for w in (self.folder_button, self.gguf_button, self.open_button):
            row.addWidget(w)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.info)
        self.open_button.clicked.connect(lambda: self.openRequested.emit(self.text()))
        self.source.lineEdit().returnPressed.connect(lambda: self.openRequested.emit(self.text()))
        self.source.activated.connect(lambda: self.openRequested.emit(self.text()))
        self.folder_button.clicked.connect(self.choose_folder)
        self.gguf_button.clicked.connect(self.choose_gguf)

    def text(self) -> str:
        return self.source.currentText().strip()

    def set_text(self, spec: str) -> None:
        self.source.setEditText(spec)

    def set_recent(self, specs: list[str]) -> None:
        current = self.text()
        self.source.blockSignals(True)
        self.source.clear()
        self.source.addItems(specs)
        self.source.setEditText(current)
        self.source.blockSignals(False)

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder (with config.json)")
        if folder:
            self.set_text(folder)
            self.openRequested.emit(folder)

    def choose_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "GGUF model file", "", "GGUF models (*.gguf);;All files (*)")
        if path:
            self.set_text(path)
            self.openRequested.emit(path)

    def set_busy(self, busy: bool, text: str = "") -> None:
        for w in (self.source, self.folder_button, self.gguf_button, self.open_button):
            w.setEnabled(not busy)
        if text:
            self.info.setText(text)

    def show_overview(self, overview, device_text: str) -> None:
        tree = overview.tree
        blocks = f"{tree.num_blocks} blocks ({tree.blocks_prefix})" if tree.blocks_prefix else "no repeated blocks"
        self.info.setText(
            f"<b>{html.escape(overview.architecture)}</b> · {human_count(tree.total_params)} parameters · "
            f"stored as {html.escape(overview.dtype)} · {blocks} · {overview.source.kind} "
            f"({html.escape(overview.source.weights)} weights)<br>Trains on: <b>{html.escape(device_text)}</b>"
        )
