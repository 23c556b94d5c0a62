"""A queue of runs, run one after another on this machine: ``workbench queue add/list/run/remove``, and sweeps.

The queue lives beside the runs it makes, in ``<runs_root>/.queue/`` (a dot folder, so run listings skip it)::

    .queue/
      0001.toml   the run file as queued (runs_root made absolute, so the queue runs from any folder)
      0001.json   its state: name, group, status (pending, running, finished, stopped, failed), run folder,
                  exit code, the one-line message of a failure, times — replaced atomically
      0001.log    what the run printed
      order.json  the order of the entries, once one was moved (``move_entry``); entries it does not list come
                  after the listed ones, by number
      .lock       held while an entry is added or moved (numbers stay unique) ; .runner.lock: held by the one runner

Each run is started as its own process (``workbench train FILE --run-dir DIR``): a run that fails, runs out of
memory or crashes cannot take the queue down with it, every run starts with a clean process (no memory carried
over from the one before), and the run folder is an ordinary one. With ``continue_on_error`` (the default) a
failed run is recorded and the next one starts; a stop request stops the current run after its step (it saves
its adapter and checkpoint, and can be resumed) and leaves the rest pending.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable

from .config import RunConfig
from .errors import WorkbenchError
from .exitcodes import EXIT_OK, EXIT_STOPPED
from .fsutil import atomic_write_text

__all__ = ["QUEUE_DIR", "QueueEntry", "queue_dir", "add_to_queue", "queue_entries", "remove_entry", "move_entry",
           "run_queue", "QueueBusy"]

QUEUE_DIR = ".queue"
ORDER_FILE = "order.json"
PENDING, RUNNING, FINISHED, STOPPED, FAILED = "pending", "running", "finished", "stopped", "failed"


class QueueBusy(WorkbenchError):
    pass


@dataclass
class QueueEntry:
    number: int
    name: str
    group: str | None = None
    status: str = PENDING
    run_dir: str | None = None
    exit_code: int | None = None
    message: str = ""
    added_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None

    @property
    def id(self) -> str:
        return f"{self.number:04d}"


def queue_dir(runs_root: str | Path) -> Path:
    from .runs import output_path

    return output_path(runs_root) / QUEUE_DIR


def _state_file(folder: Path, entry: QueueEntry) -> Path:
    return folder / f"{entry.id}.json"


def _save(folder: Path, entry: QueueEntry) -> None:
    atomic_write_text(_state_file(folder, entry), json.dumps(asdict(entry), indent=1) + "\n")


def add_to_queue(config: RunConfig, *, name: str | None = None) -> QueueEntry:
    """Queue a run of ``config`` (in the queue of its own ``runs_root``) and return its entry."""
    from .locks import acquire
    from .runs import default_run_name, output_path

    config = config.copy_with(output={"runs_root": str(output_path(config.output.runs_root))})
    folder = queue_dir(config.output.runs_root)
    folder.mkdir(parents=True, exist_ok=True)
    with acquire(folder / ".lock", timeout=30):
        number = max((e.number for e in queue_entries(config.output.runs_root)), default=0) + 1
        entry = QueueEntry(number, name or config.output.name or default_run_name(config), config.output.group,
                           added_at=time.time())
        config.save(folder / f"{entry.id}.toml")
        _save(folder, entry)
    return entry


def queue_entries(runs_root: str | Path) -> list[QueueEntry]:
    """Every entry of the queue under ``runs_root``, in order; an unreadable state file is skipped."""
    folder = queue_dir(runs_root)
    known = {f.name for f in fields(QueueEntry)}
    entries = []
    for path in sorted(folder.glob("[0-9][0-9][0-9][0-9].json")) if folder.is_dir() else ():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries.append(QueueEntry(**{k: v for k, v in data.items() if k in known}))
        except (OSError, ValueError, TypeError):
            continue
    rank = {number: i for i, number in enumerate(_read_order(folder))}
    entries.sort(key=lambda e: (rank.get(e.number, len(rank)), e.number))
    return entries


def _read_order(folder: Path) -> list[int]:
    """The moved order (a list of entry numbers); [] when nothing was moved or the file is unreadable."""
    try:
        order = json.loads((folder / ORDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [n for n in order if isinstance(n, int)] if isinstance(order, list) else []


def move_entry(runs_root: str | Path, number: int, offset: int) -> list[QueueEntry]:
    """Move a pending entry ``offset`` places up (negative) or down the queue; returns the queue in its new order.
    Only the order file is written, never an entry's state, so a runner updating an entry meanwhile loses nothing;
    the runner picks the first pending entry in this order each time it starts one."""
    from .locks import acquire

    folder = queue_dir(runs_root)
    with acquire(folder / ".lock", timeout=30):
        entries = queue_entries(runs_root)
        index = next((i for i, e in enumerate(entries) if e.number == number), None)
        if index is None:
            raise WorkbenchError(f"the queue in {folder} has no entry {number}", "see `workbench queue list`")
        if entries[index].status != PENDING:
            raise WorkbenchError(f"entry {number} ({entries[index].name}) is {entries[index].status}",
                                 "only pending entries can be moved")
        moved = entries.pop(index)
        entries.insert(max(0, min(len(entries), index + offset)), moved)
        atomic_write_text(folder / ORDER_FILE, json.dumps([e.number for e in entries]) + "\n")
    return entries


def remove_entry(runs_root: str | Path, number: int) -> QueueEntry:
    """Take a pending (or ended) entry off the queue; its run folder, if any, is kept."""
    folder = queue_dir(runs_root)
    entry = next((e for e in queue_entries(runs_root) if e.number == number), None)
    if entry is None:
        raise WorkbenchError(f"the queue in {folder} has no entry {number}", "see `workbench queue list`")
    if entry.status == RUNNING:
        raise WorkbenchError(f"entry {number} ({entry.name}) is running", "stop it first: workbench control RUN stop")
    for suffix in (".toml", ".json", ".log"):
        (folder / f"{entry.id}{suffix}").unlink(missing_ok=True)
    return entry


def run_queue(runs_root: str | Path, *, only: Iterable[int] | None = None, continue_on_error: bool = True,
              should_stop: Callable[[], bool] = lambda: False, report: Callable[[QueueEntry], None] = lambda e: None,
              command: Callable[[Path, Path], list[str]] | None = None) -> list[QueueEntry]:
    """Run the pending entries (``only``: just those numbers) one after another; returns the entries it ran.

    ``report`` is called when an entry starts and when it ends; ``should_stop`` is polled while a run goes on
    (once true, the current run is asked to stop after its step and no further entry starts). ``command(run_file,
    run_dir)`` gives the command line of one run (default: this Python running ``workbench train``)."""
    from .locks import LockBusy, acquire

    folder = queue_dir(runs_root)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        runner = acquire(folder / ".runner.lock", timeout=0)
    except LockBusy as busy:
        raise QueueBusy(f"the queue in {folder} is being run already ({busy.holder or 'another process'})",
                        "wait for it to end, or add runs to it: the running queue starts them in turn") from None
    wanted = set(only) if only is not None else None
    ran: list[QueueEntry] = []
    with runner:
        while not should_stop():
            entry = next((e for e in queue_entries(runs_root) if e.status == PENDING
                          and (wanted is None or e.number in wanted)), None)
            if entry is None:
                break
            _run_entry(folder, entry, should_stop, report, command or _default_command)
            ran.append(entry)
            if entry.status == FAILED and not continue_on_error:
                break
    return ran


def _default_command(run_file: Path, run_dir: Path) -> list[str]:
    from .selfcmd import workbench_command  # the frozen app's own entry, or this Python's ``-m workbench``

    return workbench_command("train", str(run_file), "--run-dir", str(run_dir), "--quiet")


def _run_entry(folder: Path, entry: QueueEntry, should_stop: Callable[[], bool], report: Callable[[QueueEntry], None],
               command: Callable[[Path, Path], list[str]]) -> None:
    from .fsutil import remove_empty_dirs
    from .runs import RunStatus, claim_run_dir, run_status, send_control

    run_file = folder / f"{entry.id}.toml"
    try:
        config = RunConfig.from_toml(run_file)
        run_dir, created = claim_run_dir(config)
    except WorkbenchError as exc:
        _end(folder, entry, FAILED, None, exc.message.splitlines()[0])
        report(entry)
        return
    entry.status, entry.run_dir, entry.started_at = RUNNING, str(run_dir), time.time()
    _save(folder, entry)
    report(entry)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(folder / f"{entry.id}.log", "ab") as log:
        proc = subprocess.Popen(command(run_file, run_dir), stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
        stop_sent = False
        while proc.poll() is None:
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if should_stop() and not stop_sent and run_status(run_dir) is RunStatus.RUNNING:
                send_control(run_dir, "stop")  # the run saves its adapter and a checkpoint, then exits
                stop_sent = True
    code = proc.returncode
    status = run_status(run_dir).value if (run_dir / "run.toml").is_file() else ""
    if code == EXIT_OK and status == "finished":
        _end(folder, entry, FINISHED, code, "")
    elif code == EXIT_STOPPED or status == "stopped":
        _end(folder, entry, STOPPED, code, "stopped before its target; `workbench resume` continues it")
    else:
        _end(folder, entry, FAILED, code, _last_error(folder / f"{entry.id}.log"))
    if not (run_dir / "run.toml").is_file():  # refused before the run began: no empty folder left behind
        remove_empty_dirs(created)
        entry.run_dir = None
        _save(folder, entry)
    report(entry)


def _end(folder: Path, entry: QueueEntry, status: str, code: int | None, message: str) -> None:
    entry.status, entry.exit_code, entry.message, entry.ended_at = status, code, message, time.time()
    _save(folder, entry)


def _last_error(log: Path) -> str:
    """The run's own one-line message (``error: …`` and its hint), from the end of its log."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
    except OSError:
        return "the run failed (its log cannot be read)"
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    if not errors:
        return next((line for line in reversed(lines) if line.strip()), "the run failed")[:300]
    text = lines[errors[-1]][len("error: "):]
    hint = next((line for line in lines[errors[-1] + 1:] if line.startswith("hint: ")), "")
    return (text + (f" ({hint[len('hint: '):]})" if hint else ""))[:500]
