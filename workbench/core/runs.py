"""Run folders: where a run lives on disk, how to tell its status, read its metrics and resume it.

One folder per run, readable by any process on any machine that sees the disk::

    RUN_DIR/
      run.toml                        the full configuration (RunConfig.save), written once, atomically
      metrics.jsonl                   every event, one JSON object per line, append-only (events.JsonlSink)
      status.json                     small state record, replaced atomically (see "status.json" below)
      control.json                    commands from other processes (see "control.json" below)
      checkpoints/checkpoint-<step>/  HF Trainer checkpoints (the Trainer's output_dir is checkpoints/),
                                      written aside and renamed into place (see below)
      .resume.lock                    held (flock) by the process that resumes the run
      adapter/                        the final PEFT adapter: adapter_config.json + adapter_model.safetensors

Who writes what. ``create_run`` makes the folder and ``run.toml``. While training, the engine's main process
holds a ``RunRecorder``: it is the event sink that appends to ``metrics.jsonl``, keeps ``status.json``
current (with a heartbeat from a background thread, so the engine calls nothing extra) and, when given the
run's ``RunControl``, applies the commands found in ``control.json`` to it. The engine wiring is::

    folder = create_run(config)                 # or: point = prepare_resume(run_dir); folder = point.folder
    with RunRecorder(folder, control=control) as recorder:
        training.run(config, MultiSink([recorder, console_sink]), control)

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

``prepare_resume`` only continues a run that is positively dead: an outcome was reported, or, for a run
recorded as running, its process is gone (same host) or its heartbeat is stale (other host). Otherwise it
refuses and names the host and process, so two processes never write one run folder. Two resumes started
at the same instant would both pass that check; the first takes the run's resume lock (``.resume.lock``,
an exclusive ``flock`` held until its training ends, dropped by the kernel if it dies) and the second is
refused (``ResumeLock``).

The engine writes each checkpoint into ``checkpoints/.tmp-checkpoint-<step>.partial/``, flushes it to disk
and only then renames it to ``checkpoints/checkpoint-<step>/``; the Trainer's rotation (``save_total_limit``)
renames an old checkpoint to ``.tmp-checkpoint-<step>.deleting`` before deleting it. A folder under a
``checkpoint-<step>`` name is therefore whole — except in run folders written by versions that let the HF
Trainer write in place, so ``list_checkpoints`` still checks each one for completeness (see there) and
resuming only ever starts from a complete one. Temporary ``.tmp-…`` folders are never listed, and
``prepare_resume`` removes them. When the engine reports a checkpoint (the ``CheckpointSaved`` event), the
recorder flushes its files and folders to disk once more before it appends the event, so a checkpoint
named in ``metrics.jsonl`` survives a power cut whoever saved it.

control.json holds the *desired* state ``{"stop": bool, "pause": bool, "checkpoint_requests": int,
"updated_at": float}``, not a queue of commands: ``send_control`` rewrites it atomically and
``ControlFileWatcher`` applies the differences to a ``RunControl``. Several commands sent between two polls
therefore all take effect (pause, then checkpoint-now), and a pause followed by a resume nets out. The
watcher resets the file when it starts, so commands left over from an earlier session (the "stop" that
ended it) do not reach the next one; commands only reach a running engine.

Resuming keeps ``metrics.jsonl`` append-only with one exception: ``prepare_resume`` truncates the file
after the last event of the checkpoint's step (and drops a torn last line), so the resumed engine appends
step N+1 right after step N, and readers never see a step twice or a gap. Readers stay simple: no
de-duplication, no session logic.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import tomllib
import traceback
import zipfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

import psutil

from .config import RunConfig
from .control import RunControl
from .errors import OutputError, TrainingError
from .events import (
    CheckpointSaved,
    Evaluation,
    Event,
    Failed,
    Finished,
    JsonlSink,
    RunStarted,
    Step,
    event_from_dict,
)
from .fsutil import TMP_PREFIX, atomic_write_text, fsync_dir, fsync_tree, make_dirs, remove_directory, remove_empty_dirs

__all__ = [
    "RUN_FILE",
    "METRICS_FILE",
    "STATUS_FILE",
    "CONTROL_FILE",
    "CHECKPOINTS_DIR",
    "ADAPTER_DIR",
    "CONTROL_COMMANDS",
    "HEARTBEAT_INTERVAL_S",
    "STALE_AFTER_S",
    "RunFolder",
    "RunStatus",
    "RunSummary",
    "Checkpoint",
    "ResumePoint",
    "RunRecorder",
    "MetricsTailer",
    "ControlFileWatcher",
    "create_run",
    "load_config",
    "claim_run_dir",
    "default_run_name",
    "model_short_name",
    "run_status",
    "summarize_run",
    "list_runs",
    "read_events",
    "list_checkpoints",
    "latest_checkpoint",
    "prepare_resume",
    "choose_checkpoint",
    "CheckpointChoice",
    "ResumeLock",
    "RESUME_LOCK",
    "rewind_metrics",
    "heartbeat_age",
    "send_control",
    "delete_run",
]

RUN_FILE = "run.toml"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
CONTROL_FILE = "control.json"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"

# The recorder refreshes status.json this often while the process lives, whatever the engine is doing
# (a long step, an evaluation, loading a large model, a pause).
HEARTBEAT_INTERVAL_S = 10.0
# A run on another host whose heartbeat is older than this is reported as crashed. Generous on purpose:
# shared file systems (NFS) may cache file contents for up to a minute.
STALE_AFTER_S = 180.0
# How often the recorder's thread looks at control.json (one stat() when nothing changed).
CONTROL_POLL_INTERVAL_S = 0.5
# Bytes read from the end of metrics.jsonl to find the last outcome of a run that claims to be running.
_TAIL_BYTES = 64 * 1024
# psutil derives a process's creation time from the boot time, which Linux reports in whole seconds.
_CREATE_TIME_SLACK_S = 2.0

CONTROL_COMMANDS = ("stop", "pause", "resume", "checkpoint")

_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
_ADAPTER_WEIGHTS = "adapter_model.safetensors"
_ADAPTER_CONFIG = "adapter_config.json"
_TRAINER_STATE = "trainer_state.json"

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------- layout


@dataclass(frozen=True, init=False)
class RunFolder:
    """The paths of one run folder. Constructing it touches no file; it is path-like (``os.fspath``)."""

    path: Path

    def __init__(self, path: PathLike):
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def status_file(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def control_file(self) -> Path:
        return self.path / CONTROL_FILE

    @property
    def checkpoints_dir(self) -> Path:
        """Pass this as the HF Trainer's ``output_dir``: it writes ``checkpoint-<step>`` folders into it."""
        return self.path / CHECKPOINTS_DIR

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER_DIR


