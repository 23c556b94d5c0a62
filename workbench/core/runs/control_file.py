"""control.json: commands to a running engine from other processes, on this host or any host sharing the disk.

control.json holds the *desired* state ``{"stop": bool, "pause": bool, "checkpoint_requests": int,
"updated_at": float}``, not a queue of commands: ``send_control`` rewrites it atomically and
``ControlFileWatcher`` applies the differences to a ``RunControl``. Several commands sent between two polls
therefore all take effect (pause, then checkpoint-now), and a pause followed by a resume nets out. The
watcher resets the file when it starts, so commands left over from an earlier session (the "stop" that
ended it) do not reach the next one; commands only reach a running engine.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..control import Control
from ..fsutil import atomic_write_text
from .layout import PathLike, RunFolder

CONTROL_COMMANDS = ("stop", "pause", "resume", "checkpoint")
# How often the recorder's thread looks at control.json (one stat() when nothing changed).
CONTROL_POLL_INTERVAL_S = 0.5


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

    def apply(self, command: str) -> None:
        """What one command (a ``CONTROL_COMMANDS`` word) asks of the run: pause/resume set, stop is kept, every
        checkpoint request counts."""
        if command == "stop":
            self.stop = True
        elif command in ("pause", "resume"):
            self.pause = command == "pause"
        else:
            self.checkpoint_requests += 1

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
    state.apply(command)
    state.write(path)


class ControlFileWatcher:
    """Applies commands from a run's control.json to a ``Control`` (a ``RunControl``: the engine side of ``send_control``).

    Creating it resets the file (see the module docstring). ``poll()`` costs one ``stat`` when the file has
    not changed; otherwise it applies the differences from the last state seen — stop, pause or resume,
    and one checkpoint request per new request — and returns the commands applied. Only changes are
    applied, so in-process requests on the same ``RunControl`` (the window's own buttons) are not undone.
    ``RunRecorder`` runs one from its thread; a caller without a recorder polls it each step.
    """

    def __init__(self, run_dir: PathLike, control: Control):
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


class FolderControl:
    """The ``Control`` protocol for a run in another process: requests go to its folder's control.json
    (``send_control``), and the state is read back from there (what a ``ControlFileWatcher`` would apply).

    The engine's watcher resets the file when it starts, so with ``hold_until_running`` a request made before the
    run's recorder exists (while the process still imports torch) is held back and sent once ``status.json``
    shows that the recorder — and its watcher — is there (``flush``, which every request and every state read
    calls); held requests count in the state meanwhile. Checkpoint requests already in the file when this
    object is made are not taken again; several made before one is taken are taken as one, as by a ``RunControl``.
    """

    def __init__(self, run_dir: PathLike, *, hold_until_running: bool = True):
        self.folder = RunFolder(run_dir)
        self.run_dir = self.folder.path
        self.hold_until_running = hold_until_running
        self._held: list[str] = []
        self._checkpoints_taken = _ControlState.read(self.folder.control_file).checkpoint_requests

    # -- requests (any thread) ---------------------------------------------------------------------------
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
        """Send the held requests if the run's recorder is there (or nothing is held back)."""
        if self._held and (not self.hold_until_running or self.folder.status_file.is_file()):
            held, self._held = self._held, []
            for command in held:
                send_control(self.run_dir, command)

    # -- state -------------------------------------------------------------------------------------------
    def _state(self) -> _ControlState:
        self.flush()
        state = _ControlState.read(self.folder.control_file)
        for command in self._held:  # not in the file yet, but asked for
            state.apply(command)
        return state

    @property
    def stop_requested(self) -> bool:
        return self._state().stop

    @property
    def pause_requested(self) -> bool:
        state = self._state()
        return state.pause and not state.stop

    def take_checkpoint_request(self) -> bool:
        requests = self._state().checkpoint_requests
        if requests > self._checkpoints_taken:  # requests made since the last one taken: one checkpoint, as a
            self._checkpoints_taken = requests  # RunControl (and the watcher's poll) makes of them
            return True
        return False

    def wait_while_paused(self, timeout: float | None = None) -> bool:
        """Poll the file (every ``CONTROL_POLL_INTERVAL_S``, as the engine's watcher does) until resumed or stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pause_requested:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            time.sleep(CONTROL_POLL_INTERVAL_S if left is None else min(CONTROL_POLL_INTERVAL_S, left))
        return True


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    # The inode changes on every atomic replace, so this notices a new file even where mtime is coarse.
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
