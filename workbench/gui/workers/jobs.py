"""The job framework: a ``Worker`` (inputs, ``work()``, signals), the ``Job`` that runs it on its own thread,
and ``JobRunner``, the one way anything starts a job (the window owns one; a dialog used on its own makes its own).

Workers never touch widgets. Each gets plain inputs (a frozen config, a path), does its job in
``work()``, and reports through signals: ``result(object)`` with plain data, ``failed(message, traceback)``
for any exception (a ``WorkbenchError`` keeps its message and hint; anything else is a bug and keeps its
traceback), and always ``finished`` last. Heavy modules (torch, transformers) are imported inside
``work()``, so importing this module costs nothing.

How reports cross threads: the job thread never calls into Qt. It puts ``(signal name, arguments)`` into
the worker's outbox (a thread-safe queue), and a ``Job`` on the GUI thread drains the outbox every few
milliseconds and emits the worker's signals there. Emitting Qt signals from the job thread itself (a
QThread, queued connections) hung the window tests intermittently: a job thread vanished in the middle of
an ``emit`` of a finished job's result, so its thread never reported that it had ended, and destroying the
window later aborted the process ("QThread: Destroyed while thread is still running"). With a plain
Python thread and a queue there is no Qt object whose lifetime depends on the job thread, a job that dies
in any way is noticed (its thread is no longer alive), and receivers are ordinary GUI-thread slots.
Tried again with the garbage collector kept on the GUI thread (``process_switches``): a runner QObject moved to
a QThread, reports as queued signals. Two window tests then never saw their jobs end when the window closed, and
a job that ignores cancelling (its QThread freed while still running) aborted the process ("QThread: Destroyed
while thread is still running"); a Python thread that outlives its window only runs on. ``docs/dev/qthread_jobs_repro.py``
reproduces both on their own, beside this path surviving the same job.

Cancelling: ``Job.cancel()`` asks the worker to stop (``Worker.should_stop()`` turns true; workers with a
``RunControl`` also request a stop there) and from then on drops what the job reports, so nothing it sends
reaches a widget. A closing window cancels every job, waits about a second for their threads, and then
``abandon()`` the rest: a Python thread cannot be killed, so it runs on to its next check (or, as a
daemon thread, until the process exits) while the window goes.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from PySide6.QtCore import QObject, QTimer, Signal

from ..process_switches import apply_process_switches

POLL_INTERVAL_MS = 10  # how often the GUI thread collects a running job's reports: fast enough to stream tokens


class JobCancelled(Exception):
    """Raised on the job thread (from a progress sink, say) once the job was cancelled: it reports nothing."""


class Worker(QObject):
    """A job's inputs, its ``work()`` (run on the job thread) and its signals (emitted on the GUI thread)."""

    result = Signal(object)
    failed = Signal(str, str)  # message (with hint), details: where the log of an unexpected error is
    finished = Signal()
    what = "A background job"  # names the job in the one line an unexpected error becomes

    def __init__(self) -> None:
        super().__init__()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Any thread: ask the job to stop at its next check. Workers holding a ``RunControl`` stop it too."""
        self._cancelled.set()
        control = getattr(self, "_control", None)
        if control is not None:
            control.request_stop()

    def should_stop(self) -> bool:
        """The job thread's check between units of work (a core function's ``should_stop`` callable)."""
        return self._cancelled.is_set()

    def work(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def post(self, signal: str, *args: Any) -> None:
        """Called on the job thread: ``signal`` is emitted with ``args`` on the GUI thread, in order."""
        self._outbox.put((signal, args))

    def run(self) -> None:
        """The job thread's body."""
        from workbench.core.errors import WorkbenchError

        try:
            result = self.work()
            if not self._cancelled.is_set():
                self.post("result", result)
        except JobCancelled:
            pass
        except WorkbenchError as exc:
            self.post("failed", exc.message + (f"\n\n{exc.hint}" if exc.hint else ""), "")
        except BaseException as exc:  # a bug: one line for the user, the traceback into a log file
            self.post("failed", *unexpected_error_text(self.what, exc))
        finally:
            self.post("finished")

    def deliver(self) -> bool:
        """Called on the GUI thread: emit what the job has posted so far. True once ``finished`` was emitted."""
        done = False
        while True:
            try:
                name, args = self._outbox.get_nowait()
            except queue.Empty:
                return done
            getattr(self, name).emit(*args)
            done = done or name == "finished"


