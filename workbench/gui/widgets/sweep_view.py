"""The Runs tab's sweep view: one group of runs (``output.group``, as ``workbench sweep`` or the queue made them) as a
table and the rank trade-off plot.

The table has a row per run: the values the sweep varied, status, trainable parameters, adapter size, training
time, last and best loss, and each task metric's best evaluation (by its direction, after step 0) with the step it
came from — retention at the step of the run's best checkpoint (``core.sweep.best_metrics``). The plot puts each
run at its trainable parameters (log axis: ranks double) against the chosen quality — best evaluation loss by
default, or any task metric's best or the retention of the best checkpoint — and joins the Pareto front: the runs
no other run beats on both cost and quality. Everything shown comes from ``core.sweep`` (``sweep_groups``, ``varied_fields``, ``sweep_table``,
``pareto_front``), read on a background job so that a sweep of long runs never stalls the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QHBoxLayout, QHeaderView, QLabel, QPushButton, QSplitter, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

from workbench.core.fsutil import format_size

from .. import workers
from .lazy_plot import LazyPlot, follow_palette
from .metric_labels import LABELS

# Quantities the plot can put on its y axis: (key, label, lower is better). A metric is its best evaluation's
# value; retention is the best checkpoint's.
QUALITIES = (("best_eval_loss", "best evaluation loss", True), ("last_loss", "last training loss", True),
             ("json_exact", "best exact JSON", False), ("exact_match", "best exact match", False),
             ("json_fields", "best JSON fields", False),
             ("json_valid", "best valid JSON", False), ("regex", "best regex", False), ("label", "best label", False),
             ("perplexity", "best perplexity", True),
             ("retention_agreement", "agreement with base (best checkpoint)", False),
             ("retention_ppl_ratio", "perplexity ÷ base (best checkpoint)", True))
METRIC_COLUMNS = ("json_exact", "exact_match", "json_fields", "json_valid", "regex", "label", "perplexity",
                  "retention_agreement", "retention_ppl_ratio")
FRONT_COLOUR, OTHER_COLOUR = (230, 120, 20), (120, 140, 170)


@dataclass
class SweepData:
    """What the background job read: the groups, and the chosen group's varied fields and rows."""

    groups: list[str]
    group: str | None
    varied: list[str]
    rows: list  # core.sweep.SweepRow


def read_sweep(run_dirs: list[Path], group: str | None) -> SweepData:
    """The job: the groups among ``run_dirs`` and, for ``group`` (default: the first), its table."""
    from workbench.core.sweep import sweep_groups, sweep_table, varied_fields

    groups = sweep_groups(run_dirs)
    names = sorted(groups)
    chosen = group if group in groups else (names[0] if names else None)
    if chosen is None:
        return SweepData(names, None, [], [])
    dirs = groups[chosen]
    varied = varied_fields(dirs)
    return SweepData(names, chosen, varied, sweep_table(dirs, varied))


def quality_of(row, key: str) -> float | None:
    """The run's number for ``key``: its best evaluation loss or last loss, else the metric's best value."""
    if key in ("best_eval_loss", "last_loss"):
        value = getattr(row, key, None)
    else:
        best = row.best.get(key)
        value = best.value if best is not None else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def trade_off_points(rows, key: str) -> tuple[list[tuple[float, float, str]], list[int]]:
    """(trainable parameters, quality, name) of each run that has both, and the indices (into that list) of the
    Pareto front for the quality ``key`` (turned lower-is-better for the front when higher is better)."""
    from workbench.core.sweep import pareto_front

    lower = next((low for k, _, low in QUALITIES if k == key), True)
    points = [(float(r.trainable_params), q, r.name) for r in rows
              if r.trainable_params and (q := quality_of(r, key)) is not None]
    front = pareto_front([(x, y if lower else -y) for x, y, _ in points])
    return points, front


