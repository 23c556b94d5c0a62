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

from ..control import RunControl
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
