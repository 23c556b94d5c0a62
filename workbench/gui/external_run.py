"""Training in a separate process, watched and driven through its run folder.

The window starts ``workbench train RUN.toml --run-dir DIR`` (under ``torchrun --standalone
--nproc_per_node N`` for N > 1; ``core.selfcmd`` spells both for a Python install and for the frozen bundle) and from then on knows the run only
through its folder, exactly as it would know a run started from a terminal or on a cluster:

* the folder is chosen — and claimed, empty, with ``mkdir`` — by the window before the process starts
  (``claim_run_dir``: ``output.run_dir``, else a new folder under ``output.runs_root``, named as the engine
  would name it) and passed with ``--run-dir``; the run file goes to a private temporary folder, because
  the engine only accepts an empty run folder and writes its own ``run.toml`` there;
* progress comes from ``metrics.jsonl`` through a ``runs.MetricsTailer``: the JSON lines become the same
  ``Event`` objects the in-app worker emits, so the Train tab draws both kinds of run the same way;
* Stop / Pause / Resume / Save-checkpoint-now go through ``runs.send_control`` (``FolderControl``);
* the process's output (stdout and stderr) goes to a log file, not a pipe, so the process never depends on
  the window reading it — the window can close and leave the run going — and the window keeps its last
  lines in a ring buffer for the message shown when the process fails or dies.

``subprocess.Popen`` rather than ``QProcess``: a ``QProcess`` kills its process when it is destroyed, so a
run could not outlive the window; a ``Popen`` in a session of its own can, and its exit status is read with
a non-blocking ``poll()`` from the same timer that reads the metrics. Nothing here blocks the GUI thread.

A run folder that is running elsewhere (a run left running by an earlier window, a command-line or cluster
run) can be *attached* the same way, without a process: the Runs tab's "Watch in Train tab" does that, and
the run's liveness then comes from ``runs.run_status`` (the recorder's heartbeat and process id).
"""

from __future__ import annotations

import collections
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QMessageBox

from workbench.core import runs as core_runs
from workbench.core.config import RunConfig
from workbench.core.errors import OutputError
from workbench.core.events import Failed, Finished, RunStarted
from workbench.core.exitcodes import EXIT_STOPPED
from workbench.core.selfcmd import local_torchrun_command, workbench_command

POLL_INTERVAL_MS = 200  # metrics and log: a few small reads; the panel batches repaints anyway
STATUS_INTERVAL_S = 2.0  # liveness of an attached run (reads status.json, asks the OS about the process)
LOG_LINES_KEPT = 200
LOG_LINES_SHOWN = 20


# ------------------------------------------------------------------------------------------- plain helpers


def claim_run_dir(config: RunConfig) -> tuple[Path, bool]:
    """The absolute run folder a new run of ``config`` will use, created empty (the engine's own choice,
    ``core.runs.claim_run_dir``, with ``~`` expanded); and whether it was created here, so that it can be removed
    again if the process fails before the engine writes into it."""
    out = config.output
    expanded = config.copy_with(output={
        "run_dir": str(Path(out.run_dir).expanduser().absolute()) if out.run_dir else None,
        "runs_root": str(Path(out.runs_root).expanduser().absolute())})
    path, created = core_runs.claim_run_dir(expanded)
    return path, path in created


def launch_command(run_file: Path, run_dir: Path, processes: int) -> list[str]:
    """The command line of a separate-process run: ``workbench train``, under torchrun for more than one
    process (``--standalone``: a rendezvous on a free local port, so two such runs can share the machine)."""
    args = ("train", str(run_file), "--run-dir", str(run_dir), "--quiet")
    return local_torchrun_command(processes, *args) if processes > 1 else workbench_command(*args)