def model_short_name(source: str) -> str:
    """A file-name-safe short name for a model source: the last path or Hub-id component, without
    ``.gguf``; ``"run"`` when nothing usable is left. Used to name run folders and in listings."""
    tail = re.split(r"[/\\]", source.rstrip("/\\"))[-1]
    tail = tail.removesuffix(".gguf")
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-.")
    return tail or "run"


def create_run(config: RunConfig) -> RunFolder:
    """Create the folder for a new run (``claim_run_dir``) and write ``run.toml`` into it (atomically).

    When ``run.toml`` cannot be written (a full disk, no permission) the folders this call created are removed
    again before ``OutputError`` is raised, so a failed start leaves no empty run behind.
    """
    path, created = claim_run_dir(config)
    try:
        config.save(path / RUN_FILE)
    except OSError as exc:
        remove_empty_dirs(created)
        raise _cannot_create_run_folder(exc, config) from None
    return RunFolder(path)


def claim_run_dir(config: RunConfig) -> tuple[Path, list[Path]]:
    """The empty folder a new run of ``config`` uses, and the folders this call created (outermost first).

    ``config.output.run_dir`` when set (it must be missing or empty), otherwise a new folder under
    ``config.output.runs_root`` named ``config.output.name`` or ``<model>-<YYYYmmdd-HHMMSS>``, with ``-2``,
    ``-3``, … appended when that name is taken (also by a concurrent process: the name is claimed with
    ``mkdir``, which fails if it exists). Relative paths are taken from the current folder.
    """
    out = config.output
    created: list[Path] = []
    try:
        if out.run_dir:
            path = Path(out.run_dir)
            created += make_dirs(path)
            if any(path.iterdir()):
                raise OutputError(
                    f"the run folder {path} is not empty",
                    "choose another output.run_dir, or leave it unset to get a new folder under output.runs_root",
                )
        else:
            root = Path(out.runs_root)
            created += make_dirs(root)
            path = claim_new_run_dir(root, config)
            created.append(path)
    except OSError as exc:
        remove_empty_dirs(created)
        raise _cannot_create_run_folder(exc, config) from None
    return path, created


def _cannot_create_run_folder(exc: OSError, config: RunConfig) -> OutputError:
    out = config.output
    return OutputError(
        f"cannot create the run folder: {exc.strerror or exc} ({exc.filename or out.run_dir or out.runs_root})",
        "choose a folder you can write to (output.runs_root or output.run_dir)",
    )


def default_run_name(config: RunConfig) -> str:
    """A new run's folder name: ``output.name``, or the model's short name and the time."""
    return config.output.name or f"{model_short_name(config.model.source)}-{datetime.now():%Y%m%d-%H%M%S}"


def claim_new_run_dir(root: Path, config: RunConfig) -> Path:
    """Create and return the empty folder of a new run under ``root``: ``output.name``, or the model's short
    name and the time, with ``-2``, ``-3``… when taken (``mkdir`` claims it, so two starts cannot share it)."""
    # A leading dot would hide the run: listings skip dot-folders (temporary and deleted ones).
    base = default_run_name(config).lstrip(".")
    return _claim_unique_dir(root, base or "run")


