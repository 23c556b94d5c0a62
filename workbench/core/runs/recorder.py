"""The writer of a run folder while its engine runs: ``RunRecorder`` (see its docstring)."""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from ..control import Control
from ..errors import OutputError
from ..events import CheckpointSaved, Evaluation, Event, Failed, Finished, JsonlSink, Paused, Resumed, RunStarted, Step
from ..fsutil import fsync_dir, fsync_tree
from . import status
from .control_file import CONTROL_POLL_INTERVAL_S, ControlFileWatcher
from .layout import RUN_FILE, PathLike, RunFolder
from .metrics import drop_torn_line
from .status import RunStatus, StatusRecord, observe

# The recorder refreshes status.json this often while the process lives, whatever the engine is doing
# (a long step, an evaluation, loading a large model, a pause).
HEARTBEAT_INTERVAL_S = 10.0


class RunRecorder:
    """The writer of a run folder while its engine runs: an event sink plus a heartbeat and control thread.

    Only the engine's main process creates one (under torchrun: rank 0). On creation it marks the run
    running in ``status.json`` (refusing a run that is already running elsewhere), opens ``metrics.jsonl``
    for appending and starts a daemon thread that refreshes the heartbeat every ``heartbeat_interval``
    seconds and, when ``control`` is given, applies commands from ``control.json`` to it (through a
    ``ControlFileWatcher``). ``emit`` appends each event to ``metrics.jsonl`` and keeps the summary in
    ``status.json`` current; ``Finished`` and ``Failed`` are recorded at once.

    Use it as a context manager: an exception escaping the block is recorded as a ``Failed`` event, and a
    block that ends without a ``Finished`` or ``Failed`` event is recorded as failed too, so no run ever
    stays "running" in a process that lives on (the window).
    """

    def __init__(
        self,
        run_dir: PathLike,
        *,
        control: Control | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
    ):
        self.folder = RunFolder(run_dir)
        if not self.folder.run_file.is_file():
            raise OutputError(f"{self.folder.path} is not a run folder (no {RUN_FILE})", "create it with create_run")
        state, detail, previous, _ = observe(self.folder, status.STALE_AFTER_S)
        if state is RunStatus.RUNNING:
            raise OutputError(f"the run {self.folder.path} is already running ({detail})", "stop it first")
        now = time.time()
        self._record = StatusRecord(
            pid=os.getpid(),
            hostname=socket.gethostname(),
            started_at=previous.started_at if previous else now,
            session_started_at=now,
            updated_at=now,
        )
        if previous:  # a resumed run keeps its summary (prepare_resume has trimmed it to the checkpoint)
            for name in ("elapsed_s", "step", "total_steps", "last_loss", "best_eval_loss", "world_size"):
                setattr(self._record, name, getattr(previous, name))
        self._elapsed_before = self._record.elapsed_s
        self._lock = threading.Lock()
        self._closed = False
        drop_torn_line(self.folder.metrics_file)  # so the first event appended starts a line of its own
        self._metrics = JsonlSink(self.folder.metrics_file)
        try:
            self._watcher = ControlFileWatcher(self.folder, control) if control is not None else None
            # Written last: a "running" record must never be left behind by a set-up that failed.
            self._write_status()
        except BaseException:
            self._metrics.close()
            raise
        self._heartbeat_interval = heartbeat_interval
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="workbench-run-heartbeat", daemon=True)
        self._thread.start()

    def emit(self, event: Event) -> None:
        """Append ``event`` to metrics.jsonl and fold it into the status summary."""
        with self._lock:
            if self._closed:
                return
            if isinstance(event, CheckpointSaved):
                _seal_checkpoint(Path(event.path))  # on disk before metrics.jsonl names it
            self._metrics.emit(event)
            record = self._record
            if isinstance(event, Step):
                record.step, record.total_steps = event.step, event.total_steps
                record.last_loss, record.world_size = event.loss, event.world_size
            elif isinstance(event, Evaluation):
                record.note_eval_loss(event.eval_loss)
            elif isinstance(event, RunStarted):
                record.total_steps, record.world_size = event.total_steps, event.world_size
                self._write_status()
            elif isinstance(event, (Paused, Resumed)):  # `workbench runs` shows "paused" from the record
                record.paused = isinstance(event, Paused)
                self._write_status()
            elif isinstance(event, Finished):
                record.paused = False
                stopped = event.status == RunStatus.STOPPED.value
                record.state = (RunStatus.STOPPED if stopped else RunStatus.FINISHED).value
                record.step, record.ended_at = event.step, time.time()
                self._write_status()
            elif isinstance(event, Failed):
                record.paused = False
                record.state, record.reason, record.ended_at = RunStatus.FAILED.value, event.reason, time.time()
                self._write_status()

    def close(self) -> None:
        """Stop the thread, record a run that never reported its outcome as failed, close metrics.jsonl."""
        if self._closed:
            return
        self._closing.set()
        self._thread.join()
        if self._record.state == RunStatus.RUNNING.value:
            self.emit(Failed(reason="the training ended without reporting a result", step=self._record.step))
        with self._lock:
            self._closed = True
            self._metrics.close()

    def __enter__(self) -> "RunRecorder":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and self._record.state == RunStatus.RUNNING.value:
            self.emit(
                Failed(
                    reason=f"{exc_type.__name__}: {exc}" if str(exc) else exc_type.__name__,
                    step=self._record.step,
                    traceback="".join(traceback.format_exception(exc_type, exc, tb)),
                )
            )
        self.close()

    def _beat(self) -> None:
        tick = min(self._heartbeat_interval, CONTROL_POLL_INTERVAL_S) if self._watcher else self._heartbeat_interval
        last_beat = time.monotonic()
        while not self._closing.wait(tick):
            # A failed read or write (a full disk, a network share hiccup) must not end the thread: the
            # next tick retries, and a dead heartbeat would make a live run look crashed.
            try:
                if self._watcher is not None:
                    self._watcher.poll()
                if time.monotonic() - last_beat >= self._heartbeat_interval:
                    last_beat = time.monotonic()
                    with self._lock:
                        if self._record.state == RunStatus.RUNNING.value:
                            self._write_status()
            except OSError:
                continue

    def _write_status(self) -> None:
        """Write status.json (callers hold the lock, except the constructor before the thread starts)."""
        now = time.time()
        self._record.updated_at = now
        self._record.elapsed_s = self._elapsed_before + (now - self._record.session_started_at)
        self._record.write(self.folder)


def _seal_checkpoint(path: Path) -> None:
    """Flush a checkpoint folder the Trainer has just written (it does not sync anything itself)."""
    try:
        fsync_tree(path)
        fsync_dir(path.parent)
    except OSError:  # a checkpoint that cannot be synced is still checked for completeness before any resume
        pass
