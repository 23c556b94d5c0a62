"""Cooperative control of a running job: stop, pause/resume, save-a-checkpoint-now.

``Control`` is what the engine (training, merge, GGUF export) reads and what a window or a command line
asks of it; two kinds satisfy it: ``RunControl`` here, in-process flags, and ``runs.FolderControl``, the same
requests carried to another process through a run folder's control file.

``RunControl``: plain thread-safe flags. The engine checks them between optimizer steps (never mid-step), so a stop or
a pause takes effect within one step and never leaves the model half-updated. The GUI calls the
``request_*`` methods from its own thread; the CLI calls them from a signal handler.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable


@runtime_checkable
class Control(Protocol):
    """Requests to a running job (any thread, any process for a folder control) and the state the job reads.

    A stop wins over a pause: once stopped, a run is not paused, and a paused run waiting in
    ``wait_while_paused`` wakes up to stop. Checkpoint requests are taken once.
    """

    def request_stop(self) -> None: ...

    def request_pause(self) -> None: ...

    def request_resume(self) -> None: ...

    def request_checkpoint(self) -> None: ...

    @property
    def stop_requested(self) -> bool: ...

    @property
    def pause_requested(self) -> bool: ...

    def take_checkpoint_request(self) -> bool:
        """True once after one or more requests made since it last returned True (a burst is one checkpoint)."""
        ...

    def wait_while_paused(self, timeout: float | None = None) -> bool:
        """Block until resumed or stopped; False if ``timeout`` ran out while still paused."""
        ...


class RunControl:
    def __init__(self) -> None:
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()  # not paused
        self._checkpoint = threading.Event()

    # -- requests (any thread) -------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()
        self._resume.set()  # a paused run must wake up to stop

    def request_pause(self) -> None:
        if not self._stop.is_set():
            self._resume.clear()

    def request_resume(self) -> None:
        self._resume.set()

    def request_checkpoint(self) -> None:
        self._checkpoint.set()

    # -- state (engine thread) -------------------------------------------------------------------------
    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def pause_requested(self) -> bool:
        return not self._resume.is_set()

    def take_checkpoint_request(self) -> bool:
        """True once per request: the engine saves a checkpoint and the flag clears."""
        if self._checkpoint.is_set():
            self._checkpoint.clear()
            return True
        return False

    def wait_while_paused(self, timeout: float | None = None) -> bool:
        """Block until resumed or stopped. Returns False if ``timeout`` ran out while still paused."""
        return self._resume.wait(timeout)