def _claim_unique_dir(root: Path, base: str) -> Path:
    for n in range(1, 10_000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise OutputError(f"too many runs named {base!r} in {root}", "set output.name to another name")


def load_config(run_dir: PathLike) -> RunConfig:
    """The run's configuration, read and validated from its ``run.toml``."""
    return RunConfig.from_toml(RunFolder(run_dir).run_file)


# ---------------------------------------------------------------------------------------- status


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


_OUTCOMES = {RunStatus.FINISHED.value, RunStatus.STOPPED.value, RunStatus.FAILED.value}


@dataclass
class _Record:
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

    @classmethod
    def read(cls, folder: RunFolder) -> "_Record | None":
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


def _observe(folder: RunFolder, stale_after: float) -> tuple[RunStatus, str, _Record | None, list[Event]]:
    """Status, a one-line explanation, the status record, and the tail of metrics.jsonl (read only while
    the record claims the run is running: that is when its last events can tell more)."""
    record = _Record.read(folder)
    tail = _read_tail(folder.metrics_file) if record and record.state not in _OUTCOMES else []
    status, detail = _judge(folder, record, tail, stale_after)
    return status, detail, record, tail


def _judge(folder: RunFolder, record: _Record | None, tail: list[Event], stale_after: float) -> tuple[RunStatus, str]:
    """Status and a one-line explanation, from the status record and the last events of metrics.jsonl."""
    if record is None:
        return RunStatus.NEW, "not started"
    if record.state in _OUTCOMES:
        return RunStatus(record.state), record.reason
    outcome = _last_outcome(tail)
    if isinstance(outcome, Failed):
        return RunStatus.FAILED, outcome.reason
    if isinstance(outcome, Finished):
        return (RunStatus.STOPPED if outcome.status == RunStatus.STOPPED.value else RunStatus.FINISHED), ""
    if _on_this_host(record):
        gone = _process_gone(record.pid, record.session_started_at)
        return (RunStatus.CRASHED, gone) if gone else (RunStatus.RUNNING, f"process {record.pid}")
    age, clock = heartbeat_age(folder, record)
    if age > stale_after:
        return RunStatus.CRASHED, f"no heartbeat from {record.hostname} for {age:.0f} s ({clock}; process state unknown)"
    return RunStatus.RUNNING, f"process {record.pid} on {record.hostname}, heartbeat {age:.0f} s ago ({clock})"


def _on_this_host(record: _Record) -> bool:
    return record.hostname == socket.gethostname()


def heartbeat_age(run_dir: PathLike, record: "_Record | None" = None) -> tuple[float, str]:
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
        record = record or _Record.read(folder)
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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``workbench runs --json``)."""
        d = asdict(self)
        d.update(
            path=str(self.path),
            status=self.status.value,
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
    status, detail, record, tail = _observe(folder, stale_after)
    step, last_loss = (record.step, record.last_loss) if record else (0, None)
    total_steps = record.total_steps if record else None
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
    )


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
    return _observe(RunFolder(run_dir), stale_after)[0]


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
    summaries = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            summaries.append(summarize_run(entry.path, stale_after=stale_after))
        except FileNotFoundError:  # no run.toml: not a run, or deleted while we looked
            continue
    summaries.sort(key=lambda s: (s.started_at or s.created_at, s.name), reverse=True)
    return summaries


# ---------------------------------------------------------------------------------------- recording


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
        control: RunControl | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
    ):
        self.folder = RunFolder(run_dir)
        if not self.folder.run_file.is_file():
            raise OutputError(f"{self.folder.path} is not a run folder (no {RUN_FILE})", "create it with create_run")
        status, detail, previous, _ = _observe(self.folder, STALE_AFTER_S)
        if status is RunStatus.RUNNING:
            raise OutputError(f"the run {self.folder.path} is already running ({detail})", "stop it first")
        now = time.time()
        self._record = _Record(
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
        _drop_torn_line(self.folder.metrics_file)  # so the first event appended starts a line of its own
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
            elif isinstance(event, Finished):
                stopped = event.status == RunStatus.STOPPED.value
                record.state = (RunStatus.STOPPED if stopped else RunStatus.FINISHED).value
                record.step, record.ended_at = event.step, time.time()
                self._write_status()
            elif isinstance(event, Failed):
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


def _drop_torn_line(path: Path) -> None:
    """Cut a last line without its newline (a writer killed mid-line) off the end of ``path``."""
    try:
        with open(path, "r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            start = max(0, size - _TAIL_BYTES)
            while True:  # find the last newline, reading backwards a block at a time
                fh.seek(start)
                block = fh.read(size - start)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    fh.truncate(start + cut + 1)
                    break
                if start == 0:
                    fh.truncate(0)
                    break
                size, start = start, max(0, start - _TAIL_BYTES)
            os.fsync(fh.fileno())
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------------------- metrics


def _parse_lines(data: bytes) -> list[Event]:
    """Events from the complete lines of ``data``. A trailing piece without a newline (a line still being
    written, or torn by a crash) is ignored, and so are lines that are not JSON objects (a torn line that
    later writes were appended to) and events of kinds this version does not know."""
    events = []
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        try:
            obj = json.loads(line)
        except ValueError:  # also UnicodeDecodeError
            continue
        event = event_from_dict(obj) if isinstance(obj, dict) else None
        if event is not None:
            events.append(event)
    return events


def _read_tail(path: Path, max_bytes: int = _TAIL_BYTES) -> list[Event]:
    """The events among the last ``max_bytes`` of a metrics file (its first, cut line skipped)."""
    try:
        with open(path, "rb") as fh:
            start = max(0, fh.seek(0, os.SEEK_END) - max_bytes)
            fh.seek(start)
            data = fh.read()
    except FileNotFoundError:
        return []
    if start > 0:
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
    return _parse_lines(data)


def read_events(run_dir: PathLike) -> list[Event]:
    """Every event of a run's metrics.jsonl, in order; tolerant as ``MetricsTailer.poll`` is."""
    return MetricsTailer(run_dir).poll()


