"""Training in the window's process: a new run (``core.training.run``) or a resumed one (``resume``), every
engine event re-emitted as ``event(object)`` on the GUI thread."""

from __future__ import annotations

from PySide6.QtCore import Signal

from workbench.core.config import RunConfig
from workbench.core.events import RunStarted

from ..process_switches import freeze_long_lived_objects, lower_compute_threads_priority
from .jobs import Worker


class TrainWorker(Worker):
    """Runs ``core.training.run``; every engine event is re-emitted as ``event(object)`` on the GUI side.

    Events reach the GUI thread through the worker's outbox (``post``); the training panel batches what arrives
    and redraws at most 20 times a second, so a fast engine cannot flood the event loop with repaints.
    """

    event = Signal(object)
    what = "Training"

    def __init__(self, config: RunConfig, control):
        super().__init__()
        self._config = config
        self._control = control

    def emit(self, event) -> None:  # the engine's sink interface; called on the worker thread
        if isinstance(event, RunStarted):
            freeze_long_lived_objects()  # model and data are loaded: keep them out of every later collection
        self.post("event", event)

    def work(self):
        import torch  # noqa: F401 - imported before lowering its compute threads' priority (it starts them)

        from workbench.core.training import run

        lower_compute_threads_priority()
        return run(self._config, self, self._control)


class ResumeWorker(TrainWorker):
    """Resumes a stopped or crashed run from its newest complete checkpoint (``core.training.resume``)."""

    def __init__(self, run_dir, control):
        Worker.__init__(self)
        self._run_dir = run_dir
        self._control = control

    def work(self):
        import torch  # noqa: F401 - imported before lowering its compute threads' priority (it starts them)

        from workbench.core.training import resume

        lower_compute_threads_priority()
        return resume(self._run_dir, self, self._control)
