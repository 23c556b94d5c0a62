"""A run's status: the status.json record, the heartbeat's age, judging whether a run lives, and listing runs.

status.json holds ``state`` ("running", "finished", "stopped" or "failed"), ``pid`` and ``hostname`` of the
writing process, ``started_at`` (first start of the run), ``session_started_at`` (start of the current
process's recording), ``updated_at`` (heartbeat), ``ended_at``, ``elapsed_s`` (training wall time summed
over sessions), and the running summary ``step``, ``total_steps``, ``last_loss``, ``best_eval_loss``,
``world_size`` and, for failures, ``reason``. Times are Unix seconds. Listing hundreds of runs therefore
reads two small files per run and, only for a run that claims to be running, the last 64 KiB of its
metrics, never a whole ``metrics.jsonl``.

A "running" record is not believed blindly (see ``RunStatus``): on the writing host the process must still
exist and be the same process (its creation time precedes ``session_started_at``); from another host the
heartbeat must be younger than ``STALE_AFTER_S``. Otherwise the run is reported as crashed. A ``Finished``
or ``Failed`` event at the end of ``metrics.jsonl`` wins over a "running" record (a crash between writing
the event and the record).

The heartbeat's age is measured on the *file system's* clock, not on the writer's (``updated_at``) and not
on the reader's: the reader creates a probe file in the run folder (``.tmp-clock-…``, removed at once) and
compares the modification time the file system gives it with the one status.json got at its last
rewrite. Both times come from the same clock — the file server's on NFS and SMB, the disk's host
otherwise — so neither host's clock skew can make a live run look crashed, or a dead one look alive,
and one look is enough (``workbench runs``, ``resume`` and ``control`` are one-shot commands that cannot
watch a file for minutes). Where the probe cannot be written (a read-only share) the writer's
``updated_at`` is compared with the reader's clock, as a fallback, and the explanation says so. (File
systems that take file times from the client's clock — Lustre, CephFS — make the probe as good as the
two hosts' clocks agree; clusters running them keep their clocks in sync with NTP anyway.)
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..events import Event, Failed, Finished, RunStarted, Step
from ..fsutil import TMP_PREFIX, atomic_write_text, remove_directory
from .layout import RUN_FILE, PathLike, RunFolder
from .metrics import read_tail

# A run on another host whose heartbeat is older than this is reported as crashed. Generous on purpose:
# shared file systems (NFS) may cache file contents for up to a minute. The other modules of this package read it
# from here at call time (``status.STALE_AFTER_S``), so one setting governs every judgement.
STALE_AFTER_S = 180.0
# psutil derives a process's creation time from the boot time, which Linux reports in whole seconds.
_CREATE_TIME_SLACK_S = 2.0


class RunStatus(str, Enum):
    """What a run is doing, as judged by a reader.

    NEW: the folder exists but no engine has started recording in it. RUNNING: an engine is recording
    and, as far as can be checked, alive. FINISHED / STOPPED / FAILED: the run reported its outcome
    (STOPPED: stopped by the user, adapter saved). CRASHED: it was running and its process is gone
    without reporting an outcome (same host), or its heartbeat went stale (another host); it can be
    resumed from its newest complete checkpoint.
    """

    NEW = "new"
    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    CRASHED = "crashed"


OUTCOMES = {RunStatus.FINISHED.value, RunStatus.STOPPED.value, RunStatus.FAILED.value}


@dataclass
class StatusRecord:
    """The content of status.json (see the module docstring). Mutable: the recorder updates it in place."""

    state: str = RunStatus.RUNNING.value
    pid: int = 0
    hostname: str = ""
    started_at: float = 0.0
    session_started_at: float = 0.0
    updated_at: float = 0.0
    ended_at: float | None = None
    elapsed_s: float = 0.0
    step: int = 0
    total_steps: int | None = None
    last_loss: float | None = None
    best_eval_loss: float | None = None
    world_size: int = 1
    reason: str = ""
    paused: bool = False  # set by the recorder on Paused, cleared on Resumed (the process lives, between steps)

    @classmethod
    def read(cls, folder: RunFolder) -> "StatusRecord | None":
        """The record, or None when the file is missing or unreadable (never written → a NEW run)."""
        try:
            data = json.loads(folder.status_file.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError:
            return None

    def write(self, folder: RunFolder) -> None:
        atomic_write_text(folder.status_file, json.dumps(asdict(self), indent=1) + "\n")

    def note_eval_loss(self, loss: float) -> None:
        if not math.isnan(loss) and (self.best_eval_loss is None or loss < self.best_eval_loss):
            self.best_eval_loss = loss


def observe(folder: RunFolder, stale_after: float) -> tuple[RunStatus, str, StatusRecord | None, list[Event]]:
    """Status, a one-line explanation, the status record, and the tail of metrics.jsonl (read only while
    the record claims the run is running: that is when its last events can tell more)."""
    record = StatusRecord.read(folder)
    tail = read_tail(folder.metrics_file) if not record or record.state not in OUTCOMES else []
    status, detail = _judge(folder, record, tail, stale_after)
    return status, detail, record, tail


def _judge(folder: RunFolder, record: StatusRecord | None, tail: list[Event], stale_after: float) -> tuple[RunStatus, str]:
    """Status and a one-line explanation, from the status record and the last events of metrics.jsonl."""
    if record is None:
        return _judge_without_record(folder, tail, stale_after)
    if record.state in OUTCOMES:
        return RunStatus(record.state), record.reason
    outcome = _last_outcome(tail)
    if isinstance(outcome, Failed):
        return RunStatus.FAILED, outcome.reason
    if isinstance(outcome, Finished):
        return (RunStatus.STOPPED if outcome.status == RunStatus.STOPPED.value else RunStatus.FINISHED), ""
    if on_this_host(record):
        gone = _process_gone(record.pid, record.session_started_at)
        return (RunStatus.CRASHED, gone) if gone else (RunStatus.RUNNING, f"process {record.pid}")
    age, clock = heartbeat_age(folder, record)
    if age > stale_after:
        return RunStatus.CRASHED, f"no heartbeat from {record.hostname} for {age:.0f} s ({clock}; process state unknown)"
    return RunStatus.RUNNING, f"process {record.pid} on {record.hostname}, heartbeat {age:.0f} s ago ({clock})"


def _judge_without_record(folder: RunFolder, tail: list[Event], stale_after: float) -> tuple[RunStatus, str]:
    """A run without a readable status.json: never started, or its record is torn or damaged (written by a tool
    that does not replace it atomically, a disk fault). Then metrics.jsonl tells: its last outcome, or else
    how long ago it was written (a live engine rewrites status.json within one heartbeat)."""
    if not tail:
        if os.path.lexists(folder.status_file):
            return RunStatus.CRASHED, "status.json is damaged and metrics.jsonl holds no events"
        return RunStatus.NEW, "not started"
    outcome = _last_outcome(tail)
    if isinstance(outcome, Failed):
        return RunStatus.FAILED, outcome.reason
    if isinstance(outcome, Finished):
        return (RunStatus.STOPPED if outcome.status == RunStatus.STOPPED.value else RunStatus.FINISHED), ""
    if not os.path.lexists(folder.status_file):  # events but no record at all: no engine is recording here
        return RunStatus.CRASHED, "no status.json; judged from metrics.jsonl: no result reported"
    try:
        age = max(0.0, _file_system_now(folder.path) - os.stat(folder.metrics_file).st_mtime)
    except OSError:
        age = math.inf
    if age > stale_after:
        return RunStatus.CRASHED, (f"status.json is unreadable; judged from metrics.jsonl: no result reported, "
                                   f"last written {age:.0f} s ago")
    return RunStatus.RUNNING, f"status.json is unreadable; metrics.jsonl was written {age:.0f} s ago"


def on_this_host(record: StatusRecord) -> bool:
    return record.hostname == socket.gethostname()


def heartbeat_age(run_dir: PathLike, record: "StatusRecord | None" = None) -> tuple[float, str]:
    """Seconds since the run's writer last rewrote status.json, and which clock measured them.

    Measured on the file system's clock (see the module docstring): the modification time of status.json
    against that of a probe file created — and removed at once — in the run folder, so the writer's and
    the reader's clocks play no part. Where no probe can be created (no write access), falls back to the
    writer's ``updated_at`` against this host's clock, and says so. ``(inf, …)`` when there is no status.
    """
    folder = RunFolder(run_dir)
    try:
        written = os.stat(folder.status_file).st_mtime
    except OSError:
        return math.inf, "no status.json"
    try:
        return max(0.0, _file_system_now(folder.path) - written), "by the file system's clock"
    except OSError:  # read-only: compare the writer's clock with ours, the best left
        record = record or StatusRecord.read(folder)
        if record is None:
            return math.inf, "no status.json"
        return max(0.0, time.time() - record.updated_at), f"by {record.hostname}'s clock against this host's"


def _file_system_now(folder: Path) -> float:
    """The file system's current time: the modification time it gives a new file in ``folder``."""
    fd, probe = tempfile.mkstemp(prefix=f"{TMP_PREFIX}clock-", dir=folder)
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        try:
            os.unlink(probe)
        except OSError:
            pass