class MetricsTailer:
    """Follows a run's metrics.jsonl as another process appends to it (live plots, ``workbench runs``).

    ``poll()`` returns the events completed since the previous call. It keeps the byte offset of the end
    of the last complete line it consumed, so a line still being written is left for the next poll, and
    a missing file (the run has not started yet) just gives no events. To notice that the file was cut
    back (``prepare_resume``) or replaced, it re-reads the last line it consumed and compares it: if it
    changed, the tailer starts again from the beginning and sets ``restarted`` for that poll, telling the
    caller to drop what it had (the returned events are then the whole history).
    """

    def __init__(self, run_dir: PathLike):
        self.path = RunFolder(run_dir).metrics_file
        self.restarted = False
        self._offset = 0  # end of the last consumed complete line
        self._last_line = b""  # that line, newline included

    def poll(self) -> list[Event]:
        self.restarted = False
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return []
        with fh:
            if self._offset and not self._continues(fh):
                self._offset, self._last_line, self.restarted = 0, b"", True
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        if end == 0:
            return []
        self._offset += end
        self._last_line = data[data.rfind(b"\n", 0, end - 1) + 1 : end]
        return _parse_lines(data[:end])

    def _continues(self, fh: Any) -> bool:
        fh.seek(self._offset - len(self._last_line))
        return fh.read(len(self._last_line)) == self._last_line


# ---------------------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """A ``checkpoints/checkpoint-<step>`` folder. ``problem`` says why it cannot be resumed from ("" if it can)."""

    step: int
    path: Path
    problem: str

    @property
    def complete(self) -> bool:
        return not self.problem


def list_checkpoints(run_dir: PathLike, *, thorough: bool = False) -> list[Checkpoint]:
    """Every ``checkpoint-<step>`` folder of a run, oldest first, each checked for completeness.

    The engine publishes a checkpoint only when it is whole (see the module docstring), but the HF Trainer
    on its own writes it in place, file by file — adapter, optimizer, scheduler, RNG states — and
    ``trainer_state.json`` last, and run folders from earlier versions (or a run copied while it was
    written) can hold such folders; nothing marks one as finished but that last file. Complete therefore
    means: ``trainer_state.json`` parses and names the folder's step; ``adapter_config.json``
    parses; ``adapter_model.safetensors`` is a whole safetensors file (header and size agree);
    ``optimizer.pt``, ``scheduler.pt`` and an RNG state (``rng_state.pth``, or one per process under
    torchrun) are there — the Trainer resumes *without* a missing optimizer or scheduler state, silently
    restarting them, so their absence (a checkpoint half deleted by the Trainer's rotation) must count —
    and every torch state file (``*.pt``, ``*.pth``) is a whole zip archive, the format ``torch.save``
    writes (its central directory comes last). With ``thorough`` each archive's members are also read and
    checked against their CRC-32s, which catches blocks lost in a power cut that the size alone does not
    (``choose_checkpoint`` does this for the checkpoint a run continues from). Only names of exactly that
    form are listed, so temporary folders (``.tmp-checkpoint-…``) never are.
    """
    return [Checkpoint(step, path, _checkpoint_problem(path, step, thorough=thorough))
            for step, path in checkpoint_folders(RunFolder(run_dir).checkpoints_dir)]


def checkpoint_folders(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-<step>`` folder in ``checkpoints_dir``, oldest first, unchecked:
    the one rule for what counts as a checkpoint, for ``list_checkpoints`` and the engine's rotation."""
    try:
        entries = list(os.scandir(checkpoints_dir))
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), Path(e.path)) for e in entries if (m := _CHECKPOINT_NAME.fullmatch(e.name)) and e.is_dir()]
    return sorted(found, key=lambda f: f[0])


