"""Training in a separate process, known only through its run folder: starting it, following it, judging its end.

The Qt-free half of the window's separate-process runs (``gui.external_run`` puts a timer and signals around
``RunWatch``). ``launch_run`` starts ``workbench train RUN.toml --run-dir DIR`` (under ``torchrun --standalone
--nproc_per_node N`` for N > 1; ``core.selfcmd`` spells both for a Python install and for the frozen bundle):

* the folder is chosen — and claimed, empty, with ``mkdir`` — before the process starts (``claim_run_dir``:
  ``output.run_dir``, else a new folder under ``output.runs_root``, named as the engine would name it) and passed
  with ``--run-dir``; the run file goes to a private temporary folder, because the engine only accepts an empty
  run folder and writes its own ``run.toml`` there;
* progress comes from ``metrics.jsonl`` through a ``runs.MetricsTailer``: the JSON lines become the same ``Event``
  objects the in-app engine emits, so both kinds of run are drawn the same way;
* Stop / Pause / Resume / Save-checkpoint-now go through ``runs.FolderControl`` (the ``Control`` protocol over the
  run folder's control file);
* the process's output (stdout and stderr) goes to a log file, not a pipe, so the process never depends on the
  window reading it — the window can close and leave the run going — and ``LogTail`` keeps its last lines for the
  message shown when the process fails or dies.

``subprocess.Popen`` in a session of its own, so a run can outlive the window; its exit status is read with a
non-blocking ``poll()``. Nothing here blocks.

A run folder that is running elsewhere (left running by an earlier window, a command-line or cluster run) can be
*attached* the same way, without a process: its liveness then comes from ``runs.run_status`` (the recorder's
heartbeat and process id).
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import runs as core_runs
from .config import RunConfig
from .events import Event, Failed, Finished, RunStarted
from .exitcodes import EXIT_STOPPED
from .selfcmd import local_torchrun_command, workbench_command

__all__ = ["STATUS_INTERVAL_S", "LOG_LINES_KEPT", "claim_run_dir", "launch_command", "LogTail", "RunOutcome",
           "describe_exit", "judge_outcome", "RunWatch", "launch_run", "continue_detached"]

STATUS_INTERVAL_S = 2.0  # liveness of an attached run (reads status.json, asks the OS about the process)
LOG_LINES_KEPT = 200


def claim_run_dir(config: RunConfig) -> tuple[Path, bool]:
    """The absolute run folder a new run of ``config`` will use, created empty (the engine's own choice and path
    rule, ``core.runs.claim_run_dir``); and whether it was created here, so that it can be removed again if the
    process fails before the engine writes into it."""
    path, created = core_runs.claim_run_dir(config)
    return path, path in created


def launch_command(run_file: Path, run_dir: Path, processes: int) -> list[str]:
    """The command line of a separate-process run: ``workbench train``, under torchrun for more than one
    process (``--standalone``: a rendezvous on a free local port, so two such runs can share the machine)."""
    args = ("train", str(run_file), "--run-dir", str(run_dir), "--quiet")
    return local_torchrun_command(processes, *args) if processes > 1 else workbench_command(*args)


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


def judge_outcome(run_dir: Path, code: int | None, last: Finished | Failed | None, log_tail: list[str],
                  log_path: Path | None = None) -> RunOutcome:
    """How a run ended, from what it last reported in ``metrics.jsonl`` (``last``: its ``Finished`` or ``Failed``
    event, None if it reported neither), its process's exit code (None: an attached run, not our process) and
    the last lines of its output (the ``error:``/``hint:`` lines of a run refused before it began)."""
    outcome = RunOutcome(run_dir, "crashed", exit_code=code, log_tail=list(log_tail), log_path=log_path)
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
        status = core_runs.run_status(run_dir)
        outcome.status = status.value if status.value in ("failed", "crashed", "finished", "stopped") else "crashed"
        outcome.reason = "The run's process ended without reporting a result."
        return outcome
    errors = [line for line in log_tail if line.startswith(("error:", "hint:"))]
    if code > 0 and not (run_dir / core_runs.STATUS_FILE).exists():
        outcome.status = "failed"  # refused before the run began (bad settings, unreadable data…)
        outcome.reason = "\n".join(errors) or f"The training process {describe_exit(code)} before the run began."
    else:
        outcome.reason = f"The training process {describe_exit(code)} without reporting a result."
    return outcome


class RunWatch:
    """One run in another process, followed through its folder: ``poll()`` returns the events it wrote since the
    last poll, and once it has ended, its ``RunOutcome`` (then ``ended`` is true and nothing more comes).

    With ``process`` (ours), the run ends when the process does; without (attached), when the run reports its
    outcome in ``metrics.jsonl`` or ``run_status`` stops calling it running. At the end a scratch folder (the run
    file and the log) is removed if the run went well — a failure keeps its full log for the user — and a run
    folder claimed for it is removed again if the engine never wrote into it.
    """

    def __init__(self, run_dir: Path, process: subprocess.Popen | None = None, log_path: Path | None = None,
                 scratch: Path | None = None, created_dir: bool = False):
        self.run_dir = Path(run_dir)
        self.process = process
        self.log = LogTail(log_path) if log_path else None
        self.scratch = scratch
        self.created_dir = created_dir
        self.control = core_runs.FolderControl(self.run_dir)
        self.ended = False
        self._outcome_event: Finished | Failed | None = None
        self._tailer = core_runs.MetricsTailer(self.run_dir)
        self._status_checked = time.monotonic()

    def poll(self) -> tuple[list[Event], RunOutcome | None]:
        if self.ended:
            return [], None
        events = self._read()
        if self.process is not None:
            code = self.process.poll()
            if code is not None:
                return events + self._read(), self._end(code)
            return events, None
        if self._outcome_event is not None:
            return events + self._read(), self._end(None)
        if time.monotonic() - self._status_checked >= STATUS_INTERVAL_S:
            self._status_checked = time.monotonic()
            if core_runs.run_status(self.run_dir) is not core_runs.RunStatus.RUNNING:
                events += self._read()  # its last lines, written just before it ended
                return events, self._end(None)
        return events, None

    def _read(self) -> list[Event]:
        if self.log is not None:
            self.log.read()
        events = self._tailer.poll()
        for event in events:
            if isinstance(event, RunStarted):
                self._outcome_event = None  # a new session (a resumed run)
            elif isinstance(event, (Finished, Failed)):
                self._outcome_event = event
        self.control.flush()
        return list(events)

    def detach(self) -> None:
        """Stop following; the process (if ours) keeps running on its own."""
        self.process = None
        self.ended = True

    def _end(self, code: int | None) -> RunOutcome:
        if self.log is not None:
            self.log.finish()
        outcome = judge_outcome(self.run_dir, code, self._outcome_event, list(self.log.lines) if self.log else [],
                                self.log.path if self.log else None)
        if self.scratch is not None and outcome.ok:
            shutil.rmtree(self.scratch, ignore_errors=True)  # a failure keeps its full log for the user
            outcome.log_path = None
        if self.created_dir and not (self.run_dir / core_runs.RUN_FILE).exists():
            try:
                self.run_dir.rmdir()  # never used: the process failed before the engine created the run
            except OSError:
                pass
        self.process = None
        self.ended = True
        return outcome


def launch_run(config: RunConfig, processes: int = 1) -> tuple[RunWatch, list[str]]:
    """Start ``workbench train`` for ``config`` on ``processes`` local processes: (its watch, the command line).

    Raises ``OutputError`` when the run folder cannot be claimed, ``OSError`` when the process cannot start
    (the claimed folder and the scratch folder are removed again then)."""
    run_dir, created = claim_run_dir(config)
    scratch = Path(tempfile.mkdtemp(prefix="workbench-launch-"))
    run_file, log_path = scratch / core_runs.RUN_FILE, scratch / "process.log"
    command = launch_command(run_file, run_dir, processes)
    try:
        config.save(run_file)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=os.getcwd(), env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                       **_own_session())
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return RunWatch(run_dir, process, log_path, scratch, created), command


def continue_detached(run_dir: Path) -> subprocess.Popen:
    """Resume a stopped run (``workbench resume``) in a process of its own session that outlives the window; its
    output goes to a log file beside the other launch logs. Raises ``OSError`` if the process cannot start."""
    scratch = Path(tempfile.mkdtemp(prefix="workbench-continue-"))
    command = workbench_command("resume", str(run_dir), "--quiet")
    with open(scratch / "process.log", "wb") as log:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=os.getcwd(), env={**os.environ, "PYTHONUNBUFFERED": "1"}, **_own_session())


def _own_session() -> dict[str, Any]:
    """Start the process outside the window's process group: a Ctrl-C in the terminal that started the
    window, or the terminal closing, must not end a run that is meant to outlive the window."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]
    return {"start_new_session": True}
