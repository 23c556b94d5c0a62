"""Reduce intruder dimensions of a run's adapter, with the trade-off shown before anything is saved.

A background job loads the run's base and adapter, builds the retention meter on the base, and measures the task
loss (the run's validation answers) and retention for each mitigation λ (``core.intruders.run_trade_off``). The
dialog lists them and plots task loss against the perplexity ratio to the base, one point per λ (λ = 1 is the
adapter as trained), so the user sees what knowledge comes back and what the task pays before choosing. Saving
writes the reduced adapter to a new folder (never over the trained one), on a second job, with the loaded model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QDialog, QDialogButtonBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPushButton,
    QTableWidget, QTableWidgetItem, QVBoxLayout,
)

from .. import workers
from .plots import follow_palette

COLUMNS = ("λ", "Intruder dimensions", "Task loss", "Retention text loss", "Perplexity ÷ base", "Agreement with base")


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


class IntruderDialog(QDialog):
    measured = Signal(object)  # core.intruders.TradeOff
    saved = Signal(str)  # the new adapter folder
    failed = Signal(str)

    def __init__(self, run_dir: str | Path, parent=None, start_job: Callable | None = None):
        super().__init__(parent)
        self.setWindowTitle("Reduce intruder dimensions")
        self.resize(1150, 600)
        self.run_dir = Path(run_dir)
        self.start_job = start_job or workers.JobRunner(self).start
        self.loaded = None  # core.intruders.LoadedRun, kept for saving
        self.trade = None
        self.job_worker = None

        self.explanation = QLabel(
            "Intruder dimensions are directions a LoRA update adds that the base weights do not have; they carry "
            "much of what fine-tuning makes a model forget. Scaling them by λ (1 = as trained, 0 = removed) gives "
            "knowledge back at some cost to the task. Lower is better for both losses; agreement: higher is better.")
        self.explanation.setWordWrap(True)
        self.status = QLabel(f"Measuring the trade-off of {self.run_dir.name}…")
        self.status.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.plot = pg.PlotWidget()
        self.plot.setLabel("bottom", "perplexity ÷ base, general text (lower: less forgotten)")
        self.plot.setLabel("left", "task loss (lower: better)")
        for axis in ("bottom", "left"):
            self.plot.getAxis(axis).enableAutoSIPrefix(False)  # ratios near 1 stay as they are, not ×0.001
        follow_palette(self.plot, [self.plot.getPlotItem()])
        self.curve = self.plot.plot([], [], pen=pg.mkPen((30, 100, 220), width=2), symbol="o", symbolSize=9,
                                    symbolBrush=(30, 100, 220))
        self.labels: list[pg.TextItem] = []
        self.lambda_box = QComboBox()
        self.out_edit = QLineEdit(str(self.run_dir / "adapter-intruders-reduced"))
        self.save_button = QPushButton("Save reduced adapter")
        self.save_button.setEnabled(False)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)

        saving = QHBoxLayout()
        saving.addWidget(QLabel("λ:"))
        saving.addWidget(self.lambda_box)
        saving.addWidget(QLabel("to the new folder:"))
        saving.addWidget(self.out_edit, 1)
        saving.addWidget(self.save_button)
        views = QHBoxLayout()
        views.addWidget(self.table, 3)
        views.addWidget(self.plot, 2)
        layout = QVBoxLayout(self)
        layout.addWidget(self.explanation)
        layout.addWidget(self.status)
        layout.addLayout(views, 1)
        layout.addLayout(saving)
        layout.addWidget(buttons)
        self.lambda_box.currentIndexChanged.connect(self._suggest_folder)
        self.save_button.clicked.connect(self.save)

    def start(self) -> None:
        from workbench.core.intruders import run_trade_off

        run_dir = self.run_dir
        worker = workers.FunctionWorker(lambda should_stop: run_trade_off(run_dir, should_stop=should_stop),
                                        "Measuring the intruder trade-off", stoppable=True)
        worker.result.connect(self._show)
        worker.failed.connect(self._failed)
        self._run(worker)

    def _run(self, worker) -> None:
        self.job_worker = worker
        self.start_job(worker)

    def _failed(self, message: str, _details: str = "") -> None:
        self.status.setText(message)
        self.failed.emit(message)

    def _show(self, result) -> None:
        self.loaded, self.trade = result
        trade = self.trade
        base_task = f", base model {trade.base_task_loss:.4g}" if trade.base_task_loss is not None else ""
        self.status.setText(f"{trade.modules} adapted modules; task loss is the run's validation answers{base_task}. "
                            f"Top {trade.settings['top_k']:g} singular directions looked at, intruder below |cos| "
                            f"{trade.settings['threshold_epsilon']:g}.")
        self.table.setRowCount(len(trade.points))
        for row, p in enumerate(trade.points):
            cells = (f"{p.mitigation_lambda:g}" + (" (as trained)" if p.mitigation_lambda == 1 else ""),
                     f"{p.intruders} in {p.modules_with_intruders} modules", _number(p.task_loss),
                     _number(p.retention_text_loss), _number(p.retention_ppl_ratio), _number(p.retention_agreement))
            for col, text in enumerate(cells):
                self.table.setItem(row, col, QTableWidgetItem(text))
        drawn = [p for p in trade.points if p.task_loss is not None]
        self.curve.setData([p.retention_ppl_ratio for p in drawn], [p.task_loss for p in drawn])
        for label in self.labels:
            self.plot.removeItem(label)
        self.labels = []
        if drawn:  # room right of the points for their λ labels
            xs = [p.retention_ppl_ratio for p in drawn]
            self.plot.setXRange(min(xs), max(xs) + 0.2 * max(max(xs) - min(xs), 1e-3))
        for p in drawn:
            label = pg.TextItem(f"λ={p.mitigation_lambda:g}", anchor=(0, 1), color=self.palette().text().color())
            label.setPos(p.retention_ppl_ratio, p.task_loss)
            self.plot.addItem(label)
            self.labels.append(label)
        self.lambda_box.clear()
        for p in trade.points:
            if p.mitigation_lambda < 1:
                self.lambda_box.addItem(f"{p.mitigation_lambda:g}", p.mitigation_lambda)
        self.save_button.setEnabled(self.lambda_box.count() > 0)
        self.measured.emit(trade)

    def _suggest_folder(self) -> None:
        value = self.lambda_box.currentData()
        if value is not None:
            self.out_edit.setText(str(self.run_dir / f"adapter-intruders-lambda{value:g}"))

    def save(self) -> None:
        from workbench.core.intruders import save_reduced_adapter

        if self.loaded is None or self.lambda_box.currentData() is None:
            return
        model, out, value = self.loaded.model, self.out_edit.text().strip(), float(self.lambda_box.currentData())
        settings = self.trade.settings
        worker = workers.FunctionWorker(
            lambda: str(save_reduced_adapter(model, out, mitigation_lambda=value, top_k=int(settings["top_k"]),
                                             threshold_epsilon=settings["threshold_epsilon"])),
            "Saving the reduced adapter")
        worker.result.connect(self._saved)
        worker.failed.connect(self._failed)
        worker.finished.connect(lambda: self.save_button.setEnabled(True))
        self.save_button.setEnabled(False)
        self.status.setText(f"Saving the adapter reduced at λ = {value:g}…")
        self._run(worker)

    def _saved(self, folder: str) -> None:
        self.status.setText(f"Saved the reduced adapter to {folder}; the trained adapter is unchanged.")
        self.saved.emit(folder)

    def done(self, result: int) -> None:
        self.loaded = None  # the model goes with the dialog
        if self.job_worker is not None:
            self.job_worker.cancel()
        super().done(result)