def latest_checkpoint(run_dir: PathLike) -> Checkpoint | None:
    """The newest complete checkpoint, or None."""
    return _newest_complete(list_checkpoints(run_dir))


def _newest_complete(checkpoints: list[Checkpoint]) -> Checkpoint | None:
    return next((c for c in reversed(checkpoints) if c.complete), None)


_REQUIRED_STATES = ("optimizer.pt", "scheduler.pt")


def _checkpoint_problem(path: Path, step: int, *, thorough: bool = False) -> str:
    try:
        state = json.loads((path / _TRAINER_STATE).read_bytes())
    except FileNotFoundError:
        return f"no {_TRAINER_STATE} (the checkpoint was not finished)"
    except ValueError:
        return f"{_TRAINER_STATE} is not valid JSON (cut off while written)"
    except OSError as exc:
        return f"{_TRAINER_STATE} cannot be read ({exc.strerror or exc})"
    if not isinstance(state, dict) or state.get("global_step") != step:
        return f"{_TRAINER_STATE} does not record step {step}"
    try:
        json.loads((path / _ADAPTER_CONFIG).read_bytes())
    except FileNotFoundError:
        return f"no {_ADAPTER_CONFIG}"
    except ValueError:
        return f"{_ADAPTER_CONFIG} is not valid JSON"
    except OSError as exc:
        return f"{_ADAPTER_CONFIG} cannot be read ({exc.strerror or exc})"
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path / _ADAPTER_WEIGHTS), framework="numpy"):  # validates header against file size
            pass
    except FileNotFoundError:
        return f"no {_ADAPTER_WEIGHTS}"
    except (SafetensorError, OSError) as exc:
        return f"{_ADAPTER_WEIGHTS} is damaged ({exc})"
    names = {p.name for p in path.iterdir()}
    missing = [n for n in _REQUIRED_STATES if n not in names]
    if not any(n.startswith("rng_state") and n.endswith(".pth") for n in names):
        missing.append("rng_state.pth")
    if missing:
        return f"no {', '.join(missing)} (the checkpoint was not finished, or was partly deleted)"
    return _torch_files_problem(path, names, thorough)


def _torch_files_problem(path: Path, names: set[str] | list[str], thorough: bool) -> str:
    """The first problem among the torch state archives (``*.pt``, ``*.pth``) of ``names`` in ``path``."""
    for name in sorted(names):
        if name.endswith((".pt", ".pth")):
            problem = _torch_file_problem(path / name, thorough)
            if problem:
                return f"{name} {problem}"
    return ""


def _torch_file_problem(path: Path, thorough: bool) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            if thorough:
                bad = zf.testzip()
                if bad is not None:
                    return f"is damaged (member {bad} fails its CRC check)"
    except (zipfile.BadZipFile, EOFError):
        return "is incomplete"
    except zipfile.LargeZipFile:
        return ""
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return ""


# ---------------------------------------------------------------------------------------- resume


