"""The Runs tab: every run under the runs root, its plots, an overlay of several runs, their config difference.

The list comes from ``core.runs.list_runs`` (status.json + run.toml per run: a few small reads) and is
refreshed by a 2 s timer, so runs started from the command line or another machine appear on their own.
The selected runs are followed with one ``MetricsTailer`` each, polled every 500 ms: a poll reads only the
bytes appended since the last one, so live plots cost next to nothing on the GUI thread. Resuming,
deleting and revealing go through the core; the long job (resume) runs in a worker started by the window.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QMessageBox, QPushButton, QSplitter, QTableWidget,
    QTableWidgetItem, QTabWidget, QVBoxLayout, QWidget,
)

from workbench.core import runs as core_runs
from workbench.core.events import Evaluation, RunStarted, Step

from .lazy_plot import LazyPlot, evaluation_plots, follow_palette, metrics_plots
from .queue_panel import QueuePanel
from .run_comparison import config_difference, distinct_parts, flatten, legend_labels  # noqa: F401  (old home)
from .sweep_view import SweepView
from .tracker_viewers import TrackerViewers

if TYPE_CHECKING:
    import pyqtgraph as pg

COLUMNS = ("Run", "Status", "Model", "Data", "Steps", "Best eval loss", "Started")
STATUS_COLOURS = {"finished": (46, 157, 78), "running": (30, 100, 220), "stopped": (200, 140, 20),
                  "crashed": (200, 50, 50), "failed": (200, 50, 50), "new": (128, 128, 128)}
OVERLAY_COLOURS = [(30, 100, 220), (230, 120, 20), (46, 157, 78), (200, 50, 50), (140, 80, 190), (20, 160, 170)]
LIST_INTERVAL_MS = 2000
TAIL_INTERVAL_MS = 500


def loss_overlay():
    """The Compare loss plot: one training-loss curve per selected run."""
    import pyqtgraph as pg

    overlay = pg.PlotWidget()
    overlay.setLabel("bottom", "step")
    overlay.setLabel("left", "training loss")
    for axis in ("left", "bottom"):  # "training loss (×0.001)" with ticks 0–450 is no way to read a loss
        overlay.getAxis(axis).enableAutoSIPrefix(False)
    overlay.addLegend(offset=(-10, 10))
    follow_palette(overlay, [overlay.getPlotItem()])
    return overlay


class RunsPanel(QWidget):
    resumeRequested = Signal(str)  # run folder
    exportRequested = Signal(str)  # adapter folder
    inspectRequested = Signal(str)  # adapter folder
    watchRequested = Signal(str)  # run folder of a running run, to follow (and stop) in the Train tab

    def __init__(self, parent=None):
        super().__init__(parent)
        self.root: Path | None = None
        self.summaries: list[core_runs.RunSummary] = []
        self.tailers: dict[Path, core_runs.MetricsTailer] = {}
        self.overlay_curves: dict[Path, pg.PlotDataItem] = {}
        self._loss: dict[Path, tuple[list[float], list[float]]] = {}
        self._busy: set[Path] = set()  # runs being resumed by the window
        self._plotted_step: dict[Path, int] = {}  # the last step read from each followed run's metrics

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.setToolTip("Select one run to see its plots, several (Ctrl/Shift+click) to compare them.")

        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue a stopped or crashed run from its newest complete checkpoint.")
        self.watch_button = QPushButton("Watch in Train tab")
        self.watch_button.setToolTip("Follow a running run (started from the command line, a cluster script, or "
                                     "left running by the window) in the Train tab, where Stop, Pause and Save "
                                     "checkpoint act on it through its run folder.")
        self.reveal_button = QPushButton("Show folder")
        self.export_button = QPushButton("Export / merge…")
        self.inspect_button = QPushButton("Inspect adapter")
        self.delete_button = QPushButton("Delete…")
        self.intruders_button = QPushButton("Reduce intruders…")
        self.intruders_button.setToolTip("Measure what scaling down the adapter's intruder dimensions gives back of the "
                                         "base model's knowledge and costs the task, then save a reduced copy.")
        self.intruder_dialog = None
        self.start_job = None  # how the intruder dialog starts its jobs: the window's, so closing waits for them
        self.root_label = QLabel()
        self.root_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.resume_button.clicked.connect(self._resume)
        self.watch_button.clicked.connect(self._watch)
        self.reveal_button.clicked.connect(self.reveal)
        self.export_button.clicked.connect(lambda: self._with_adapter(self.exportRequested))
        self.inspect_button.clicked.connect(lambda: self._with_adapter(self.inspectRequested))
        self.delete_button.clicked.connect(self.confirm_delete)
        self.intruders_button.clicked.connect(self.open_intruders)
        self.viewers = TrackerViewers(self._one, self)  # "Open in TensorBoard / MLflow UI"

        # Each plot is built when its tab is first shown or given data (lazy_plot.py).
        self.plots = LazyPlot(metrics_plots)
        self.overlay = LazyPlot(loss_overlay)
        self.diff = QTableWidget(0, 1)
        self.diff.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.diff.horizontalHeader().setStretchLastSection(True)
        self.detail = QLabel("Select a run.")
        self.detail.setWordWrap(True)
        self.views = QTabWidget()
        self.views.addTab(self.plots, "Plots")
        self.eval_plots = LazyPlot(evaluation_plots)  # the selected run's task metrics and retention
        self.views.addTab(self.eval_plots, "Evaluation")
        self.views.addTab(self.overlay, "Compare loss")
        self.views.addTab(self.diff, "Configuration difference")
        self.sweep = SweepView()  # a group of runs: table and rank trade-off plot
        self.views.addTab(self.sweep, "Sweep")
        self.queue = QueuePanel()  # the queue of runs under this runs folder
        self.views.addTab(self.queue, "Queue")

        buttons = QHBoxLayout()
        for b in (self.resume_button, self.watch_button, self.reveal_button, self.export_button, self.inspect_button,
                  self.intruders_button, self.viewers.button, self.delete_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.root_label)
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addLayout(buttons)
        top_layout.addWidget(self.table)
        bottom = QWidget()
        bottom_layout = QVBoxLayout(bottom)
        bottom_layout.setContentsMargins(0, 0, 0, 0)
        bottom_layout.addWidget(self.detail)
        bottom_layout.addWidget(self.views, 1)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(bottom)
        split.setSizes([260, 500])
        layout = QVBoxLayout(self)
        layout.addWidget(split)

        self._list_timer = QTimer(self, interval=LIST_INTERVAL_MS)
        self._list_timer.timeout.connect(self.refresh)
        self._tail_timer = QTimer(self, interval=TAIL_INTERVAL_MS)
        self._tail_timer.timeout.connect(self.poll)
        self._update_buttons()

    # -- list ---------------------------------------------------------------------------------------------
    def set_root(self, root: str | Path) -> None:
        root = Path(root).expanduser().resolve()
        if root != self.root:
            self.root = root
            self.root_label.setText(f"Runs folder: {root}")
            self.queue.set_root(root)
            self.refresh()

    def start_watching(self) -> None:
        self._list_timer.start()
        self._tail_timer.start()

    def showEvent(self, event) -> None:
        self.start_watching()
        self.refresh()
        super().showEvent(event)

    def hideEvent(self, event) -> None:  # nothing to watch while the tab is hidden
        self._list_timer.stop()
        self._tail_timer.stop()
        super().hideEvent(event)

    def refresh(self) -> None:
        if self.root is None:
            return
        try:
            summaries = core_runs.list_runs(self.root)
        except Exception as exc:  # noqa: BLE001  (a bad root: say so in the label, keep the window going)
            self.root_label.setText(f"Runs folder: {self.root} — {exc}")
            return
        selected = set(self.selected_paths())
        self.summaries = summaries
        self.sweep.set_runs([s.path for s in summaries])
        self.table.blockSignals(True)
        self.table.setRowCount(len(summaries))
        for row, s in enumerate(summaries):
            step = max(s.step, self._plotted_step.get(s.path, 0))  # status.json is written less often
            steps = f"{step}/{s.total_steps}" if s.total_steps else str(step)
            best = f"{s.best_eval_loss:.4f}" if s.best_eval_loss is not None else "–"
            started = (s.started_at or s.created_at).strftime("%Y-%m-%d %H:%M")
            data = ", ".join(Path(f).name for f in s.data_files)
            for col, text in enumerate((s.name, s.status.value, core_runs.model_short_name(s.model_source) if s.model_source else "",
                                        data, steps, best, started)):
                item = QTableWidgetItem(text)
                if col == 1:
                    item.setForeground(QColor(*STATUS_COLOURS.get(s.status.value, (0, 0, 0))))
                    item.setToolTip(s.status_detail)
                elif col == 2:
                    item.setToolTip(s.model_source)
                elif col == 3:
                    item.setToolTip("\n".join(s.data_files))
                self.table.setItem(row, col, item)
        self.table.clearSelection()
        for row, s in enumerate(summaries):
            if s.path in selected:
                self.table.selectRow(row) if len(selected) == 1 else self._add_row_to_selection(row)
        self.table.blockSignals(False)
        if set(self.selected_paths()) != selected:
            self._selection_changed()
        self._update_buttons()

    def _add_row_to_selection(self, row: int) -> None:
        from PySide6.QtCore import QItemSelectionModel

        index = self.table.model().index(row, 0)
        self.table.selectionModel().select(index, QItemSelectionModel.SelectionFlag.Select
                                           | QItemSelectionModel.SelectionFlag.Rows)

    def row_of(self, name: str) -> int:
        return next((i for i, s in enumerate(self.summaries) if s.name == name), -1)

    def status_of(self, name: str) -> str | None:
        row = self.row_of(name)
        return self.summaries[row].status.value if row >= 0 else None

    def select(self, *names: str) -> None:
        self.table.clearSelection()
        for name in names:
            self._add_row_to_selection(self.row_of(name))

    def selected(self) -> list[core_runs.RunSummary]:
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        return [self.summaries[r] for r in rows if r < len(self.summaries)]

    def selected_paths(self) -> list[Path]:
        return [s.path for s in self.selected()]

    def _update_buttons(self) -> None:
        chosen = self.selected()
        one = chosen[0] if len(chosen) == 1 else None
        self.resume_button.setEnabled(one is not None and one.status.value in ("stopped", "crashed")
                                      and one.path not in self._busy)
        self.watch_button.setEnabled(one is not None and one.status.value == "running" and one.path not in self._busy)
        self.reveal_button.setEnabled(one is not None)
        has_adapter = one is not None and (one.path / core_runs.ADAPTER_DIR / "adapter_config.json").is_file()
        self.export_button.setEnabled(has_adapter)
        self.inspect_button.setEnabled(has_adapter)
        self.intruders_button.setEnabled(has_adapter and one.status.value != "running")
        self.delete_button.setEnabled(bool(chosen) and all(s.status.value != "running" for s in chosen))
        self.viewers.update(one.path if one is not None else None)

    # -- plots --------------------------------------------------------------------------------------------
    def _selection_changed(self) -> None:
        import pyqtgraph as pg  # the plots below are built by now

        chosen = self.selected()
        paths = [s.path for s in chosen]
        for path in list(self.tailers):
            if path not in paths:
                del self.tailers[path]
                self._loss.pop(path, None)
                self.overlay.removeItem(self.overlay_curves.pop(path))
        if self.overlay.plotItem.legend is not None:
            self.overlay.plotItem.legend.clear()
        configs = self._configs(chosen)
        labels = dict(zip(configs, legend_labels(list(configs), config_difference(configs) if len(configs) > 1
                                                   else [])))
        newly_followed = set()
        for i, s in enumerate(chosen):
            if s.path not in self.tailers:
                self.tailers[s.path] = core_runs.MetricsTailer(s.path)
                self._loss[s.path] = ([], [])
                self.overlay_curves[s.path] = self.overlay.plot([], [])
                newly_followed.add(s.path)
            curve = self.overlay_curves[s.path]
            curve.setPen(pg.mkPen(OVERLAY_COLOURS[i % len(OVERLAY_COLOURS)], width=2))
            self.overlay.plotItem.legend.addItem(curve, labels.get(s.name, s.name))
        self.plots.reset()
        self.eval_plots.reset()
        self._update_buttons()
        self._show_detail(chosen)
        self._show_difference(configs)
        if len(chosen) > 1:
            self.views.setCurrentWidget(self.overlay)
        elif len(chosen) == 1:
            self.views.setCurrentWidget(self.plots)
            # The single-run plots replay the whole file: a run already followed (kept from a comparison) is
            # followed afresh; a newly selected one has just got a fresh tailer above.
            path = chosen[0].path
            if path not in newly_followed:
                self.tailers[path] = core_runs.MetricsTailer(path)
                self._loss[path] = ([], [])
        self.poll()

    def _show_detail(self, chosen: list[core_runs.RunSummary]) -> None:
        if not chosen:
            self.detail.setText("Select a run to see its plots; select several to compare them.")
        elif len(chosen) == 1:
            s = chosen[0]
            detail = f" ({s.status_detail})" if s.status_detail else ""
            self.detail.setText(f"<b>{s.name}</b> — {s.status.value}{detail} — {s.model_source} — {s.path}")
        else:
            self.detail.setText(f"Comparing {len(chosen)} runs: " + ", ".join(s.name for s in chosen))

    @staticmethod
    def _configs(chosen: list[core_runs.RunSummary]) -> dict[str, dict]:
        configs = {}
        for s in chosen:
            try:
                configs[s.name] = core_runs.load_config(s.path).to_dict()
            except Exception:  # noqa: BLE001  (an unreadable run file: compare the others)
                continue
        return configs

    def _show_difference(self, configs: dict[str, dict]) -> None:
        rows = config_difference(configs) if len(configs) > 1 else []
        self.diff.clear()
        self.diff.setColumnCount(len(configs) + 1)
        self.diff.setHorizontalHeaderLabels(["Setting", *configs])
        self.diff.setRowCount(max(len(rows), 1))
        if not rows:
            text = "Select two or more runs to see how their settings differ." if len(configs) < 2 else \
                "These runs have the same settings."
            self.diff.setItem(0, 0, QTableWidgetItem(text))
        for r, (key, values) in enumerate(rows):
            self.diff.setItem(r, 0, QTableWidgetItem(key))
            for c, v in enumerate(values):
                self.diff.setItem(r, c + 1, QTableWidgetItem(str(v)))
        self.diff.resizeColumnsToContents()

    def poll(self) -> None:
        """Read what each followed run appended since the last poll and redraw what changed."""
        single = len(self.tailers) == 1
        changed = False
        last_step: dict[Path, Step] = {}
        for path, tailer in self.tailers.items():
            events = tailer.poll()
            if tailer.restarted:
                self._loss[path] = ([], [])
                self._plotted_step.pop(path, None)  # cut back by a resume: the steps it had are gone
                if single:
                    self.plots.reset()
                    self.eval_plots.reset()
            if not events:
                continue
            changed = True
            xs, ys = self._loss[path]
            for e in events:
                if isinstance(e, Step):
                    xs.append(e.step)
                    ys.append(e.loss)
                    last_step[path] = e
                    if single:
                        self.plots.set_total_steps(e.total_steps)
                        self.plots.add_step(e)
                elif isinstance(e, Evaluation) and single:
                    self.plots.add("eval_loss", e.step, e.eval_loss)
                    self.eval_plots.add_evaluation(e.step, e.metrics)
                elif isinstance(e, RunStarted) and single:
                    self.plots.set_total_steps(e.total_steps)
                    self.eval_plots.set_run_config(e.config)
            self.overlay_curves[path].setData(xs, ys)
        if changed and single:
            self.plots.redraw()
        for path, e in last_step.items():
            self._show_steps(path, e)

    def _show_steps(self, path: Path, e: Step) -> None:
        """The Steps column from the step just plotted: the list is re-read every 2 s only, and lagged the plot."""
        self._plotted_step[path] = e.step
        row = next((i for i, s in enumerate(self.summaries) if s.path == path), -1)
        item = self.table.item(row, COLUMNS.index("Steps")) if row >= 0 else None
        if item is not None:
            item.setText(f"{e.step}/{e.total_steps}" if e.total_steps else str(e.step))

    def curve_points(self, path: Path) -> int:
        return len(self._loss.get(Path(path), ([], []))[0])

    # -- actions ------------------------------------------------------------------------------------------
    def _one(self) -> core_runs.RunSummary | None:
        chosen = self.selected()
        return chosen[0] if len(chosen) == 1 else None

    def _resume(self) -> None:
        one = self._one()
        if one is not None:
            self.resumeRequested.emit(str(one.path))

    def _watch(self) -> None:
        one = self._one()
        if one is not None:
            self.watchRequested.emit(str(one.path))

    def set_busy(self, path: str | Path, busy: bool) -> None:
        (self._busy.add if busy else self._busy.discard)(Path(path))
        self._update_buttons()

    def clear_busy(self) -> None:
        self._busy.clear()
        self._update_buttons()

    def _with_adapter(self, signal) -> None:
        one = self._one()
        if one is not None:
            signal.emit(str(one.path / core_runs.ADAPTER_DIR))

    def open_intruders(self):
        """The intruder-dimension trade-off of the selected run (a dialog that measures, then saves on request)."""
        from .intruder_dialog import IntruderDialog

        one = self._one()
        if one is None:
            return None
        self.intruder_dialog = IntruderDialog(one.path, self, start_job=self.start_job)
        self.intruder_dialog.open()
        self.intruder_dialog.start()
        return self.intruder_dialog

    def reveal(self) -> None:
        one = self._one()
        if one is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(one.path)))

    def confirm_delete(self) -> None:
        chosen = self.selected()
        if not chosen:
            return
        names = "\n".join(s.name for s in chosen)
        box = QMessageBox(QMessageBox.Icon.Question, "Delete runs",
                          f"Delete {len(chosen)} run folder(s) with their checkpoints and adapters?\n\n{names}",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, self)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        paths = [s.path for s in chosen]
        box.buttonClicked.connect(
            lambda b: self.delete(paths) if box.standardButton(b) == QMessageBox.StandardButton.Yes else None)
        self.delete_box = box
        box.open()  # not exec(): the event loop (and a running job) goes on while the question is open

    def delete(self, paths: list[Path]) -> None:
        problems = []
        for path in paths:
            try:
                core_runs.delete_run(path)
            except Exception as exc:  # noqa: BLE001
                problems.append(str(getattr(exc, "message", exc)))
        self.table.clearSelection()
        self.refresh()
        if problems:
            QMessageBox.warning(self, "Delete runs", "\n".join(problems))