class FolderControl:
    """``RunControl``'s request methods, delivered to another process through the run folder's control file.

    The engine's control-file watcher resets the file when it starts, so a request made before the run's
    recorder exists (while the process still imports torch) is held back and sent once ``status.json``
    shows that the recorder — and its watcher — is there.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._held: list[str] = []

    def request_stop(self) -> None:
        self._send("stop")

    def request_pause(self) -> None:
        self._send("pause")

    def request_resume(self) -> None:
        self._send("resume")

    def request_checkpoint(self) -> None:
        self._send("checkpoint")

    def _send(self, command: str) -> None:
        self._held.append(command)
        self.flush()

    def flush(self) -> None:
        if self._held and (self.run_dir / core_runs.STATUS_FILE).is_file():
            held, self._held = self._held, []
            for command in held:
                core_runs.send_control(self.run_dir, command)


class LogTail:
    """The last lines a process wrote to its log file, read incrementally (tqdm's ``\\r`` rewrites keep
    only their last state)."""

    def __init__(self, path: Path, keep: int = LOG_LINES_KEPT):
        self.path = path
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._offset = 0
        self._partial = ""

    def read(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return
        if not data:
            return
        self._offset += len(data)
        text = self._partial + data.decode("utf-8", errors="replace")
        *complete, self._partial = text.split("\n")
        for line in complete:
            self._add(line)

    def _add(self, line: str) -> None:
        pieces = [p for p in line.split("\r") if p.strip()]
        if pieces:
            self.lines.append(pieces[-1].rstrip())

    def finish(self) -> None:
        self.read()
        if self._partial:
            self._add(self._partial)
            self._partial = ""


@dataclass
class RunOutcome:
    """How a watched run ended. ``status``: finished, stopped, failed or crashed (as the Runs tab says it)."""

    run_dir: Path
    status: str
    reason: str = ""  # one line or two: why it failed or crashed
    exit_code: int | None = None  # None: not our process (an attached run)
    log_tail: list[str] = field(default_factory=list)
    log_path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("finished", "stopped")

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / core_runs.ADAPTER_DIR


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed ({name})"
    return f"ended with exit code {code}"


# ------------------------------------------------------------------------------------------- one watched run


class ExternalRun(QObject):
    """One run in another process: its events as signals, its end as ``ended(RunOutcome)``.

    With ``process`` (ours), the run ends when the process does; without (attached), when the run reports
    its outcome in ``metrics.jsonl`` or ``run_status`` stops calling it running.
    """

    event = Signal(object)
    ended = Signal(object)  # RunOutcome

    def __init__(self, run_dir: Path, process: subprocess.Popen | None = None, log_path: Path | None = None,
                 scratch: Path | None = None, created_dir: bool = False, parent: QObject | None = None):
        super().__init__(parent)
        self.run_dir = Path(run_dir)
        self.process = process
        self.log = LogTail(log_path) if log_path else None
        self.scratch = scratch  # temporary folder with the run file and the log; removed when the run ends here
        self.created_dir = created_dir
        self.control = FolderControl(self.run_dir)
        self._outcome_event: Finished | Failed | None = None
        self._tailer = core_runs.MetricsTailer(self.run_dir)
        self._status_checked = time.monotonic()
        self._timer = QTimer(self, interval=POLL_INTERVAL_MS)
        self._timer.timeout.connect(self.poll)

    def start(self) -> None:
        self._timer.start()
        self.poll()

    def poll(self) -> None:
        self._read()
        if self.process is not None:
            code = self.process.poll()
            if code is not None:
                self._end(code)
            return
        if self._outcome_event is not None:
            self._end(None)
        elif time.monotonic() - self._status_checked >= STATUS_INTERVAL_S:
            self._status_checked = time.monotonic()
            if core_runs.run_status(self.run_dir) is not core_runs.RunStatus.RUNNING:
                self._read()  # its last lines, written just before it ended
                self._end(None)

    def _read(self) -> None:
        if self.log is not None:
            self.log.read()
        for event in self._tailer.poll():
            if isinstance(event, RunStarted):
                self._outcome_event = None  # a new session (a resumed run)
            elif isinstance(event, (Finished, Failed)):
                self._outcome_event = event
            self.event.emit(event)
        self.control.flush()

    def detach(self) -> None:
        """Stop watching; the process (if ours) keeps running on its own."""
        self._timer.stop()
        self.process = None

    def _end(self, code: int | None) -> None:
        self._timer.stop()
        self._read()  # whatever it wrote between the last poll and its exit
        if self.log is not None:
            self.log.finish()
        outcome = self._judge(code)
        if self.scratch is not None and outcome.ok:
            shutil.rmtree(self.scratch, ignore_errors=True)  # a failure keeps its full log for the user
            outcome.log_path = None
        if self.created_dir and not (self.run_dir / core_runs.RUN_FILE).exists():
            try:
                self.run_dir.rmdir()  # never used: the process failed before the engine created the run
            except OSError:
                pass
        self.process = None
        self.ended.emit(outcome)

    def _judge(self, code: int | None) -> RunOutcome:
        tail = list(self.log.lines) if self.log else []
        outcome = RunOutcome(self.run_dir, "crashed", exit_code=code, log_tail=tail,
                             log_path=self.log.path if self.log else None)
        last = self._outcome_event
        if isinstance(last, Finished):
            outcome.status = last.status if last.status in ("finished", "stopped") else "finished"
            if code and not (code == EXIT_STOPPED and last.status == "stopped"):
                # it reported its end and then failed (on exit): say so, but the adapter is there
                outcome.status, outcome.reason = "crashed", f"The training process {describe_exit(code)} after the run {last.status}."
            return outcome
        if isinstance(last, Failed):
            outcome.status = "failed"
            outcome.reason = last.reason + (f"\n{last.hint}" if last.hint else "")
            return outcome
        if code is None:  # an attached run that stopped being alive without reporting
            status = core_runs.run_status(self.run_dir)
            outcome.status = status.value if status.value in ("failed", "crashed", "finished", "stopped") else "crashed"
            outcome.reason = "The run's process ended without reporting a result."
            return outcome
        errors = [line for line in tail if line.startswith(("error:", "hint:"))]
        if code > 0 and not (self.run_dir / core_runs.STATUS_FILE).exists():
            outcome.status = "failed"  # refused before the run began (bad settings, unreadable data…)
            outcome.reason = "\n".join(errors) or f"The training process {describe_exit(code)} before the run began."
        else:
            outcome.reason = f"The training process {describe_exit(code)} without reporting a result."
        return outcome


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
            run_dir, created = claim_run_dir(config)
        except OutputError as exc:
            w.show_error("Cannot start training", exc.message + (f"\n\n{exc.hint}" if exc.hint else ""))
            return None
        scratch = Path(tempfile.mkdtemp(prefix="workbench-launch-"))
        run_file, log_path = scratch / core_runs.RUN_FILE, scratch / "process.log"
        command = launch_command(run_file, run_dir, processes)
        try:
            config.save(run_file)
            with open(log_path, "wb") as log:
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           cwd=os.getcwd(), env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                           **_own_session())
        except OSError as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)
            w.show_error("Cannot start training", f"The training process could not be started: {exc}")
            return None
        run = ExternalRun(run_dir, process, log_path, scratch, created, parent=self)
        self._begin(run, f"Started a separate process (pid {process.pid}): {shlex.join(command)}\n"
                         f"Run folder: {run_dir}\nIts output goes to {log_path}")
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


def continue_detached(run_dir: Path) -> subprocess.Popen:
    """Resume a stopped run (``workbench resume``) in a process of its own session that outlives the window; its
    output goes to a log file beside the other launch logs. Raises ``OSError`` if the process cannot start."""
    scratch = Path(tempfile.mkdtemp(prefix="workbench-continue-"))
    command = workbench_command("resume", str(run_dir), "--quiet")
    with open(scratch / "process.log", "wb") as log:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=os.getcwd(), env={**os.environ, "PYTHONUNBUFFERED": "1"}, **_own_session())


def _own_session() -> dict:
    """Start the process outside the window's process group: a Ctrl-C in the terminal that started the
    window, or the terminal closing, must not end a run that is meant to outlive the window."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}
