"""Resuming a run: the checks that a run is positively dead, its resume lock, and cutting its metrics back.

``prepare_resume`` only continues a run that is positively dead: an outcome was reported, or, for a run
recorded as running, its process is gone (same host) or its heartbeat is stale (other host; see ``status``).
Otherwise it refuses and names the host and process, so two processes never write one run folder. Two resumes
started at the same instant would both pass that check; the first takes the run's resume lock
(``.resume.lock``, an exclusive lock held until its training ends and dropped by the kernel if it dies:
``core.locks``) and the second is refused (``ResumeLock``).

Resuming keeps ``metrics.jsonl`` append-only with one exception: ``prepare_resume`` truncates the file
after the last event of the checkpoint's step (and drops a torn last line), so the resumed engine appends
step N+1 right after step N, and readers never see a step twice or a gap. Readers stay simple: no
de-duplication, no session logic.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import locks
from ..errors import OutputError, TrainingError
from ..events import Evaluation, RunStarted, Step, event_from_dict
from ..fsutil import TMP_PREFIX
from . import status
from .checkpoints import Checkpoint, choose_checkpoint, newest_sound_checkpoint, remove_path, unsafe_state_file
from .layout import ADAPTER_DIR, RUN_FILE, STATUS_FILE, PathLike, RunFolder, load_config
from .metrics import read_events
from .status import RunStatus, StatusRecord, observe, on_this_host

if TYPE_CHECKING:
    from ..config import RunConfig

RESUME_LOCK = ".resume.lock"


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
    target: int | None = None  # the step the run ends at (training.max_steps, or the checkpoint's own count)

    @property
    def step(self) -> int:
        return self.checkpoint.step

    @property
    def at_target(self) -> bool:
        """The checkpoint holds the run's last step: the run was killed while its final adapter was written.
        It is finished from the checkpoint, with no step trained (training on would go past the target)."""
        return self.target is not None and self.step >= self.target

    def describe(self) -> str:
        """One line for the console and the log panel: which checkpoint, and what was thrown away."""
        total = self.target
        if self.at_target:
            text = (f"{self.checkpoint.path.name} holds the run's last step ({self.step} of {total}): writing the "
                    "final adapter from it, no step is trained")
        else:
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


def prepare_resume(run_dir: PathLike) -> ResumePoint:
    """Make a stopped, failed or crashed run ready to continue from its newest complete checkpoint.

    First takes the run's resume lock (``.resume.lock`` in the run folder, ``ResumeLock``), so two resumes
    started at the same instant cannot both pass the checks below; the second is refused at once.
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
    _refuse_what_cannot_continue(folder)  # a changed run.toml, no checkpoint, an unloadable state file
    lock = ResumeLock.acquire(folder)
    try:
        _refuse_unless_resumable(folder)  # again under the lock: another resume may have started it meanwhile
        return _prepare_resume_locked(folder, lock)
    except BaseException:
        lock.release()
        raise


def _refuse_unless_resumable(folder: RunFolder) -> None:
    state, detail, record, _ = observe(folder, status.STALE_AFTER_S)
    if state is RunStatus.RUNNING:
        raise TrainingError(*_still_running(folder, record, detail))
    refusals = {
        RunStatus.FINISHED: ("has already finished", "start a new run to train further"),
        RunStatus.NEW: ("never started", f"start it with `workbench train {folder.run_file}`"),
    }
    refusal = refusals.get(state)
    if refusal is not None:
        raise TrainingError(f"the run {folder.name} {refusal[0]}; there is nothing to resume", refusal[1])