def _process_gone(pid: int, session_started_at: float) -> str:
    """Why process ``pid`` is no longer the run's writer, or "" if it still is."""
    import psutil  # only for a running run on this host: not on the window's first paint (~12 ms)

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped by its parent
            return f"process {pid} ended without reporting a result"
        created = proc.create_time()
    except psutil.NoSuchProcess:
        return f"process {pid} ended without reporting a result"
    except psutil.AccessDenied:
        return ""  # it exists and belongs to someone else: it may well be the writer
    if created > session_started_at + _CREATE_TIME_SLACK_S:
        return f"process {pid} ended without reporting a result (its number now belongs to another process)"
    return ""


def _last_outcome(events: list[Event]) -> Finished | Failed | None:
    """The outcome reported by the latest session in ``events`` (a later RunStarted begins a new one)."""
    for event in reversed(events):
        if isinstance(event, (Finished, Failed)):
            return event
        if isinstance(event, RunStarted):
            return None
    return None


@dataclass(frozen=True)
class RunSummary:
    """One row of the runs list. Times are local, timezone-aware datetimes."""

    name: str
    path: Path
    status: RunStatus
    status_detail: str  # why this status: the failure reason, the process, the stale heartbeat, …
    model_source: str
    data_files: tuple[str, ...]
    step: int  # optimizer steps done (the last one reported)
    total_steps: int | None
    last_loss: float | None
    best_eval_loss: float | None
    created_at: datetime  # when the folder was created (run.toml written)
    started_at: datetime | None  # first start of training; None for a NEW run
    duration_s: float | None  # training wall time, summed over sessions
    paused: bool = False  # RUNNING, and paused between steps (the process and its model stay)

    @property
    def shown_status(self) -> str:
        """The status word for people and scripts: "paused" for a running run that is paused."""
        return "paused" if self.paused and self.status is RunStatus.RUNNING else self.status.value

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``workbench runs --json``)."""
        d = asdict(self)
        d.update(
            path=str(self.path),
            status=self.shown_status,
            data_files=list(self.data_files),
            created_at=self.created_at.isoformat(timespec="seconds"),
            started_at=self.started_at.isoformat(timespec="seconds") if self.started_at else None,
        )
        return d


def summarize_run(run_dir: PathLike, *, stale_after: float = STALE_AFTER_S) -> RunSummary:
    """The summary of one run folder, from ``status.json``, ``run.toml`` and, for a run that claims to be
    running, the tail of ``metrics.jsonl`` (which also gives its latest step and loss).

    Raises ``FileNotFoundError`` when ``run_dir`` holds no ``run.toml`` (not a run, or deleted meanwhile).
    """
    folder = RunFolder(run_dir)
    created = folder.run_file.stat().st_mtime
    status, detail, record, tail = observe(folder, stale_after)
    step, last_loss = (record.step, record.last_loss) if record else (0, None)
    total_steps = record.total_steps if record else None
    if record is None:  # a torn status.json: the started time comes from the first event still in the tail
        record = _record_from_tail(tail)
    last_step = next((e for e in reversed(tail) if isinstance(e, Step)), None)
    if last_step is not None and last_step.step >= step:  # fresher than the last heartbeat
        step, last_loss, total_steps = last_step.step, last_step.loss, last_step.total_steps
    model_source, data_files = _run_file_essentials(folder)
    return RunSummary(
        name=folder.name,
        path=folder.path,
        status=status,
        status_detail=detail,
        model_source=model_source,
        data_files=data_files,
        step=step,
        total_steps=total_steps,
        last_loss=last_loss,
        best_eval_loss=record.best_eval_loss if record else None,
        created_at=_local_time(created),
        started_at=_local_time(record.started_at) if record else None,
        duration_s=record.elapsed_s if record else None,
        paused=bool(record and record.paused),
    )


def _record_from_tail(tail: list[Event]) -> "StatusRecord | None":
    begun = next((e for e in tail if isinstance(e, RunStarted)), None)
    if begun is None:
        return None
    return StatusRecord(started_at=begun.time, total_steps=begun.total_steps)


def _run_file_essentials(folder: RunFolder) -> tuple[str, tuple[str, ...]]:
    """Model source and training files from run.toml, read without validation: a run written by another
    version of the program (unknown or missing keys) must still be listed."""
    try:
        data = tomllib.loads(folder.run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "", ()
    model, train = data.get("model", {}), data.get("data", {})
    source = model.get("source", "") if isinstance(model, dict) else ""
    files = train.get("train_files", []) if isinstance(train, dict) else []
    return str(source), tuple(str(f) for f in files) if isinstance(files, list) else ()


def _local_time(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp).astimezone()


def run_status(run_dir: PathLike, *, stale_after: float = STALE_AFTER_S) -> RunStatus:
    """The status of one run (see ``RunStatus``)."""
    return observe(RunFolder(run_dir), stale_after)[0]


def list_runs(root: PathLike, *, stale_after: float = STALE_AFTER_S) -> list[RunSummary]:
    """Summaries of the runs directly under ``root`` (folders holding a ``run.toml``), newest first.
    Folders whose names start with a dot (temporary, being deleted) are skipped; a missing root has none."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise OutputError(f"{root} is a file, not a folder of runs", "give the folder that holds the run folders") from None
    except PermissionError:
        raise OutputError(f"no permission to read {root}", "check the folder's permissions") from None
    except OSError as exc:  # a symbolic-link loop (ELOOP), an I/O error: the folder cannot be listed
        raise OutputError(f"cannot read {root}: {exc.strerror or exc}", "give the folder that holds the run folders") from None
    summaries = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if not entry.is_dir():
                continue
            summaries.append(summarize_run(entry.path, stale_after=stale_after))
        except FileNotFoundError:  # no run.toml: not a run, or deleted while we looked
            continue
        except OSError:  # a symbolic-link loop (the entry or its run.toml), unreadable: not a run to show
            continue
    summaries.sort(key=lambda s: (s.started_at or s.created_at, s.name), reverse=True)
    return summaries


def delete_run(run_dir: PathLike) -> None:
    """Delete a run folder and everything in it (the window asks for confirmation first).

    Refuses a folder without ``run.toml`` (so a wrong path cannot wipe unrelated files) and a running
    run. The folder is first renamed to a hidden ``.tmp-<name>.deleting`` sibling, so it leaves listings
    at once and an interrupted deletion never shows up as a damaged run. A run folder that is a symbolic
    link loses only the link, never the files it points to.
    """
    folder = RunFolder(run_dir)
    if not folder.run_file.is_file():
        raise OutputError(f"{folder.path} is not a run folder (no {RUN_FILE}); nothing was deleted")
    if run_status(folder) is RunStatus.RUNNING:
        raise OutputError(f"the run {folder.name} is running; nothing was deleted", "stop it first")
    if folder.path.is_symlink():
        folder.path.unlink()
        return
    remove_directory(folder.path)
