"""Export / merge dialog: the adapter as trained (PEFT), a portable adapter, or a merged full model.

The dialog only gathers choices and shows progress; the job is an ``ExportWorker`` (``core.export`` /
``core.merge``) on its own thread. A merge reports bytes done / total, from which the dialog shows an
ETA; Cancel asks the merge to stop between tensors, and the core then removes its partial folder, so
nothing half-written is ever left at the destination.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup, QComboBox, QDialog, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
    QPushButton, QRadioButton, QVBoxLayout, QWidget,
)

from workbench.core.control import RunControl

from .. import workers
from .summary_bar import human_bytes
from .training_panel import human_duration

MODES = (("peft", "Adapter (PEFT, as trained)"), ("portable", "Adapter (portable: scales baked in, for vLLM / llama.cpp)"),
         ("merge", "Merged model (base + adapter, no extra latency)"))


def _path_row(edit: QLineEdit, choose) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(edit, 1)
    button = QPushButton("Browse…")
    button.clicked.connect(choose)
    layout.addWidget(button)
    return row


class ExportDialog(QDialog):
    done_ok = Signal(object)  # the worker's result dict
    done_failed = Signal(str)
    ended = Signal()

    def __init__(self, adapter: str = "", base: str = "", start_job=None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Export or merge an adapter")
        self.setMinimumWidth(640)
        self._start_job = start_job or (lambda w: workers.start(w, self))
        self.control: RunControl | None = None
        self.running = False
        self._started_at = 0.0

        self.adapter_edit = QLineEdit(adapter)
        self.adapter_edit.setPlaceholderText("adapter folder (a run's adapter/ or any PEFT LoRA adapter)")
        self.base_edit = QLineEdit(base)
        self.base_edit.setPlaceholderText("base model folder (needed for a merged model)")
        self.out_edit = QLineEdit(str(Path(adapter).parent / "merged") if adapter else "")
        self.out_edit.setPlaceholderText("new folder to create")
        self.dtype_combo = QComboBox()
        self.dtype_combo.addItem("as the base model", None)
        for d in ("bf16", "fp16", "fp32"):
            self.dtype_combo.addItem(d, d)
        self.mode_group = QButtonGroup(self)
        mode_box = QWidget()
        mode_layout = QVBoxLayout(mode_box)
        mode_layout.setContentsMargins(0, 0, 0, 0)
        self.mode_buttons = {}
        for i, (key, text) in enumerate(MODES):
            b = QRadioButton(text)
            self.mode_group.addButton(b, i)
            mode_layout.addWidget(b)
            self.mode_buttons[key] = b
        self.mode_buttons["merge"].setChecked(True)
        self.mode_group.idToggled.connect(lambda *_: self._mode_changed())

        form = QFormLayout()
        form.addRow("Export", mode_box)
        form.addRow("Adapter", _path_row(self.adapter_edit, lambda: self._choose_dir(self.adapter_edit)))
        form.addRow("Base model", _path_row(self.base_edit, lambda: self._choose_dir(self.base_edit)))
        form.addRow("Weights dtype", self.dtype_combo)
        form.addRow("Destination", _path_row(self.out_edit, lambda: self._choose_dir(self.out_edit, new=True)))
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.status = QLabel("Choose what to export and where, then Start.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.start_button = QPushButton("Start")
        self.start_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.close_button = QPushButton("Close")
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for b in (self.start_button, self.cancel_button, self.close_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        self._mode_changed()
        self._set_running(False)

    def mode(self) -> str:
        return next(k for k, b in self.mode_buttons.items() if b.isChecked())

    def _mode_changed(self) -> None:
        merge = self.mode() == "merge"
        self.base_edit.setEnabled(merge)
        self.dtype_combo.setEnabled(merge)

    def _choose_dir(self, edit: QLineEdit, new: bool = False) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a folder", edit.text()) if not new else \
            QFileDialog.getSaveFileName(self, "New folder", edit.text())[0]
        if path:
            edit.setText(path)

    def _set_running(self, running: bool) -> None:
        self.running = running
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.close_button.setEnabled(not running)

    def problems(self) -> list[str]:
        p = []
        if not self.adapter_edit.text().strip():
            p.append("Choose the adapter folder.")
        if self.mode() == "merge" and not self.base_edit.text().strip():
            p.append("Choose the base model folder for a merged model.")
        out = self.out_edit.text().strip()
        if not out:
            p.append("Choose a destination folder.")
        elif Path(out).exists():
            p.append(f"{out} already exists; choose a new folder.")
        return p

    def start(self) -> None:
        if self.running:
            return
        problems = self.problems()
        if problems:
            self._show("<span style='color:#c83232'>" + "<br>".join(problems) + "</span>")
            return
        self.control = RunControl()
        mode = self.mode()
        worker = workers.ExportWorker(mode, self.adapter_edit.text().strip(), self.out_edit.text().strip(),
                                      base=self.base_edit.text().strip(), dtype=self.dtype_combo.currentData(),
                                      control=self.control)
        worker.progress.connect(self._progress)
        worker.result.connect(self._succeeded)
        worker.failed.connect(self._failed)
        worker.finished.connect(self._ended)
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self._show("Merging…" if mode == "merge" else "Exporting…")
        self._started_at = time.monotonic()
        self._set_running(True)
        self._start_job(worker)

    def _progress(self, done: float, total: float, detail: str) -> None:
        share = done / total if total else 1.0
        self.progress.setValue(int(share * 1000))
        elapsed = time.monotonic() - self._started_at
        eta = elapsed * (1 - share) / share if share > 0 else None
        self.progress.setFormat(f"{human_bytes(done)} of {human_bytes(total)} — {share:.0%}")
        self.status.setText(f"Merging {detail} — {human_duration(elapsed)} elapsed, about {human_duration(eta)} left")

    def cancel(self) -> None:
        if self.running and self.control is not None:
            self.control.request_stop()
            self.cancel_button.setEnabled(False)
            self._show("Cancelling… the partial output is being removed.")

    def _succeeded(self, result: dict) -> None:
        if result["stopped"]:
            self.progress.setFormat("cancelled")
            self._show("Cancelled. Nothing was written.")
        else:
            self.progress.setValue(1000)
            self.progress.setFormat("done")
            what = "Merged model" if result["mode"] == "merge" else "Adapter"
            self._show(f"<span style='color:#2e9d4e'><b>{what} written to</b></span> {result['output']}")
        self.done_ok.emit(result)

    def _failed(self, message: str, details: str) -> None:
        self.progress.setFormat("failed")
        self._show(f"<span style='color:#c83232'><b>Failed:</b></span> {message}")
        self.status.setToolTip(details)
        self.done_failed.emit(message)

    def _ended(self) -> None:
        self._set_running(False)
        self.ended.emit()

    def _show(self, html: str) -> None:
        self.status.setText(html)

    def closeEvent(self, event) -> None:
        if self.running:  # the job must end (and clean up) first
            self.cancel()
            event.ignore()
            return
        super().closeEvent(event)

    def reject(self) -> None:  # Escape: same as closing
        if self.running:
            self.cancel()
            return
        super().reject()