def _refuse_what_cannot_continue(folder: RunFolder) -> None:
    """The refusals that need no change to the run folder, made before its lock is taken and before anything
    is removed or cut: run.toml no longer describes the run's adapter, there is no complete checkpoint, or the
    newest one holds a state file that the safe loader refuses."""
    config = load_config(folder)
    _refuse_changed_config(folder, config)
    checkpoint = newest_sound_checkpoint(folder)
    if checkpoint is None:
        raise TrainingError(*_no_checkpoint(folder, config))
    _refuse_unsafe_states(folder, checkpoint)
    target = _target_steps(config, checkpoint)
    if target is not None and checkpoint.step > target:
        raise TrainingError(
            f"the run {folder.name}'s {checkpoint.path.name} is past the run's target: {RUN_FILE} sets "
            f"training.max_steps = {target}, the checkpoint holds step {checkpoint.step}; resuming would not train "
            "anything the run asks for",
            f"set training.max_steps in {folder.run_file} to at least {checkpoint.step} (back to what it was), "
            "or start a new run",
        )


def _prepare_resume_locked(folder: RunFolder, lock: "ResumeLock") -> ResumePoint:
    config = load_config(folder)
    choice = choose_checkpoint(folder)
    if choice.checkpoint is None:  # the newest complete checkpoint failed its CRC read, and no older one is left
        raise TrainingError(*_no_checkpoint(folder, config, choice.problems))
    _refuse_unsafe_states(folder, choice.checkpoint)  # an older one than the one checked before the lock
    for path in _dead_writer_litter(folder):
        remove_path(path)
    dropped = rewind_metrics(folder, choice.checkpoint.step)
    target = _target_steps(config, choice.checkpoint)
    return ResumePoint(folder, config, choice.checkpoint, choice.discarded, dropped, choice.problems, lock, target)


# The fields that decide what the adapter in a checkpoint is: resuming with other values would load the
# checkpoint into a different model (or fail half-way, after the metrics were cut).
_IDENTITY_FIELDS = (("model", "source"), ("model", "revision"), ("model", "task"), ("lora", "r"),
                    ("lora", "target_modules"), ("lora", "rank_pattern"), ("lora", "use_dora"))


def _refuse_changed_config(folder: RunFolder, config: RunConfig) -> None:
    """Refuse a run whose run.toml names another model or adapter shape than the one its checkpoints were trained
    with (the configuration the run's latest ``run_started`` event recorded)."""
    started = next((e for e in reversed(read_events(folder)) if isinstance(e, RunStarted)), None)
    if started is None or not isinstance(started.config, dict):
        return  # never started training: the "no checkpoint" refusal says what to do
    now = config.to_dict()
    for section, name in _IDENTITY_FIELDS:
        before, after = _field(started.config, section, name), _field(now, section, name)
        if before is _MISSING or _normal(before) == _normal(after):
            continue
        raise TrainingError(
            f"the run {folder.name} cannot be resumed: {RUN_FILE} now sets {section}.{name} = {_show(after)}, but "
            f"the run was trained with {section}.{name} = {_show(before)}; its checkpoints hold an adapter for that",
            f"set {section}.{name} back to {_show(before)} in {folder.run_file} to resume, or start a new run "
            f"(`workbench train {folder.run_file} --run-dir NEW_FOLDER`) to train with the new value",
        )


_MISSING = object()


def _field(config: dict, section: str, name: str) -> Any:
    """A field of a ``RunConfig.to_dict()``, which leaves unset (None) fields out; _MISSING without the section."""
    part = config.get(section)
    return part.get(name) if isinstance(part, dict) else _MISSING


def _normal(value: Any) -> Any:
    """Compare as JSON would store it; module lists in any order."""
    value = json.loads(json.dumps(value))
    return sorted(value, key=str) if isinstance(value, list) else value


def _show(value: Any) -> str:
    return "(not set)" if value is None or value is _MISSING else json.dumps(value)


