"""The Playground tab: one prompt, the base model's and the adapter's answers side by side, streamed.

The base model is loaded once (in a worker) and wrapped as a ``PeftModel``; the base answer is generated
inside ``disable_adapter()``, so switching between the two never reloads anything. Generation runs in a
``GenerateWorker`` whose streamer pieces arrive here as signals on the GUI thread, token by token.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Signal
from PySide6.QtGui import QFont, QPalette, QTextCursor
from PySide6.QtWidgets import (
    QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QPushButton,
    QSpinBox, QVBoxLayout, QWidget,
)

from workbench.core.control import RunControl

from .. import workers
from .quantized_comparison import QuantizedComparisonBox


def empty_answer_note(text: str) -> str | None:
    """What to show in place of an answer with nothing to read, or None for a real answer."""
    if text == "":
        return "(the model answered with nothing: an end-of-sequence token at once)"
    if not text.strip():
        return f"(the model answered with only whitespace: {text!r})"
    return None


class Playground(QWidget):
    loadRequested = Signal(str, str)  # base model, adapter folder
    generateRequested = Signal(object)  # a GenerateWorker, for the window to start
    generated = Signal(dict)  # {"base": text, "adapter": text}
    loaded = Signal()
    compareRequested = Signal(object)  # a CompareQuantizedWorker, for the window to start

    def __init__(self, parent=None):
        super().__init__(parent)
        self.model = None
        self.tokenizer = None
        self.control: RunControl | None = None
        self.running = False
        self.pieces: list[str] = []  # which answer each streamed piece went to (the tests check the streaming)

        self.base_edit = QLineEdit()
        self.base_edit.setPlaceholderText("base model folder")
        self.adapter_edit = QLineEdit()
        self.adapter_edit.setPlaceholderText("adapter folder (a run's adapter/)")
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self.request_load)
        self.prompt = QPlainTextEdit()
        self.prompt.setPlaceholderText("Type a prompt…")
        self.prompt.setMaximumHeight(90)
        self.max_tokens = QSpinBox(minimum=1, maximum=4096, value=64)
        self.temperature = QDoubleSpinBox(minimum=0.0, maximum=2.0, singleStep=0.1, decimals=2, value=0.0)
        self.temperature.setToolTip("0 = greedy (the most likely token each time); higher = more varied.")
        self.top_p = QDoubleSpinBox(minimum=0.05, maximum=1.0, singleStep=0.05, decimals=2, value=0.95)
        self.generate_button = QPushButton("Generate")
        self.generate_button.clicked.connect(self.generate)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.status = QLabel("Load a base model and an adapter.")
        self.status.setWordWrap(True)
        mono = QFont("monospace")
        mono.setStyleHint(QFont.StyleHint.Monospace)
        self.answers = {}
        answer_row = QHBoxLayout()
        for which, title in (("base", "Base model"), ("adapter", "With the adapter")):
            box = QGroupBox(title)
            edit = QPlainTextEdit(readOnly=True)
            edit.setFont(mono)
            QVBoxLayout(box).addWidget(edit)
            answer_row.addWidget(box)
            self.answers[which] = edit

        paths = QFormLayout()
        adapter_row = QHBoxLayout()
        adapter_row.addWidget(self.adapter_edit, 1)
        adapter_row.addWidget(self.load_button)
        paths.addRow("Base model", self.base_edit)
        paths.addRow("Adapter", adapter_row)
        settings = QHBoxLayout()
        for label, w in (("Max tokens", self.max_tokens), ("Temperature", self.temperature), ("Top-p", self.top_p)):
            settings.addWidget(QLabel(label))
            settings.addWidget(w)
        settings.addStretch(1)
        settings.addWidget(self.generate_button)
        settings.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.addLayout(paths)
        layout.addWidget(QLabel("Prompt"))
        layout.addWidget(self.prompt)
        layout.addLayout(settings)
        layout.addWidget(self.status)
        layout.addLayout(answer_row, 1)
        # The adapter on the unquantized base (above) against the same adapter on a quantized base.
        self.comparison = QuantizedComparisonBox(self)
        self.comparison.compareRequested.connect(self.compareRequested)
        self.comparison.busyChanged.connect(lambda _busy: self._update_buttons())
        layout.addWidget(self.comparison)
        self._update_buttons()

    def set_paths(self, base: str, adapter: str) -> None:
        self.base_edit.setText(base)
        self.adapter_edit.setText(adapter)

    def _update_buttons(self) -> None:
        comparing = getattr(self, "comparison", None) is not None and self.comparison.running
        self.generate_button.setEnabled(self.model is not None and not self.running and not comparing)
        self.stop_button.setEnabled(self.running)
        self.load_button.setEnabled(not self.running)
        if getattr(self, "comparison", None) is not None:
            self.comparison.set_generating(self.running)

    def request_load(self) -> None:
        base, adapter = self.base_edit.text().strip(), self.adapter_edit.text().strip()
        if not base or not adapter:
            self.status.setText("Choose both the base model and the adapter.")
            return
        self.load_button.setEnabled(False)
        self.status.setText(f"Loading {base} with {adapter}…")
        self.loadRequested.emit(base, adapter)

    def show_loaded(self, result: dict) -> None:
        self.model, self.tokenizer = result["model"], result["tokenizer"]
        self.status.setText("Ready. The base answer is generated with the adapter switched off, from the same "
                            "model in memory." + self.comparison.loaded_note(self.adapter_edit.text().strip()))
        self._update_buttons()
        self.loaded.emit()

    def show_error(self, message: str, details: str = "") -> None:
        self.status.setText(f"<span style='color:#c83232'>{html.escape(message)}</span>")
        self.status.setToolTip(details)
        self._update_buttons()

    def generate(self) -> None:
        if self.model is None or self.running:
            return
        prompt = self.prompt.toPlainText()
        if not prompt.strip():
            self.status.setText("Type a prompt first.")
            return
        for edit in self.answers.values():
            edit.clear()
        self.pieces = []
        self.control = RunControl()
        worker = workers.GenerateWorker(self.model, self.tokenizer, prompt, self.max_tokens.value(),
                                        self.temperature.value(), self.top_p.value(), self.control)
        worker.token.connect(self._token)
        worker.result.connect(self.show_answers)
        worker.failed.connect(self.show_error)
        worker.finished.connect(self._ended)
        self.running = True
        self.status.setText("Generating…")
        self._update_buttons()
        self.generateRequested.emit(worker)

    def _token(self, which: str, text: str) -> None:
        self.pieces.append(which)
        edit = self.answers[which]
        edit.moveCursor(QTextCursor.MoveOperation.End)
        edit.insertPlainText(text)

    def show_answers(self, answers: dict) -> None:
        """The generation's end: an answer that is empty or only whitespace says so in its pane, in a muted
        style, instead of leaving a blank box that looks like nothing happened (a raw prompt the model reads as
        finished gets an end-of-sequence token at once). Not after a stop: a stopped answer is only cut short."""
        stopped = len(answers) < 2 or (self.control is not None and self.control.stop_requested)
        self.status.setText("Stopped." if stopped else "Done.")
        if not stopped:
            for which, text in answers.items():
                note = empty_answer_note(text)
                if note:
                    self._show_note(self.answers[which], note)
        self.generated.emit(answers)

    def _show_note(self, edit: QPlainTextEdit, note: str) -> None:
        muted = edit.palette().color(QPalette.ColorRole.PlaceholderText).name()
        edit.clear()
        edit.appendHtml(f"<i style='color:{muted}'>{html.escape(note)}</i>")

    def _ended(self) -> None:
        self.running = False
        self._update_buttons()

    def stop(self) -> None:
        if self.control is not None:
            self.control.request_stop()