@dataclass(frozen=True)
class ResumePoint:
    """What the engine needs to continue a run: ``trainer.train(resume_from_checkpoint=str(checkpoint.path))``.

    It holds the run's resume lock (see ``prepare_resume``) until ``release()``, the end of a ``with``
    block, or the end of the process; the engine keeps it for the whole resumed training."""

    folder: RunFolder
    config: RunConfig
    checkpoint: Checkpoint
    discarded: tuple[Path, ...]  # incomplete checkpoint folders (and temporary ones) that were removed
    dropped_events: int  # metrics.jsonl lines removed (events after the checkpoint's step, a torn line)
    problems: tuple[tuple[str, str], ...] = ()  # (checkpoint folder name, why it was incomplete)
    lock: "ResumeLock | None" = field(default=None, compare=False, repr=False)

    @property
    def step(self) -> int:
        return self.checkpoint.step

    def describe(self) -> str:
        """One line for the console and the log panel: which checkpoint, and what was thrown away."""
        total = self.config.training.max_steps
        text = f"resuming from {self.checkpoint.path.name} (step {self.step}{f' of {total}' if total else ''})"
        if self.discarded:
            text += f"; removed incomplete {', '.join(p.name for p in self.discarded)}"
            text += "".join(f"; {name}: {problem}" for name, problem in self.problems)
        if self.dropped_events:
            text += f"; dropped {self.dropped_events} metrics line(s) recorded after step {self.step}"
        return text

    def release(self) -> None:
        """Let another process resume this run (once this one has ended)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> "ResumePoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


@dataclass(frozen=True)
class CheckpointChoice:
    """The checkpoint a run continues from (None: from the start), and what was removed to get there."""

    checkpoint: Checkpoint | None
    discarded: tuple[Path, ...]  # incomplete checkpoint folders and temporary ones, removed
    problems: tuple[tuple[str, str], ...]  # (checkpoint folder name, why it was incomplete)


def choose_checkpoint(run_dir: PathLike) -> CheckpointChoice:
    """Pick the checkpoint to continue a run from and clear the way to it: the newest that passes
    ``list_checkpoints``' checks *including* the ``thorough`` one (every state archive read against its
    CRC-32s), so a checkpoint damaged by a power cut is passed over. Removes the incomplete checkpoint
    folders, so the Trainer cannot mix files into them, and the temporary ones (``.tmp-checkpoint-N.partial``
    of a save that never finished, ``.tmp-checkpoint-N.deleting`` of an interrupted rotation).

    ``prepare_resume`` and the engine's out-of-memory retry both continue from this choice. Only the process
    that writes the run may call it."""
    folder = RunFolder(run_dir)
    checkpoints = list_checkpoints(folder)
    checkpoint = None
    for candidate in reversed(checkpoints):  # the newest complete one, read in full before it is trusted
        if candidate.complete:
            # list_checkpoints made every other check already: only the CRC-32 reads are left
            problem = _torch_files_problem(candidate.path, os.listdir(candidate.path), thorough=True)
            if not problem:
                checkpoint = candidate
                break
            checkpoints[checkpoints.index(candidate)] = Checkpoint(candidate.step, candidate.path, problem)
    # Only older checkpoints than the chosen one can be kept: a newer one is incomplete or damaged.
    incomplete = [c for c in checkpoints if not c.complete]
    discarded = discard_unfinished_checkpoints(folder, checkpoints)
    problems = tuple((c.path.name, c.problem) for c in incomplete)
    return CheckpointChoice(checkpoint, tuple(sorted(discarded)), problems)


def discard_unfinished_checkpoints(run_dir: PathLike, checkpoints: list[Checkpoint] | None = None) -> list[Path]:
    """Remove the incomplete checkpoint folders (among ``checkpoints``, as ``list_checkpoints`` judged them)
    and the temporary ones (``.tmp-checkpoint-N.partial`` / ``.deleting``): never resumed from, and they take
    space. Returns what was removed."""
    folder = RunFolder(run_dir)
    if checkpoints is None:
        checkpoints = list_checkpoints(folder)
    discarded = [c.path for c in checkpoints if not c.complete] + _temporary_checkpoints(folder)
    for path in discarded:
        _remove(path)
    if discarded:
        fsync_dir(folder.checkpoints_dir)
    return discarded


def _temporary_checkpoints(folder: RunFolder) -> list[Path]:
    try:
        return [p for p in folder.checkpoints_dir.iterdir() if p.name.startswith(TMP_PREFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def prepare_resume(run_dir: PathLike) -> ResumePoint:
    """Make a stopped, failed or crashed run ready to continue from its newest complete checkpoint.

    First takes the run's resume lock (``.resume.lock`` in the run folder, an exclusive ``flock``), so two
    resumes started at the same instant cannot both pass the checks below; the second is refused at once.
    The returned point holds the lock (see ``ResumePoint``). Then refuses unless the run is positively dead
    (see the module docstring), naming the process and host that still write it. Picks the checkpoint and
    removes incomplete and temporary checkpoint folders (``choose_checkpoint``), and the temporary files its
    dead writer may have left in the run folder; truncates ``metrics.jsonl`` at the first line whose
    ``step`` exceeds the checkpoint's (and drops a torn last line; ``rewind_metrics``); recomputes the
    summary in ``status.json`` from what is kept. The engine then opens a ``RunRecorder`` on the folder and
    emits ``RunStarted(resumed_from_step=point.step, ...)``.

    Raises ``TrainingError`` for a run that is running, being resumed by another process, finished, never
    started, or has no complete checkpoint; ``OutputError`` for a folder that is not a run;
    ``ConfigError`` for an invalid ``run.toml``.
    """
    folder = RunFolder(run_dir)
    if not folder.run_file.is_file():
        raise OutputError(
            f"{folder.path} is not a run folder (no {RUN_FILE})", "pick a folder listed by `workbench runs`"
        )
    _refuse_unless_resumable(folder)  # first without the lock: a refused run is left exactly as it was
    lock = ResumeLock.acquire(folder)
    try:
        _refuse_unless_resumable(folder)  # again under the lock: another resume may have started it meanwhile
        return _prepare_resume_locked(folder, lock)
    except BaseException:
        lock.release()
        raise


def _refuse_unless_resumable(folder: RunFolder) -> None:
    status, detail, record, _ = _observe(folder, STALE_AFTER_S)
    if status is RunStatus.RUNNING:
        raise TrainingError(*_still_running(folder, record, detail))
    refusals = {
        RunStatus.FINISHED: ("has already finished", "start a new run to train further"),
        RunStatus.NEW: ("never started", f"start it with `workbench train {folder.run_file}`"),
    }
    refusal = refusals.get(status)
    if refusal is not None:
        raise TrainingError(f"the run {folder.name} {refusal[0]}; there is nothing to resume", refusal[1])


def _prepare_resume_locked(folder: RunFolder, lock: "ResumeLock") -> ResumePoint:
    config = load_config(folder)
    choice = choose_checkpoint(folder)
    if choice.checkpoint is None:
        raise TrainingError(
            f"the run {folder.name} has no complete checkpoint to resume from",
            "set training.save_steps so that runs save checkpoints, and start the run again",
        )
    for path in _dead_writer_litter(folder):
        _remove(path)
    dropped = rewind_metrics(folder, choice.checkpoint.step)
    return ResumePoint(folder, config, choice.checkpoint, choice.discarded, dropped, choice.problems, lock)


RESUME_LOCK = ".resume.lock"


class ResumeLock:
    """An exclusive, non-blocking ``flock`` on ``RUN_DIR/.resume.lock``, held by the process that resumes
    the run from ``prepare_resume`` to the end of its training.

    The liveness check alone leaves a window: two resumes started at the same instant both find the run
    dead, and both trim it, before either records itself as running. The lock closes it. The kernel drops
    the lock when its holder dies, however it dies, so it never goes stale; the file stays (removing a lock
    file that another process may just have opened would let two processes hold "the" lock). It holds
    ``pid@host`` of the holder, for the refusal message. Where locks are not available (no ``fcntl``:
    Windows; a file system without locks) resuming goes on without one, guarded by the liveness check only.
    """

    def __init__(self, fd: int | None):
        self._fd = fd

    @classmethod
    def acquire(cls, folder: RunFolder) -> "ResumeLock":
        try:
            import fcntl
        except ImportError:
            return cls(None)
        path = folder.path / RESUME_LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:  # a read-only run folder: the resume fails soon enough with its own error
            return cls(None)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_small(fd)
            deadline = time.monotonic() + 0.5
            while not holder and time.monotonic() < deadline:  # the holder writes its note just after locking
                time.sleep(0.01)
                holder = _read_small(fd)
            os.close(fd)
            raise TrainingError(*_being_resumed(folder, holder)) from None
        except OSError:  # ENOLCK, EOPNOTSUPP: this file system has no locks
            os.close(fd)
            return cls(None)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass  # the lock is what counts; the note only improves the message
        return cls(fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock

    def __del__(self) -> None:
        self.release()


def _read_small(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _being_resumed(folder: RunFolder, holder: str) -> tuple[str, str]:
    """Message and hint refusing a resume because another process holds the run's resume lock."""
    status, detail, record, _ = _observe(folder, STALE_AFTER_S)
    if status is RunStatus.RUNNING:  # the other resume has started training: say who trains it
        return _still_running(folder, record, detail)
    pid, _, host = holder.partition("@")
    who = f" (process {pid} on {host})" if pid.isdigit() and host else ""
    return (
        f"another resume is starting the run {folder.name}{who}; only one process may resume a run",
        "wait for it: `workbench runs` shows the run running once it has started; to resume it here instead, "
        f"stop that one first (`workbench control {folder.path} stop`)",
    )


