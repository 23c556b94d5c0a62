"""The Runs tab's queue: the runs waiting under this runs folder, their order and state, and a runner.

The queue is ``core.run_queue``'s (``<runs_root>/.queue``), the same one ``workbench queue`` shows and runs, so
entries added from the command line appear here and the other way round; a 2 s timer re-reads it while the tab is
shown (a few small JSON files). "Queue these settings" adds the window's current run file, "Queue sweep" adds one run
per value of a grid (``lora.r=2,8,32``), Up / Down / Remove act on pending entries, and Run queue starts the runner
(``QueueWorker``, each run its own process) until the queue is empty or Stop is pressed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView, QCheckBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPushButton, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

from workbench.core import run_queue

from .. import workers

COLUMNS = ("#", "Run", "Sweep", "Status", "Run folder", "Message")
STATUS_COLOURS = {"finished": (46, 157, 78), "running": (30, 100, 220), "stopped": (200, 140, 20),
                  "failed": (200, 50, 50), "pending": (128, 128, 128)}
REFRESH_MS = 2000


class QueuePanel(QWidget):
    changed = Signal()  # the queue as shown was re-read (tests wait on this)
    runnerEnded = Signal()

    def __init__(self, parent=None, start_job: Callable | None = None):
        super().__init__(parent)
        self.start_job = start_job or workers.JobRunner(self).start
        self.config_source: Callable | None = None  # the window's current RunConfig, set by the window
        self.root: Path | None = None
        self.entries: list[run_queue.QueueEntry] = []
        self.runner = None  # the QueueWorker while the queue runs

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.add_button = QPushButton("Queue these settings")
        self.add_button.setToolTip("Add a run with the window's current settings to the end of the queue.")
        self.grid_edit = QLineEdit(placeholderText="lora.r=2,8,32")
        self.grid_edit.setToolTip("A sweep: field=value1,value2,… — one run per value, all in one group. Separate "
                                  "several fields with spaces for every combination.")
        self.sweep_button = QPushButton("Queue sweep")
        self.up_button, self.down_button = QPushButton("Up"), QPushButton("Down")
        self.remove_button = QPushButton("Remove")
        self.run_button = QPushButton("Run queue")
        self.run_button.setToolTip("Run the pending entries one after another, each as its own process.")
        self.continue_box = QCheckBox("Continue after a failed run", checked=True)
        self.stop_button = QPushButton("Stop after this step")
        self.stop_button.setToolTip("Stop the running entry after its step (it saves its adapter and a checkpoint) "
                                    "and leave the rest pending.")
        self.status = QLabel()
        self.status.setWordWrap(True)

        adding = QHBoxLayout()
        adding.addWidget(self.add_button)
        adding.addWidget(self.grid_edit, 1)
        adding.addWidget(self.sweep_button)
        editing = QHBoxLayout()
        for w in (self.up_button, self.down_button, self.remove_button):
            editing.addWidget(w)
        editing.addStretch(1)
        for w in (self.continue_box, self.run_button, self.stop_button):
            editing.addWidget(w)
        layout = QVBoxLayout(self)
        layout.addLayout(adding)
        layout.addWidget(self.table, 1)
        layout.addLayout(editing)
        layout.addWidget(self.status)

        self.add_button.clicked.connect(self.add_current)
        self.sweep_button.clicked.connect(self.add_sweep)
        self.grid_edit.returnPressed.connect(self.add_sweep)
        self.up_button.clicked.connect(lambda: self.move(-1))
        self.down_button.clicked.connect(lambda: self.move(+1))
        self.remove_button.clicked.connect(self.remove)
        self.run_button.clicked.connect(self.run)
        self.stop_button.clicked.connect(self.stop)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self._timer = QTimer(self, interval=REFRESH_MS)
        self._timer.timeout.connect(self.refresh)
        self._update_buttons()

    def set_root(self, root: str | Path) -> None:
        self.root = Path(root)
        self.refresh()

    def showEvent(self, event) -> None:
        self._timer.start()
        self.refresh()
        super().showEvent(event)

    def hideEvent(self, event) -> None:
        if self.runner is None:
            self._timer.stop()
        super().hideEvent(event)

    # -- showing ----------------------------------------------------------------------------------------
    def refresh(self) -> None:
        if self.root is None:
            return
        selected = self.selected()
        self.entries = run_queue.queue_entries(self.root)
        self.table.setRowCount(len(self.entries))
        for row, e in enumerate(self.entries):
            for col, text in enumerate((e.id, e.name, e.group or "", e.status, e.run_dir or "", e.message)):
                item = QTableWidgetItem(text)
                if col == 3:
                    item.setForeground(QColor(*STATUS_COLOURS.get(e.status, (0, 0, 0))))
                elif col == 5:
                    item.setToolTip(e.message)
                self.table.setItem(row, col, item)
        if selected is not None:
            self.select(selected.number)
        self._update_buttons()
        self.changed.emit()

    def select(self, number: int) -> None:
        row = next((i for i, e in enumerate(self.entries) if e.number == number), -1)
        if row >= 0:
            self.table.selectRow(row)

    def selected(self) -> run_queue.QueueEntry | None:
        rows = self.table.selectionModel().selectedRows()
        return self.entries[rows[0].row()] if rows and rows[0].row() < len(self.entries) else None

    def _update_buttons(self) -> None:
        entry = self.selected()
        pending = entry is not None and entry.status == run_queue.PENDING
        self.up_button.setEnabled(pending)
        self.down_button.setEnabled(pending)
        self.remove_button.setEnabled(entry is not None and entry.status != run_queue.RUNNING)
        has_pending = any(e.status == run_queue.PENDING for e in self.entries)
        self.run_button.setEnabled(self.runner is None and has_pending)
        self.stop_button.setEnabled(self.runner is not None)
        self.add_button.setEnabled(self.config_source is not None)
        self.sweep_button.setEnabled(self.config_source is not None)

    def _guarded(self, action: Callable[[], str]) -> None:
        """Run a queue edit; its outcome or its one-line problem goes into the status line."""
        from workbench.core.errors import WorkbenchError

        try:
            self.status.setText(action())
        except WorkbenchError as exc:
            # A ConfigError lists its problems on the lines after its heading: all of them, on one line.
            text = " ".join(line.strip() for line in exc.message.splitlines() if line.strip())
            self.status.setText(text + (f" — {exc.hint}" if exc.hint else ""))
        self.refresh()

    # -- editing ----------------------------------------------------------------------------------------
    def add_current(self) -> None:
        if self.config_source is None:
            return
        self._guarded(lambda: f"Queued {run_queue.add_to_queue(self.config_source()).name}.")

    def add_sweep(self) -> None:
        if self.config_source is None:
            return

        def add() -> str:
            from workbench.core.sweep import expand, parse_axes

            points = expand(self.config_source(), parse_axes(self.grid_edit.text().split()))
            for point in points:
                run_queue.add_to_queue(point.config, name=point.name)
            return f"Queued {len(points)} runs of sweep {points[0].config.output.group}."

        self._guarded(add)

    def move(self, offset: int) -> None:
        entry = self.selected()
        if entry is None or self.root is None:
            return
        root = self.root
        self._guarded(lambda: (run_queue.move_entry(root, entry.number, offset), "")[1])
        self.select(entry.number)

    def remove(self) -> None:
        entry = self.selected()
        if entry is not None and self.root is not None:
            root = self.root
            self._guarded(lambda: f"Removed {run_queue.remove_entry(root, entry.number).name} (its run folder is kept).")

    # -- running ----------------------------------------------------------------------------------------
    def run(self) -> None:
        from ..workers.queue import QueueWorker

        if self.runner is not None or self.root is None:
            return
        self.runner = QueueWorker(self.root, continue_on_error=self.continue_box.isChecked())
        self.runner.entry.connect(self._entry_reported)
        self.runner.failed.connect(lambda message, _details: self.status.setText(message.splitlines()[0]))
        self.runner.result.connect(self._ran)
        self.runner.finished.connect(self._runner_done)
        self.start_job(self.runner)
        self._timer.start()
        self.status.setText("Running the queue…")
        self._update_buttons()

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.request_stop()
            self.stop_button.setEnabled(False)
            self.status.setText("Stopping the running entry after its step; the rest stays pending…")

    def _entry_reported(self, entry) -> None:
        text = f"{entry.name}: {entry.status}" + (f" — {entry.message}" if entry.message else "")
        self.status.setText(text)
        self.refresh()

    def _ran(self, ran: list) -> None:
        failed = sum(e.status == run_queue.FAILED for e in ran)
        self.status.setText(f"{len(ran)} run(s): {len(ran) - failed} ended well, {failed} failed." if ran
                            else "Nothing was pending.")

    def _runner_done(self) -> None:
        self.runner = None
        self.refresh()
        self.runnerEnded.emit()