def _no_checkpoint(folder: RunFolder, config: RunConfig, problems: tuple = ()) -> tuple[str, str]:
    """Message and hint for a run with no complete checkpoint; the hint depends on whether checkpoints were on."""
    message = f"the run {folder.name} has no complete checkpoint to resume from"
    if problems:
        message += "; " + "; ".join(f"{name}: {problem}" for name, problem in problems)
    save_steps = config.training.save_steps
    if not save_steps:
        return message, "set training.save_steps so that runs save checkpoints, and start the run again"
    return (message, f"training.save_steps is {save_steps}, but the run stopped before it completed a checkpoint "
                     f"(none of its first {save_steps} steps was saved): start it again with "
                     f"`workbench train {folder.run_file} --run-dir NEW_FOLDER`")


def _refuse_unsafe_states(folder: RunFolder, checkpoint: Checkpoint) -> None:
    refused = unsafe_state_file(checkpoint.path)
    if refused is not None:
        name, why = refused
        raise TrainingError(
            f"the run {folder.name} cannot be resumed: {checkpoint.path / name} does not load safely ({why}); "
            "nothing was changed",
            "that file holds more than tensors and plain values, so it is not loaded (it could run code); if you "
            f"did not put it there, the checkpoint was altered: remove {checkpoint.path} to resume from an earlier "
            "checkpoint, or start the run again",
        )


def _target_steps(config: RunConfig, checkpoint: Checkpoint) -> int | None:
    """The step the run ends at: ``training.max_steps`` when set, otherwise the total the Trainer computed from
    the epochs and recorded in the checkpoint."""
    if config.training.max_steps:
        return config.training.max_steps
    try:
        total = json.loads((checkpoint.path / "trainer_state.json").read_bytes()).get("max_steps")
    except (OSError, ValueError, AttributeError):
        return None
    return total if isinstance(total, int) and total > 0 else None


class ResumeLock:
    """The run's resume lock (``core.locks`` on ``RUN_DIR/.resume.lock``), held by the process that resumes the
    run from ``prepare_resume`` to the end of its training.

    The liveness check alone leaves a window: two resumes started at the same instant both find the run
    dead, and both trim it, before either records itself as running. The lock closes it. The kernel drops
    the lock when its holder dies, however it dies, so it never goes stale; the file stays. The holder's
    ``pid@host`` is in it, for the refusal message. Where locks are not available (a file system without
    them, a read-only run folder) resuming goes on without one, guarded by the liveness check only.
    """

    def __init__(self, hold: locks.FileLockHold | None):
        self._hold = hold

    @classmethod
    def acquire(cls, folder: RunFolder) -> "ResumeLock":
        try:
            return cls(locks.acquire(folder.path / RESUME_LOCK, timeout=0))
        except locks.LockBusy as busy:
            raise TrainingError(*_being_resumed(folder, busy.holder)) from None

    def release(self) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.release()

    def __del__(self) -> None:
        self.release()


def _being_resumed(folder: RunFolder, holder: str) -> tuple[str, str]:
    """Message and hint refusing a resume because another process holds the run's resume lock."""
    state, detail, record, _ = observe(folder, status.STALE_AFTER_S)
    if state is RunStatus.RUNNING:  # the other resume has started training: say who trains it
        return _still_running(folder, record, detail)
    pid, _, host = holder.partition("@")
    who = f" (process {pid} on {host})" if pid.isdigit() and host else ""
    return (
        f"another resume is starting the run {folder.name}{who}; only one process may resume a run",
        "wait for it: `workbench runs` shows the run running once it has started; to resume it here instead, "
        f"stop that one first (`workbench control {folder.path} stop`)",
    )


def _still_running(folder: RunFolder, record: StatusRecord | None, detail: str) -> tuple[str, str]:
    """Message and hint refusing to resume a run that a live process may still be writing."""
    stop = f"stop it first with `workbench control {folder.path} stop` (or the window's Stop button)"
    if record is None:  # cannot happen for a RUNNING status; kept for safety
        return f"the run {folder.name} is still running; there is nothing to resume", stop
    if on_this_host(record):
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
        f"counts as crashed once its heartbeat is {status.STALE_AFTER_S:.0f} s old — resume then",
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
    record = StatusRecord.read(folder) or StatusRecord()
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
