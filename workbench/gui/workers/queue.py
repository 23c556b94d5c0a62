"""The window's queue runner: ``core.run_queue.run_queue`` on a job thread, reporting each entry's start and end.

Each run of the queue is its own process (as with ``workbench queue run``), so a run that fails or crashes takes
neither the queue nor the window with it. ``request_stop`` asks the current run to stop after its step (it saves its
adapter and a checkpoint) and leaves the rest pending; the window's own cancel (on closing) does the same.
"""

from __future__ import annotations

import threading
from pathlib import Path

from PySide6.QtCore import Signal

from .jobs import Worker


class QueueWorker(Worker):
    entry = Signal(object)  # core.run_queue.QueueEntry, at its start and at its end
    what = "Running the queue"

    def __init__(self, runs_root: str | Path, *, continue_on_error: bool = True):
        super().__init__()
        self._root = Path(runs_root)
        self._continue = continue_on_error
        self._stop = threading.Event()

    def request_stop(self) -> None:
        """Any thread: stop the current run after its step and start no further one."""
        self._stop.set()

    def work(self):
        from workbench.core.run_queue import run_queue

        return run_queue(self._root, continue_on_error=self._continue,
                         should_stop=lambda: self._stop.is_set() or self.should_stop(),
                         report=lambda e: self.post("entry", e))
