"""Training in a separate process, watched and driven through its run folder: the window's side.

What such a run is — how it starts, how it is followed through its folder, how its end is judged, and why a
``subprocess.Popen`` in a session of its own rather than a ``QProcess`` (a ``QProcess`` kills its process when it
is destroyed, so a run could not outlive the window) — is ``core.external_run``'s (``RunWatch``, ``launch_run``).
Here a ``QTimer`` polls the watch (``ExternalRun``: its events and its end as signals), and
``ExternalRunController`` connects it to the Train tab, the Runs tab, the failure message and the question asked
on closing. Stop / Pause / Resume / Save-checkpoint-now go through ``runs.FolderControl``. Nothing here blocks
the GUI thread.

A run folder that is running elsewhere (a run left running by an earlier window, a command-line or cluster
run) can be *attached* the same way, without a process: the Runs tab's "Watch in Train tab" does that.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QMessageBox

from workbench.core.config import RunConfig
from workbench.core.errors import OutputError
from workbench.core.external_run import RunOutcome, RunWatch, launch_run

from .process_switches import lower_process_priority

POLL_INTERVAL_MS = 200  # metrics and log: a few small reads; the panel batches repaints anyway
LOG_LINES_SHOWN = 20


# ------------------------------------------------------------------------------------------- one watched run


class ExternalRun(QObject):
    """One run in another process (a ``RunWatch`` polled by a timer): its events as signals, its end as
    ``ended(RunOutcome)``."""

    event = Signal(object)
    ended = Signal(object)  # RunOutcome

    def __init__(self, run_dir: Path, process: subprocess.Popen | None = None, log_path: Path | None = None,
                 scratch: Path | None = None, created_dir: bool = False, parent: QObject | None = None, *,
                 watch: RunWatch | None = None):
        super().__init__(parent)
        self.watch = watch or RunWatch(run_dir, process, log_path, scratch, created_dir)
        self.run_dir = self.watch.run_dir
        self.control = self.watch.control
        self._timer = QTimer(self, interval=POLL_INTERVAL_MS)
        self._timer.timeout.connect(self.poll)

    @property
    def process(self) -> subprocess.Popen | None:
        return self.watch.process

    def start(self) -> None:
        self._timer.start()
        self.poll()

    def poll(self) -> None:
        events, outcome = self.watch.poll()
        for event in events:
            self.event.emit(event)
        if outcome is not None:
            self._timer.stop()
            self.ended.emit(outcome)

    def detach(self) -> None:
        """Stop watching; the process (if ours) keeps running on its own."""
        self._timer.stop()
        self.watch.detach()


# ------------------------------------------------------------------------------------------- the window's side


class ExternalRunController(QObject):
    """Connects a separate-process run to the window: the Train tab's plots and buttons, the Runs tab, the
    failure message and the question asked on closing. One run at a time (the Train tab shows one)."""

    started = Signal(str)  # run folder
    ended = Signal(object)  # RunOutcome

    def __init__(self, window):
        super().__init__(window)
        self.run: ExternalRun | None = None
        self.close_box: QMessageBox | None = None
        self._close_when_ended = False
        window.runs.watchRequested.connect(self.attach)

    @property
    def window(self):
        # The window is this object's Qt parent; no Python reference to it is kept, so the window and this
        # controller form no reference cycle. (A cycle of Qt wrappers is freed by the cyclic garbage collector,
        # on whichever thread it happens to run, and a window's widgets torn down off the GUI thread can
        # deadlock against the GUI thread.)
        return self.parent()

    # -- starting ---------------------------------------------------------------------------------------
    def start(self, config: RunConfig, processes: int = 1) -> ExternalRun | None:
        """Start ``workbench train`` for ``config`` on ``processes`` local processes and watch it."""
        w = self.window
        try:
            watch, command = launch_run(config, processes)
        except OutputError as exc:
            w.show_error("Cannot start training", exc.message + (f"\n\n{exc.hint}" if exc.hint else ""))
            return None
        except OSError as exc:
            w.show_error("Cannot start training", f"The training process could not be started: {exc}")
            return None
        lower_process_priority(watch.process.pid)
        run = ExternalRun(watch.run_dir, parent=self, watch=watch)
        log_path = watch.log.path if watch.log else None
        self._begin(run, f"Started a separate process (pid {watch.process.pid}): {shlex.join(command)}\n"
                         f"Run folder: {watch.run_dir}\nIts output goes to {log_path}")
        return run

    def attach(self, run_dir: str) -> ExternalRun | None:
        """Follow a run that is already running elsewhere in the Train tab, with its buttons."""
        w = self.window
        if w.training.running:
            w.show_error("Watch a run", "A run is already shown in the Train tab; stop it or let it end first.")
            return None
        run = ExternalRun(Path(run_dir), parent=self)
        self._begin(run, f"Watching the run in {run_dir} (started elsewhere); Stop, Pause and Save checkpoint "
                         "act on it through its run folder.")
        return run

    def _begin(self, run: ExternalRun, note: str) -> None:
        w = self.window
        self.run = run
        run.event.connect(w.training.handle)
        run.ended.connect(self._ended)
        w._show_training_tab(run.control)
        w.training.append_log(note)
        w.runs.set_busy(run.run_dir, True)
        run.start()
        w.runs.refresh()
        self.started.emit(str(run.run_dir))

    # -- ending -----------------------------------------------------------------------------------------
    def _ended(self, outcome: RunOutcome) -> None:
        w = self.window
        t = w.training
        if self.run is not None:
            self.run.deleteLater()
        self.run = None
        t.flush()
        if not outcome.ok:
            shown = "\n".join(outcome.log_tail[-LOG_LINES_SHOWN:])
            message = outcome.reason
            if shown:
                message += f"\n\nLast lines of the process's output:\n{shown}"
            if outcome.log_path is not None:
                message += f"\n\nFull output: {outcome.log_path}"
            t.show_failure(outcome.reason)
            if outcome.status == "crashed":
                t.status_label.setText(f"Run crashed: {outcome.reason.splitlines()[0]}")
            if shown:
                t.append_log("Last lines of the process's output:\n" + shown)
            w.show_error("Training crashed" if outcome.status == "crashed" else "Training failed", message,
                         "\n".join(outcome.log_tail))
        else:
            t.append_log(f"Run folder: {outcome.run_dir}")
        t.end_run()
        w.runs.set_busy(outcome.run_dir, False)
        w.runs.refresh()
        self.ended.emit(outcome)
        if self._close_when_ended:
            w.close()

    # -- closing ----------------------------------------------------------------------------------------
    def may_close(self) -> bool:
        """Called by the window's close: True if it may close now; otherwise asks (without blocking) whether
        to stop the run or leave it running, and closes the window itself once that is done."""
        if self.run is None:
            return True
        if self.close_box is not None:
            self.close_box.raise_()
            return False
        box = QMessageBox(QMessageBox.Icon.Question, "A run is training",
                          f"The run {self.run.run_dir.name} is training in a separate process.\n\n"
                          "Stop it (the adapter and a checkpoint are saved), or leave it running? A run left "
                          "running keeps going without the window; it appears in the Runs tab, where it can be "
                          "watched and stopped again later.", parent=self.window)
        self.stop_button = box.addButton("Stop the run", QMessageBox.ButtonRole.AcceptRole)
        self.leave_button = box.addButton("Leave it running", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(self.stop_button)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.buttonClicked.connect(self._close_choice)
        self.close_box = box
        box.open()
        return False

    def _close_choice(self, button) -> None:
        self.close_box = None
        if button is self.stop_button:
            if self.run is None:  # it ended while the question was open
                self.window.close()
                return
            self._close_when_ended = True
            self.window.training.request_stop()
            self.window.statusBar().showMessage("Stopping the run before closing…")
        elif button is self.leave_button:
            self.leave_running()
            self.window.close()

    def leave_running(self) -> None:
        """Stop watching the run; it goes on in its own process."""
        run, self.run = self.run, None
        if run is None:
            return
        run.detach()
        self.window.training.append_log(f"Left the run in {run.run_dir} running on its own.")
        self.window.training.end_run()
        self.window.runs.set_busy(run.run_dir, False)