def unexpected_error_text(what: str, exc: BaseException) -> tuple[str, str]:
    """(one line naming what failed, the exception and the crash log; the log's path) for a bug's report.
    The traceback goes into the log (``core.crashlog``, as the CLI's guarded entry point does), never on screen."""
    from workbench.core.crashlog import report_unexpected

    line, where, log = report_unexpected(what, exc)
    return f"{line}. {where[0].upper()}{where[1:]}.", str(log or "")


# Workers of abandoned jobs, with their threads: kept referenced so that a worker (a QObject) is never freed
# on its job thread when that thread finally ends; pruned on the GUI thread once their threads are gone.
_abandoned: list[tuple[threading.Thread, Worker]] = []


class Job(QObject):
    """One worker on one thread, watched from the GUI thread; says ``ended`` once the thread is gone (or the
    job was abandoned).

    Only then may the window count the job as over, so a window closing with jobs still running waits for
    them (without blocking) instead of leaving a thread behind.
    """

    ended = Signal()

    def __init__(self, worker: Worker, parent: QObject):
        super().__init__(parent)
        self.worker: Worker | None = worker
        self._finished = False
        self._silenced = False  # cancelled: what the job still reports is dropped
        self._thread = threading.Thread(target=worker.run, name=f"job-{type(worker).__name__}", daemon=True)
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._poll)

    def start(self) -> None:
        self._thread.start()
        self._timer.start()

    def cancel(self) -> None:
        """Ask the job to stop and drop whatever it reports from now on: no slot of a widget runs for it again."""
        if self.worker is not None:
            self.worker.cancel()
        self._silenced = True

    def abandon(self) -> None:
        """Stop watching a cancelled job whose thread has not ended yet; ``ended`` follows at once."""
        worker = self.worker
        if worker is None:
            return
        self.cancel()
        _abandoned[:] = [(t, w) for t, w in _abandoned if t.is_alive()]  # freed here, on the GUI thread
        _abandoned.append((self._thread, worker))
        self._end()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _poll(self) -> None:
        worker = self.worker
        if worker is None:
            return
        alive = self._thread.is_alive()  # read before draining: whatever it posted before dying is in the outbox
        if self._silenced:
            while not worker._outbox.empty():
                worker._outbox.get_nowait()
        else:
            self._finished = worker.deliver() or self._finished
        if alive:
            return
        if not self._finished and not self._silenced:  # the thread died without reporting (a native crash)
            worker.failed.emit("The background job ended without reporting a result.", "")
            worker.finished.emit()
        self._end()

    def _end(self) -> None:
        self._timer.stop()
        self.worker = None  # drop what the job held (a model, say) now, on the GUI thread
        self.ended.emit()
        self.deleteLater()


class JobRunner(QObject):
    """Starts jobs and counts them until their threads have ended: the one entry point for a job, used by the
    window (closing waits for its count to fall to 0) and by every dialog and panel it hands ``start`` to.

    ``accepting`` false (its owner is closing) cancels a job at once when it is started by a late slot.
    ``idle`` says the last counted job has ended."""

    idle = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.running: set[Job] = set()
        self.accepting = True

    @property
    def count(self) -> int:
        return len(self.running)

    def start(self, worker: Worker) -> Job:
        """Run ``worker`` on a new thread; its signals arrive on the GUI thread; the job's ``ended`` follows
        ``finished`` once the thread has exited, and only then does the job stop counting."""
        apply_process_switches()  # the window's start-up did this; a dialog used on its own may not have
        job = Job(worker, self)
        self.running.add(job)
        job.ended.connect(lambda: self._ended(job))
        job.start()
        if not self.accepting:  # nothing new may run once the owner is closing (a late slot started it)
            job.cancel()
        return job

    def cancel_all(self) -> None:
        for job in list(self.running):
            job.cancel()

    def abandon_all(self) -> None:
        """Stop watching every job still running (each was cancelled); each says ``ended`` at once."""
        for job in list(self.running):
            job.abandon()

    def _ended(self, job: Job) -> None:
        if job in self.running:
            self.running.discard(job)
            if not self.running:
                self.idle.emit()


class FunctionWorker(Worker):
    """Runs one plain function; for jobs whose whole output is a return value. With ``stoppable`` the function
    gets the worker's ``should_stop`` (a core function's cancel hook) as its only argument."""

    def __init__(self, fn: Callable[..., Any], what: str = "A background job", *, stoppable: bool = False):
        super().__init__()
        self._fn, self.what, self._stoppable = fn, what, stoppable

    def work(self) -> Any:
        return self._fn(self.should_stop) if self._stoppable else self._fn()
