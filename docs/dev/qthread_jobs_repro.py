"""Why the window's jobs run on Python threads, not QThreads: a reproduction.

Each scenario runs in a child process of its own (a Qt abort takes the whole process down), offscreen, and the
parent prints one line per scenario: its exit status and what it reported. Run from the repository root:

    QT_QPA_PLATFORM=offscreen python docs/dev/qthread_jobs_repro.py

The job in every scenario is the same: it ignores cancelling for a while (a model load inside one library call,
a tokenizer that reads a large file: nothing there checks a flag), as a real job may.

* ``qthread-freed``: the design the issue asked for — a worker ``QObject`` moved to a ``QThread``, its result
  sent over a queued signal. The job is cancelled and its owner (the window, closing) is deleted while the job
  still runs: ``QThread``'s destructor finds its thread running and Qt aborts the process ("QThread: Destroyed
  while thread is still running"); nothing in Python can catch it.
* ``qthread-wait``: the only way to free that ``QThread`` safely is to ``wait()`` for it, on the GUI thread:
  the window freezes until the job happens to end (here ``wait(2000)`` gives up after 2 s and the thread still
  runs), and the owner still cannot be deleted.
* ``qthread-wait-deadlock``: the same wait with the usual ``done.connect(thread.quit)``: Qt queues ``quit`` to
  the GUI thread (where the QThread object lives), which is blocked in ``wait()``, so the wait outlasts the job
  by its whole timeout: a teardown that waits for its jobs this way hangs.
* ``python-thread``: the window's job path (``workers.JobRunner``, a ``Job`` polling a plain Python thread's
  outbox): cancelled, abandoned after the closing window's wait, owner deleted while the job runs. The process
  carries on and exits normally; the job's thread ends on its own, and nothing it reports reaches a slot.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

STUBBORN_S = 3.0  # how long the job ignores cancelling
_kept: list[object] = []


def _app():
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


def _pump(app, seconds: float) -> None:
    """Run the event loop for ``seconds`` (a real loop: ``deleteLater`` is carried out only there)."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def _qthread_job(owner, quit_from_the_job: bool = True):
    """A worker QObject on a QThread (a child of ``owner``), reporting over a queued signal. The thread's event
    loop is ended from the job's own thread (``quit`` is thread-safe), or, with ``quit_from_the_job`` false, by
    the usual ``done.connect(thread.quit)``, which Qt queues to the GUI thread, where the QThread object lives."""
    from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

    class Runner(QObject):
        result = Signal(object)
        done = Signal()

        def __init__(self):
            super().__init__()
            self.cancelled = threading.Event()

        @Slot()
        def run(self):
            time.sleep(STUBBORN_S)  # ignores ``cancelled`` (a library call that checks no flag)
            self.result.emit("late result")
            self.done.emit()

    thread = QThread(owner)
    thread.setObjectName("job-FunctionWorker")
    runner = Runner()
    runner.moveToThread(thread)
    thread.started.connect(runner.run)
    if quit_from_the_job:
        runner.done.connect(thread.quit, Qt.ConnectionType.DirectConnection)
    else:
        runner.done.connect(thread.quit)
    thread.start()
    return thread, runner


def scenario_qthread_freed() -> None:
    from PySide6.QtCore import QObject

    app = _app()
    owner = QObject()
    thread, runner = _qthread_job(owner)
    runner.cancelled.set()  # closing: cancel (ignored), then go
    _pump(app, 0.2)
    print("deleting the owner while its QThread runs", flush=True)
    _kept.append(runner)  # the worker object stays alive: only the QThread is freed
    owner.deleteLater()
    _pump(app, 0.5)
    print("survived (not expected)", flush=True)


def scenario_qthread_wait() -> None:
    from PySide6.QtCore import QObject

    app = _app()
    owner = QObject()
    thread, runner = _qthread_job(owner)
    runner.cancelled.set()
    _pump(app, 0.2)
    started = time.monotonic()
    ended = thread.wait(2000)  # on the GUI thread: no event is handled, no repaint, meanwhile
    blocked = time.monotonic() - started
    print(f"QThread.wait(2000) returned {ended} after blocking the GUI thread {blocked * 1000:.0f} ms; "
          f"thread still running: {thread.isRunning()}", flush=True)
    thread.wait()  # the rest of the job: only now may the owner go
    owner.deleteLater()
    _pump(app, 0.2)
    print(f"owner freed after waiting {time.monotonic() - started:.1f} s in all", flush=True)


def scenario_qthread_wait_deadlock() -> None:
    from PySide6.QtCore import QObject

    app = _app()
    owner = QObject()
    thread, runner = _qthread_job(owner, quit_from_the_job=False)
    runner.cancelled.set()
    _pump(app, 0.2)
    started = time.monotonic()
    ended = thread.wait(int((STUBBORN_S + 5) * 1000))  # the job is done after STUBBORN_S ...
    print(f"QThread.wait({(STUBBORN_S + 5) * 1000:.0f}) returned {ended} after {time.monotonic() - started:.1f} s: "
          "the job ended long ago, but its thread's event loop waits for the queued quit() that the blocked GUI "
          "thread can never deliver", flush=True)
    _pump(app, 0.2)  # the event loop runs again: quit() is delivered, the thread ends
    print(f"after the event loop ran again: thread running = {thread.isRunning()}", flush=True)
    thread.wait()


def scenario_python_thread() -> None:
    from PySide6.QtCore import QObject

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from workbench.gui import workers

    app = _app()
    owner = QObject()
    runner = workers.JobRunner(owner)
    delivered: list[object] = []
    ended: list[str] = []
    worker = workers.FunctionWorker(lambda: time.sleep(STUBBORN_S) or "late result", "A stubborn job")
    worker.result.connect(delivered.append)
    job = runner.start(worker)
    job.ended.connect(lambda: ended.append("ended"))
    runner.idle.connect(lambda: ended.append("idle"))
    _pump(app, 0.2)
    runner.cancel_all()  # closing: cancel (ignored) ...
    _pump(app, 1.0)  # ... the closing window's wait (CLOSE_WAIT_MS) ...
    runner.abandon_all()  # ... then go
    owner.deleteLater()
    _pump(app, 0.3)
    print(f"owner deleted while its job still ran; the job's runner said: {ended}; job threads alive: "
          f"{sum(t.name.startswith('job-') for t in threading.enumerate())}", flush=True)
    time.sleep(STUBBORN_S)
    _pump(app, 0.2)
    print(f"job thread ended on its own; results delivered after cancelling: {delivered}", flush=True)


SCENARIOS = {
    "qthread-freed": scenario_qthread_freed,
    "qthread-wait": scenario_qthread_wait,
    "qthread-wait-deadlock": scenario_qthread_wait_deadlock,
    "python-thread": scenario_python_thread,
}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--scenario":
        SCENARIOS[sys.argv[2]]()
        return 0
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    for name in SCENARIOS:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, __file__, "--scenario", name], capture_output=True, text=True,
                              env=env, timeout=60)
        status = (f"killed by signal {-proc.returncode}" + (" (SIGABRT)" if proc.returncode == -6 else "")
                  if proc.returncode < 0 else f"exit {proc.returncode}")
        print(f"== {name}: {status}, {time.monotonic() - started:.1f} s")
        for line in (proc.stdout + proc.stderr).splitlines():
            if line.strip():
                print(f"   {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
