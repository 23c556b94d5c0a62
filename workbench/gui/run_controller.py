"""A run trained in the window's process: starting it (new or resumed), its control (stop, pause, checkpoint
now), its events and its end, and what happens to it when the window closes ("keep it running" hands it to a
separate process that outlives the window).

``RunController`` owns that state and reaches widgets only through its signals: the window wires ``started`` to
the Train tab's reset, ``event`` to its plots, and ``done`` / ``failed`` / ``ended`` to the Train tab, the message
box and its own signals. Runs in a separate process are ``external_run.ExternalRunController``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, Signal

from workbench.core.config import RunConfig
from workbench.core.control import RunControl

from . import workers


class RunController(QObject):
    started = Signal(object)  # the run's RunControl: the Train tab resets for it (before the thread starts)
    event = Signal(object)  # every engine event
    done = Signal(object)  # core.training.TrainResult
    failed = Signal(str, str)  # message, details
    ended = Signal()  # after either of the two above
    handOffFailed = Signal(str)  # "keep it running" could not start the process that continues the run

    def __init__(self, start_job: Callable[[workers.Worker], workers.Job], parent: QObject | None = None):
        super().__init__(parent)
        self._start_job = start_job
        self.control: RunControl | None = None  # the running run's, while one runs
        self.close_choice = ""  # "stop" or "continue" once the closing question was answered
        self.continued_process = None  # the `workbench resume` process a run was handed to on quitting
        self.done.connect(self._continue_elsewhere)
        self.ended.connect(self._forget_control)

    def start(self, config: RunConfig) -> workers.Job:
        """A new run of ``config`` in this process."""
        control = RunControl()
        return self._run(workers.TrainWorker(config, control), control)

    def resume(self, run_dir: str) -> workers.Job:
        """Resume a stopped or crashed run from its newest complete checkpoint."""
        control = RunControl()
        return self._run(workers.ResumeWorker(run_dir, control), control)

    def _run(self, worker: workers.TrainWorker, control: RunControl) -> workers.Job:
        self.control = control
        worker.event.connect(self.event)
        worker.result.connect(self.done)
        worker.failed.connect(self.failed)
        worker.finished.connect(self.ended)
        self.started.emit(control)
        return self._start_job(worker)

    def _forget_control(self) -> None:
        self.control = None

    def _continue_elsewhere(self, result) -> None:
        """The run stopped for "keep it running": resume it in a process that outlives the window."""
        if self.close_choice != "continue" or getattr(result, "status", "") != "stopped":
            return
        from workbench.core.external_run import continue_detached

        try:
            self.continued_process = continue_detached(Path(result.run_dir))
        except OSError as exc:
            self.close_choice = ""  # the window stays open, with the message on screen
            self.handOffFailed.emit(f"The process that continues {result.run_dir} could not start: {exc}. "
                                    f"The run is "
                                    f"stopped with a checkpoint; resume it from the Runs tab or with "
                                    f"`workbench resume {result.run_dir}`.")