def _still_running(folder: RunFolder, record: _Record | None, detail: str) -> tuple[str, str]:
    """Message and hint refusing to resume a run that a live process may still be writing."""
    stop = f"stop it first with `workbench control {folder.path} stop` (or the window's Stop button)"
    if record is None:  # cannot happen for a RUNNING status; kept for safety
        return f"the run {folder.name} is still running; there is nothing to resume", stop
    if _on_this_host(record):
        return (
            f"the run {folder.name} is still running: process {record.pid} on this machine ({record.hostname}) "
            "is writing it, and resuming now would make two processes write one run folder",
            f"{stop}, wait until `workbench runs` no longer shows it running, then resume; if that process "
            f"hangs, end it (kill {record.pid}) and resume",
        )
    return (
        f"the run {folder.name} is still running: {detail}; resuming here now would make two machines write "
        "one run folder",
        f"{stop} and resume once it has stopped; if {record.hostname} is down or the process was killed, the run "
        f"counts as crashed once its heartbeat is {STALE_AFTER_S:.0f} s old — resume then",
    )


def _dead_writer_litter(folder: RunFolder) -> list[Path]:
    """Temporary files and folders of a dead engine in the run folder: a half-written final adapter, the
    old adapter of an interrupted replacement, the temporary files of status.json and run.toml rewrites
    (``atomic_write_text`` names them ``.tmp-<name>.<random>``). Control-file writes come from other
    processes, which may be alive, and are left alone."""
    prefixes = tuple(f"{TMP_PREFIX}{name}." for name in (ADAPTER_DIR, STATUS_FILE, RUN_FILE))
    try:
        return [p for p in folder.path.iterdir() if p.name.startswith(prefixes)]
    except OSError:
        return []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def rewind_metrics(run_dir: PathLike, step: int | None) -> int:
    """Cut metrics.jsonl after the events of ``step`` (None: before every event that has a step, the
    "before" evaluation and samples at step 0 included, for a run that starts again from scratch) and
    refresh the status summary from what is kept. A torn last line always goes.

    Steps only grow within the file (each resume cuts before appending), so everything from the first
    line with a later step onwards belongs to work the checkpoint does not contain: the run continues
    from ``step`` without any step appearing twice. Returns the number of lines removed. Only the process
    that writes the run may call it (``prepare_resume``, the engine's out-of-memory retry).
    """
    folder = RunFolder(run_dir)
    step = -1 if step is None else step
    try:
        data = folder.metrics_file.read_bytes()
    except FileNotFoundError:
        data = b""
    record = _Record.read(folder) or _Record()
    record.step, record.last_loss, record.best_eval_loss = 0, None, None
    cut = data.rfind(b"\n") + 1  # at least the torn last line goes
    offset = 0
    for line in data[:cut].splitlines(keepends=True):
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("step"), int) and obj["step"] > step:
            cut = offset
            break
        offset += len(line)
        event = event_from_dict(obj) if isinstance(obj, dict) else None
        if isinstance(event, Step):
            record.step, record.last_loss = event.step, event.loss
        elif isinstance(event, Evaluation):
            record.note_eval_loss(event.eval_loss)
    dropped = len(data[cut:].splitlines())
    if cut < len(data):
        with open(folder.metrics_file, "r+b") as fh:
            fh.truncate(cut)
            os.fsync(fh.fileno())
    record.step = max(record.step, step)  # with logging_steps > 1 the checkpoint's step may not be logged
    record.write(folder)
    return dropped