def trade_off_plot():
    """Quality against trainable parameters, one point per run, the Pareto front drawn as a line."""
    import pyqtgraph as pg

    plot = pg.PlotWidget()
    plot.setLogMode(x=True, y=False)
    plot.setLabel("bottom", "trainable parameters (log)")
    plot.getAxis("left").enableAutoSIPrefix(False)  # shares of 0.07 stay 0.07, not 70 (×0.001)
    plot.addLegend(offset=(-10, -10))
    follow_palette(plot, [plot.getPlotItem()])
    # Both are PlotDataItems, which take linear x and follow the plot's log mode themselves; text labels are
    # placed in view coordinates (log10).
    plot.others = pg.PlotDataItem([], [], pen=None, symbol="o", symbolSize=9, symbolBrush=OTHER_COLOUR, name="run")
    plot.front_line = pg.PlotDataItem([], [], pen=pg.mkPen(FRONT_COLOUR, width=2), symbol="star", symbolSize=16,
                                      symbolBrush=FRONT_COLOUR, name="Pareto front")
    plot.addItem(plot.others)
    plot.addItem(plot.front_line)
    return plot


class SweepView(QWidget):
    loaded = Signal()  # a read finished and the table and plot show it (tests wait on this)

    def __init__(self, parent=None, start_job: Callable | None = None):
        super().__init__(parent)
        self.start_job = start_job or workers.JobRunner(self).start
        self.run_dirs: list[Path] = []
        self.data = SweepData([], None, [], [])
        self._reading = False
        self._again = False

        self.group_box = QComboBox()
        self.group_box.setToolTip("A sweep: the runs that share output.group (workbench sweep and the queue set it).")
        self.quality_box = QComboBox()
        self.quality_box.setToolTip("What the trade-off plot puts on its vertical axis.")
        self.quality_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.refresh_button = QPushButton("Refresh")
        self.message = QLabel("No sweep yet: run one with `workbench sweep RUN.toml --grid lora.r=4,8,16` or queue "
                              "runs that share an output.group.")
        self.message.setWordWrap(True)
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.plot = LazyPlot(trade_off_plot)  # built when first shown or drawn on (lazy_plot.py)
        self.point_labels: list = []  # pyqtgraph TextItems

        top = QHBoxLayout()
        top.addWidget(QLabel("Sweep:"))
        top.addWidget(self.group_box, 1)
        top.addWidget(QLabel("Plot:"))
        top.addWidget(self.quality_box)
        top.addWidget(self.refresh_button)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.table)
        split.addWidget(self.plot)
        split.setSizes([600, 400])
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.message)
        layout.addWidget(split, 1)

        self.group_box.activated.connect(lambda _: self.reload())
        self.quality_box.activated.connect(lambda _: self.draw())
        self.refresh_button.clicked.connect(self.reload)

    # -- reading ----------------------------------------------------------------------------------------
    def set_runs(self, run_dirs: list[Path]) -> None:
        """The run folders under the runs root (from the Runs list); re-read when they changed."""
        if list(run_dirs) != self.run_dirs:
            self.run_dirs = list(run_dirs)
            if self.isVisible():
                self.reload()

    def showEvent(self, event) -> None:
        self.reload()
        super().showEvent(event)

    def reload(self) -> None:
        if self._reading:  # one read at a time; the newest wish is read after it
            self._again = True
            return
        self._reading = True
        group = self.group_box.currentText() or None
        dirs = list(self.run_dirs)
        worker = workers.FunctionWorker(lambda: read_sweep(dirs, group), "Reading the sweep")
        worker.result.connect(self._show)
        worker.failed.connect(lambda message, _details: self.message.setText(message.splitlines()[0]))
        worker.finished.connect(self._read_done)
        self.start_job(worker)

    def _read_done(self) -> None:
        self._reading = False
        if self._again:
            self._again = False
            self.reload()

    # -- showing ----------------------------------------------------------------------------------------
    @property
    def others(self):
        """The runs off the Pareto front (a PlotDataItem)."""
        return self.plot.others

    @property
    def front_line(self):
        """The Pareto front (a PlotDataItem)."""
        return self.plot.front_line

    def _show(self, data: SweepData) -> None:
        self.data = data
        self.group_box.clear()
        self.group_box.addItems(data.groups)
        if data.group:
            self.group_box.setCurrentText(data.group)
        wanted = self.quality_box.currentData()
        self.quality_box.clear()
        for key, label, lower in QUALITIES:
            if any(quality_of(r, key) is not None for r in data.rows):
                self.quality_box.addItem(f"{label} ({'lower' if lower else 'higher'} is better)", key)
        index = self.quality_box.findData(wanted)
        self.quality_box.setCurrentIndex(max(index, 0))
        self._fill_table()
        self.draw()
        if data.group is None:
            self.message.show()
        else:
            self.message.hide()
        self.loaded.emit()

    def _fill_table(self) -> None:
        rows, varied = self.data.rows, self.data.varied
        metrics = [k for k in METRIC_COLUMNS if any(k in r.best for r in rows)]
        headers = ["", "Run", *varied, "Status", "Trainable", "Adapter", "Time", "Last loss", "Best eval loss",
                   *(LABELS.get(k, k) for k in metrics)]
        self.table.clear()
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(headers)
        for col, key in zip(range(len(headers) - len(metrics), len(headers)), metrics):
            self.table.horizontalHeaderItem(col).setToolTip(
                "At the step of the run's best checkpoint (eval.best_metric): what the model you would keep forgot."
                if key.startswith("retention_") else
                "The best evaluation after step 0 (by the metric's direction) @ the step it came from.")
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            cells = ["★" if r.on_front else "", r.name, *(r.values.get(k, "?") for k in varied), r.status,
                     f"{r.trainable_params:,}" if r.trainable_params is not None else "–",
                     format_size(r.adapter_bytes) if r.adapter_bytes is not None else "–",
                     _duration(r.duration_s), _number(r.last_loss),
                     _at(r.best["eval_loss"]) if "eval_loss" in r.best else _number(r.best_eval_loss),
                     *(_at(r.best.get(k)) for k in metrics)]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col == 0:
                    item.setToolTip("On the Pareto front of trainable parameters and loss: no other run has fewer "
                                    "parameters and a lower loss.")
                self.table.setItem(i, col, item)

    def draw(self) -> None:
        import pyqtgraph as pg  # imported by the plot, built below at the latest

        key = self.quality_box.currentData() or "best_eval_loss"
        label = next((lab for k, lab, _ in QUALITIES if k == key), key)
        self.plot.setLabel("left", label)
        points, front = trade_off_points(self.data.rows, key)
        self.others.setData([x for x, _, _ in points], [y for _, y, _ in points])
        ordered = sorted((points[i] for i in front), key=lambda p: p[0])
        self.front_line.setData([x for x, _, _ in ordered], [y for _, y, _ in ordered])
        for text in self.point_labels:
            self.plot.removeItem(text)
        self.point_labels = []
        for x, y, name in points:
            text = pg.TextItem(name, anchor=(0, 1), color=self.palette().text().color())
            text.setPos(math.log10(x), y)
            self.plot.addItem(text)
            self.point_labels.append(text)
        lower = next((low for k, _, low in QUALITIES if k == key), True)
        # The legend where the front is not: the top right when lower is better (the best runs sit low), else below.
        corner = (1, 0) if lower else (1, 1)
        self.plot.getPlotItem().legend.anchor(itemPos=corner, parentPos=corner, offset=(-10, 10 if lower else -10))
        if points:  # room for the names right of the points (view coordinates are log10 on this axis)
            xs = [math.log10(x) for x, _, _ in points]
            # A tick at each run's parameter count: a log axis's own minor ticks crowd into each other here.
            self.plot.getAxis("bottom").setTicks([[(x, f"{10 ** x:,.0f}") for x in sorted(set(xs))]])
            self.plot.setXRange(min(xs) - 0.1, max(xs) + 0.1 + 0.15 * max(max(xs) - min(xs), 1), padding=0)
            ys = [y for _, y, _ in points]
            if max(ys) - min(ys) <= 1e-9 * max(1.0, abs(ys[0])):  # equal qualities: autorange would zoom into rounding
                pad = 0.05 * max(abs(ys[0]), 1e-3)
                self.plot.setYRange(ys[0] - pad, ys[0] + pad, padding=0)
            else:
                self.plot.enableAutoRange(axis="y")
        self.plotted = points  # (x, y, name) as drawn: what tests compare with the runs' numbers
        self.front = [points[i] for i in front]


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def _at(best) -> str:
    """``0.8125 @ 40``: a metric's best value and the step it came from."""
    return "–" if best is None else f"{_number(best.value)} @ {best.step}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"
