"""Export / merge dialog: the adapter as trained (PEFT), a portable adapter, a merged full model, or a GGUF file
for llama.cpp / Ollama / LM Studio (the merged model, the adapter, the merged model with an Ollama Modelfile, or
the adapter with a Modelfile whose FROM is the user's base GGUF, the Base GGUF field).

The dialog only gathers choices and shows progress; the job is an ``ExportWorker`` (``core.export``,
``core.merge``, ``core.gguf_export``) on its own thread. A merge or a GGUF export reports bytes done / total,
from which the dialog shows an ETA; Cancel asks the job to stop between tensors, and the core then removes its
partial folder (``.tmp-NAME.partial``, renamed into place only when complete), so nothing half-written is ever
left at the destination. For the GGUF choices a background plan (``workers.plan_gguf``) checks the base's
architecture (an unsupported one disables the GGUF choices, with the reason) and gives the resulting size.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QButtonGroup, QComboBox, QDialog, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit,
    QProgressBar, QPushButton, QRadioButton, QVBoxLayout, QWidget,
)

from workbench.core.control import RunControl

from .. import workers
from .path_edit import PathEdit
from .quantized_comparison import trained_quantization_of
from .summary_bar import human_bytes
from .training_panel import human_duration

MODES = (("peft", "Adapter (PEFT, as trained)"), ("portable", "Adapter (portable: scales baked in, for vLLM / llama.cpp)"),
         ("merge", "Merged model (base + adapter, no extra latency)"),
         ("gguf", "GGUF (merged): one file for llama.cpp, LM Studio, llamafile"),
         ("gguf_adapter", "GGUF adapter: llama.cpp's LoRA format, for llama-cli --lora or Ollama's ADAPTER"),
         ("ollama", "Ollama Modelfile: the merged GGUF with a Modelfile (chat template, stop tokens)"),
         ("ollama_adapter", "Ollama Modelfile for the adapter: FROM your base GGUF, ADAPTER the GGUF adapter"))
GGUF_MODES = ("gguf", "gguf_adapter", "ollama", "ollama_adapter")
ADAPTER_MODES = ("gguf_adapter", "ollama_adapter")  # the adapter alone, for a GGUF base file (the Base GGUF field)
# The destination's default follows the choice (a merged model is not written to ".../portable").
DEFAULT_FOLDERS = {"peft": "exported", "portable": "portable", "merge": "merged", "gguf": "gguf",
                   "gguf_adapter": "gguf-adapter", "ollama": "ollama", "ollama_adapter": "ollama-adapter"}


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
        self._start_job = start_job or workers.JobRunner(self).start
        self.control: RunControl | None = None
        self.running = False
        self._started_at = 0.0
        self._stage = "merge"  # what the progress counts: "merge"/"gguf" bytes, "quantize" tensors

        self.adapter_edit = PathEdit(adapter)
        self.adapter_edit.setPlaceholderText("adapter folder (a run's adapter/ or any PEFT LoRA adapter)")
        self.base_edit = PathEdit(base)
        self.base_edit.setPlaceholderText("base model folder (needed for a merged model)")
        # The GGUF model the adapter will run on (llama-cli -m, Ollama's FROM); checked to hold every adapted tensor.
        self.base_gguf_edit = QLineEdit()
        self.base_gguf_edit.setToolTip("The .gguf file of the base model that llama.cpp or Ollama will load the "
                                       "adapter onto. It is checked to hold every tensor the adapter changes.")
        self.base_gguf_edit.textChanged.connect(self._paths_changed)
        # What a merge of an adapter trained on a quantized base does (from the original weights), when it is one.
        self.quantized_note = QLabel()
        self.quantized_note.setWordWrap(True)
        self.out_edit = PathEdit(str(Path(adapter).parent / "merged") if adapter else "")
        self._default_out = self.out_edit.text()
        self.out_edit.setPlaceholderText("new folder to create")
        self.dtype_combo = QComboBox()
        self.dtype_combo.addItem("as the base model", None)
        for d in ("bf16", "fp16", "fp32"):
            self.dtype_combo.addItem(d, d)
        self.type_combo = QComboBox()  # GGUF types, filled per choice (_fill_types)
        self.type_note = QLabel()
        self.type_note.setWordWrap(True)
        self.size_label = QLabel()
        self.size_label.setWordWrap(True)
        self.size_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._gguf_unsupported = ""  # why the base's architecture cannot be written to GGUF, once known
        self._gguf_origin: str | None = None  # the GGUF the base was converted from ("" none), once the plan knows
        self._plan_timer = QTimer(self, singleShot=True, interval=300)  # debounce typing in the path boxes
        self._plan_timer.timeout.connect(self._plan)
        self._planning = False
        self._plan_pending = False
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
        self.mode_group.idToggled.connect(lambda _id, checked: checked and self._mode_changed())
        self.type_combo.currentIndexChanged.connect(lambda _: self._plan_timer.start())
        for edit in (self.adapter_edit, self.base_edit):
            edit.textChanged.connect(self._paths_changed)

        form = QFormLayout()
        form.addRow("Export", mode_box)
        form.addRow("Adapter", _path_row(self.adapter_edit, lambda: self._choose_dir(self.adapter_edit)))
        form.addRow("Base model", _path_row(self.base_edit, lambda: self._choose_dir(self.base_edit)))
        self.base_gguf_row = _path_row(self.base_gguf_edit, self._choose_base_gguf)
        form.addRow("Base GGUF", self.base_gguf_row)
        form.addRow("Weights dtype", self.dtype_combo)
        form.addRow("GGUF type", self.type_combo)
        form.addRow("", self.type_note)
        form.addRow("Resulting size", self.size_label)
        form.addRow("Destination", _path_row(self.out_edit, lambda: self._choose_dir(self.out_edit, new=True)))
        self.form = form
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.status = QLabel("Choose what to export and where, then Start.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # What to run next (ollama create …), selectable and copyable; shown after a GGUF export.
        self.next_steps = QPlainTextEdit()
        self.next_steps.setReadOnly(True)
        self.next_steps.setMaximumHeight(80)
        self.copy_button = QPushButton("Copy command")
        self.copy_button.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.next_steps.toPlainText()))
        next_row = QHBoxLayout()
        next_row.addWidget(self.next_steps, 1)
        next_row.addWidget(self.copy_button, 0, Qt.AlignmentFlag.AlignTop)
        self.next_box = QWidget()
        self.next_box.setLayout(next_row)
        next_row.setContentsMargins(0, 0, 0, 0)
        self.next_box.hide()
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
        layout.addWidget(self.quantized_note)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.next_box)
        layout.addLayout(buttons)
        self._mode_changed()
        self._set_running(False)

    def mode(self) -> str:
        return next(k for k, b in self.mode_buttons.items() if b.isChecked())

    def _mode_changed(self) -> None:
        mode = self.mode()
        self.base_edit.setEnabled(mode in ("merge", *GGUF_MODES))
        self.dtype_combo.setEnabled(mode == "merge")
        gguf = mode in GGUF_MODES
        for widget in (self.type_combo, self.type_note, self.size_label):
            self.form.setRowVisible(widget, gguf)
        self.form.setRowVisible(self.dtype_combo, not gguf)
        self.form.setRowVisible(self.base_gguf_row, mode in ADAPTER_MODES)
        self._show_base_gguf_default()
        self._show_quantized_note()
        self._follow_default_destination()
        if gguf:
            self._fill_types(mode)
            self._plan_timer.start()

    def _follow_default_destination(self) -> None:
        """The destination beside the adapter, named after the choice, while it is still the default one (the
        user's own choice of folder stays): also when the adapter is chosen after the kind."""
        adapter = self.adapter_edit.text().strip()
        if adapter and self.out_edit.text() == self._default_out:
            self._default_out = str(Path(adapter).parent / DEFAULT_FOLDERS[self.mode()])
            self.out_edit.setText(self._default_out)

    def _fill_types(self, mode: str) -> None:
        """The GGUF types for this choice; the ones this machine cannot write are listed, disabled, with why."""
        from workbench.core.gguf_export.types import ADAPTER_TYPES, DEFAULT_TYPE, GGUF_TYPES, llama_cpp_available

        adapter = mode in ADAPTER_MODES
        names = ADAPTER_TYPES if adapter else tuple(GGUF_TYPES)
        wanted = self.type_combo.currentData() if self.type_combo.count() else None
        with_llama = llama_cpp_available()
        self.type_combo.blockSignals(True)
        self.type_combo.clear()
        for name in names:
            t = GGUF_TYPES[name]
            self.type_combo.addItem(f"{t.label} — {t.description}", name)
            if t.writer == "llama.cpp" and not with_llama:
                item = self.type_combo.model().item(self.type_combo.count() - 1)
                item.setEnabled(False)
                item.setToolTip("made by llama.cpp's quantizer: install llama-cpp-python")
        index = self.type_combo.findData(wanted if wanted in names else ("f32" if adapter else DEFAULT_TYPE))
        self.type_combo.setCurrentIndex(max(index, 0))
        self.type_combo.blockSignals(False)
        if adapter:
            self.type_note.setText("An adapter is added to the base at run time, so only float types: F32 keeps it "
                                   "exact, F16 / BF16 halve it.")
        elif with_llama:
            self.type_note.setText("F32 / F16 / BF16 / Q8_0 are written tensor by tensor; the k-quants by llama.cpp's "
                                   "quantizer (llama-cpp-python), from an unquantized file written first.")
        else:
            self.type_note.setText("The k-quants (Q6_K, Q5_K_M, Q4_K_M, …) are made by llama.cpp's own quantizer and "
                                   "need llama-cpp-python, which is not installed (pip install llama-cpp-python; it "
                                   "compiles llama.cpp, about 10 minutes). F32 / F16 / BF16 / Q8_0 need nothing more.")

    def _show_base_gguf_default(self, origin: str = "") -> None:
        """The base's own GGUF file when it was converted from one (the built-in model, a GGUF opened as base):
        the plan finds it (``core.gguf_export.planning.plan_gguf``)."""
        self.base_gguf_edit.setPlaceholderText(
            f"default: {origin}" if origin else
            "the base model's .gguf file (needed for Ollama; for llama.cpp it checks the adapter fits it)")

    def _show_quantized_note(self) -> None:
        """An adapter trained on a quantized base: say what a merge does with it (and why)."""
        trained = trained_quantization_of(self.adapter_edit.text().strip())
        merging = self.mode() in ("merge", "gguf", "ollama")
        self.quantized_note.setVisible(bool(trained) and merging)
        if trained and merging:
            self.quantized_note.setText(
                f"<i>This adapter was trained on a base quantized to {trained[0]}. The merge adds it to the base's "
                "original, unquantized weights in their own dtype, never to the rounded ones, so nothing is lost twice; the "
                "merged model answers as the adapter on the unquantized base does, a little differently from "
                "training (the Playground's comparison shows by how much).</i>")

    def _paths_changed(self) -> None:
        self._follow_default_destination()
        self._show_base_gguf_default()
        self._show_quantized_note()
        self._gguf_unsupported = ""  # another base: its architecture is checked again
        self._gguf_origin = None
        for key in GGUF_MODES:
            self.mode_buttons[key].setEnabled(True)
            self.mode_buttons[key].setToolTip("")
        if self.mode() in GGUF_MODES:
            self._plan_timer.start()

    # -- the GGUF plan: architecture check and resulting size, in the background ---------------------------
    def _plan(self) -> None:
        mode, adapter, base = self.mode(), self.adapter_edit.text().strip(), self.base_edit.text().strip()
        if mode not in GGUF_MODES or self.running:
            return
        if not adapter or not base:
            self.size_label.setText("Choose the adapter and its base model to see the size.")
            return
        if self._planning:  # one plan at a time; the latest choice wins
            self._plan_pending = True
            return
        self._planning = True
        self.size_label.setText("Working out the size…")
        type_name = self.type_combo.currentData()
        worker = workers.FunctionWorker(lambda: workers.plan_gguf(mode, adapter, base, type_name),
                                        "Planning the GGUF export")
        worker.result.connect(lambda plan: self._planned(plan, (mode, adapter, base, type_name)))
        worker.failed.connect(lambda message, _details: self.size_label.setText(
            f"<span style='color:#c83232'>Cannot export this to GGUF:</span> {message}"))
        worker.finished.connect(self._plan_ended)
        self._start_job(worker)

    def _planned(self, plan: dict, asked: tuple) -> None:
        if asked != (self.mode(), self.adapter_edit.text().strip(), self.base_edit.text().strip(),
                     self.type_combo.currentData()):
            return  # the choice changed meanwhile: the pending plan answers
        if plan["unsupported"]:
            self._gguf_unsupported = plan["unsupported"]
            for key in GGUF_MODES:
                self.mode_buttons[key].setToolTip(plan["unsupported"])
            self.mode_buttons["merge"].setChecked(True)
            for key in GGUF_MODES:
                self.mode_buttons[key].setEnabled(False)
            self._show(f"GGUF export is not available for this base model: {plan['unsupported']}")
            return
        self._gguf_origin = plan.get("gguf_origin", "")
        self._show_base_gguf_default(self._gguf_origin)
        size = human_bytes(plan["size"])
        self.size_label.setText(f"{plan['file_name']}: {size if plan['exact'] else 'about ' + size}"
                                + ("" if plan["exact"] else " (llama.cpp chooses a type per tensor)"))

    def _plan_ended(self) -> None:
        self._planning = False
        if self._plan_pending:
            self._plan_pending = False
            self._plan()

    def _choose_base_gguf(self) -> None:
        path = QFileDialog.getOpenFileName(self, "The base model's GGUF file", self.base_gguf_edit.text(),
                                           "GGUF models (*.gguf)")[0]
        if path:
            self.base_gguf_edit.setText(path)

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
        if self.mode() in ("merge", *GGUF_MODES) and not self.base_edit.text().strip():
            p.append("Choose the base model folder for a merged model or a GGUF file.")
        if self.mode() == "ollama_adapter" and not self.base_gguf_edit.text().strip() and self._gguf_origin == "":
            p.append("Choose the Base GGUF: the .gguf file of the base model that the Modelfile's FROM line names "
                     "(this base was not converted from one).")
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
        if mode in ADAPTER_MODES:
            from ..quantized_workers import GgufAdapterWorker

            worker = GgufAdapterWorker(mode, self.adapter_edit.text().strip(), self.out_edit.text().strip(),
                                       base=self.base_edit.text().strip(), base_gguf=self.base_gguf_edit.text().strip(),
                                       control=self.control, gguf_type=self.type_combo.currentData())
        else:
            worker = workers.ExportWorker(mode, self.adapter_edit.text().strip(), self.out_edit.text().strip(),
                                          base=self.base_edit.text().strip(), dtype=self.dtype_combo.currentData(),
                                          control=self.control, gguf_type=self.type_combo.currentData())
        worker.progress.connect(self._progress)
        worker.stage.connect(self._stage_changed)
        worker.result.connect(self._succeeded)
        worker.failed.connect(self._failed)
        worker.finished.connect(self._ended)
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.next_box.hide()
        self._stage = "merge"
        self._show("Merging…" if mode == "merge" else "Exporting…")
        self._started_at = time.monotonic()
        self._set_running(True)
        self._start_job(worker)

    def _stage_changed(self, task: str) -> None:
        self._stage = task
        self._started_at = time.monotonic()  # each stage's ETA from its own pace

    def _progress(self, done: float, total: float, detail: str) -> None:
        share = done / total if total else 1.0
        self.progress.setValue(int(share * 1000))
        elapsed = time.monotonic() - self._started_at
        eta = elapsed * (1 - share) / share if share > 0 else None
        stage = self._stage
        if stage == "quantize":  # llama.cpp counts tensors
            self.progress.setFormat(f"{int(done)} of {int(total)} tensors quantized — {share:.0%}")
            doing = "Quantizing with llama.cpp"
        else:
            self.progress.setFormat(f"{human_bytes(done)} of {human_bytes(total)} — {share:.0%}")
            doing = "Writing the GGUF file" if stage == "gguf" else "Merging"
        self.status.setText(f"{doing} {detail} — {human_duration(elapsed)} elapsed, about {human_duration(eta)} left")

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
            what = {"merge": "Merged model", "gguf": "GGUF model", "ollama": "GGUF model and Ollama Modelfile",
                    "gguf_adapter": "GGUF adapter", "ollama_adapter": "GGUF adapter and Ollama Modelfile"}.get(
                        result["mode"], "Adapter")
            where = result.get("file") or result["output"]
            size = f" ({human_bytes(result['bytes'])})" if result.get("bytes") else ""
            notes = "".join(f"<br><i>{note}</i>" for note in result.get("notes", ()))
            self._show(f"<span style='color:#2e9d4e'><b>{what} written to</b></span> {where}{size}{notes}")
            if result.get("commands"):
                self.next_steps.setPlainText(result["commands"])
                self.next_box.show()
        self.done_ok.emit(result)

    def _failed(self, message: str, details: str) -> None:
        self.progress.setFormat("failed")
        self._show(f"<span style='color:#c83232'><b>Failed:</b></span> {message}")
        self.status.setToolTip(details)
        self.done_failed.emit(message)

    def _ended(self) -> None:
        self._set_running(False)
        self.ended.emit()
        if self.mode() in GGUF_MODES:
            self._plan_timer.start()

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