# ---------------------------------------------------------------------------------------- control


@dataclass
class _ControlState:
    """The content of control.json: the state other processes want the run in."""

    stop: bool = False
    pause: bool = False
    checkpoint_requests: int = 0

    @classmethod
    def read(cls, path: Path) -> "_ControlState":
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        requests = data.get("checkpoint_requests")
        return cls(
            stop=data.get("stop") is True,
            pause=data.get("pause") is True,
            checkpoint_requests=requests if isinstance(requests, int) else 0,
        )

    def write(self, path: Path) -> None:
        atomic_write_text(path, json.dumps({**asdict(self), "updated_at": time.time()}) + "\n")


def send_control(run_dir: PathLike, command: str) -> None:
    """Ask the engine recording ``run_dir`` (in any process, on any host sharing the disk) to
    ``stop``, ``pause``, ``resume`` or save a ``checkpoint`` now; it acts within about a step.

    The file is read, changed and replaced atomically; if two processes send at the same instant one
    change can be lost, so one controller (the window) at a time. Commands sent to a run that is not
    running are discarded when it next starts.
    """
    if command not in CONTROL_COMMANDS:
        raise ValueError(f"unknown control command {command!r}; allowed: {', '.join(CONTROL_COMMANDS)}")
    path = RunFolder(run_dir).control_file
    state = _ControlState.read(path)
    if command == "stop":
        state.stop = True
    elif command in ("pause", "resume"):
        state.pause = command == "pause"
    else:
        state.checkpoint_requests += 1
    state.write(path)


class ControlFileWatcher:
    """Applies commands from a run's control.json to a ``RunControl`` (the engine side of ``send_control``).

    Creating it resets the file (see the module docstring). ``poll()`` costs one ``stat`` when the file has
    not changed; otherwise it applies the differences from the last state seen — stop, pause or resume,
    and one checkpoint request per new request — and returns the commands applied. Only changes are
    applied, so in-process requests on the same ``RunControl`` (the window's own buttons) are not undone.
    ``RunRecorder`` runs one from its thread; a caller without a recorder polls it each step.
    """

    def __init__(self, run_dir: PathLike, control: RunControl):
        self.path = RunFolder(run_dir).control_file
        self.control = control
        self._seen = _ControlState(checkpoint_requests=_ControlState.read(self.path).checkpoint_requests)
        self._seen.write(self.path)
        self._signature = _file_signature(self.path)

    def poll(self) -> list[str]:
        signature = _file_signature(self.path)
        if signature == self._signature:
            return []
        self._signature = signature
        state = _ControlState.read(self.path)
        applied = []
        if state.stop and not self._seen.stop:
            self.control.request_stop()
            applied.append("stop")
        if state.pause != self._seen.pause:
            (self.control.request_pause if state.pause else self.control.request_resume)()
            applied.append("pause" if state.pause else "resume")
        if state.checkpoint_requests > self._seen.checkpoint_requests:
            self.control.request_checkpoint()
            applied.append("checkpoint")
        self._seen = state
        return applied


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    # The inode changes on every atomic replace, so this notices a new file even where mtime is coarse.
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


# ---------------------------------------------------------------------------------------- delete


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
