"""Background jobs for the window: one QObject per long job, run on its own QThread.

Workers never touch widgets. Each gets plain inputs (a frozen config, a path), does its job in
``work()``, and reports through signals: ``result(object)`` with plain data, ``failed(message, traceback)``
for any exception (a ``WorkbenchError`` keeps its message and hint; anything else is a bug and keeps its
traceback), and always ``finished`` last. Heavy modules (torch, transformers) are imported inside
``work()``, so importing this module costs nothing.
"""

from __future__ import annotations

import gc
import traceback
from typing import Any, Callable

from PySide6.QtCore import QObject, QThread, Signal, Slot

from workbench.core.config import RunConfig
from workbench.core.events import RunStarted


class Worker(QObject):
    result = Signal(object)
    failed = Signal(str, str)  # message (with hint), traceback
    finished = Signal()

    def work(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    @Slot()
    def run(self) -> None:
        from workbench.core.errors import WorkbenchError

        try:
            self.result.emit(self.work())
        except WorkbenchError as exc:
            message = exc.message + (f"\n\n{exc.hint}" if exc.hint else "")
            self.failed.emit(message, traceback.format_exc())
        except Exception as exc:  # a bug: keep everything so the log can show it
            self.failed.emit(f"{type(exc).__name__}: {exc}", traceback.format_exc())
        finally:
            self.finished.emit()


def start(worker: Worker, parent: QObject) -> QThread:
    """Run ``worker`` on a new thread owned by ``parent``; both are deleted once the job has finished.

    The GUI never waits on the thread: it quits itself when ``finished`` arrives.
    """
    thread = QThread(parent)
    worker.moveToThread(thread)
    thread.started.connect(worker.run)
    worker.finished.connect(thread.quit)
    worker.finished.connect(worker.deleteLater)
    thread.finished.connect(thread.deleteLater)
    # Keep a Python reference until the thread ends, or the wrapper could be collected mid-job.
    thread.worker = worker  # type: ignore[attr-defined]
    thread.start()
    return thread


class FunctionWorker(Worker):
    """Runs one plain function; for short jobs whose whole output is a return value."""

    def __init__(self, fn: Callable[[], Any]):
        super().__init__()
        self._fn = fn

    def work(self) -> Any:
        return self._fn()


def warm_up_imports() -> None:
    """Import the ML stack in the background right after the window shows, so the first model opens fast.

    The cyclic garbage collector is off meanwhile: importing torch and transformers allocates millions of
    objects, each full collection walks all of them while holding the GIL (0.1–0.3 s stalls of the GUI
    thread, several times over), and an import leaves next to no cyclic garbage. Afterwards the imported
    objects are frozen out of future collections (``gc.freeze``), so later collections stay short too.
    """
    import gc

    gc.disable()
    try:
        import datasets  # noqa: F401
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer  # noqa: F401  (lazy modules)

        import workbench.core.data  # noqa: F401
        import workbench.core.models  # noqa: F401
        import workbench.core.training  # noqa: F401
    finally:
        gc.freeze()
        gc.enable()


def describe_device(config: RunConfig) -> tuple[str, int | None, str]:
    """(human description, bytes available for training, estimate device kind 'cuda'|'cpu')."""
    import psutil
    import torch

    wanted = config.training.device
    if wanted in ("auto", "cuda") and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        name = torch.cuda.get_device_name()
        return f"GPU: {name}, {free / 2**30:.1f} GiB free", int(free), "cuda"
    available = psutil.virtual_memory().available
    return f"CPU, {available / 2**30:.1f} GiB RAM available", int(available), "cpu"


def open_model(config: RunConfig) -> dict[str, Any]:
    """The 'open a model' job: overview (config + meta skeleton + tree) and the training device."""
    from workbench.core.models import open_overview

    m = config.model
    overview = open_overview(m.source, revision=m.revision, task=m.task, num_labels=m.num_labels,
                             trust_remote_code=m.trust_remote_code, allow_pickle=m.allow_pickle)
    device_text, available, device_kind = describe_device(config)
    return {"overview": overview, "device_text": device_text, "available": available, "device_kind": device_kind}


class TrainWorker(Worker):
    """Runs ``core.training.run``; every engine event is re-emitted as ``event(object)`` on the GUI side.

    The signal crosses threads as a queued connection; the training panel batches what arrives and redraws
    at most 20 times a second, so a fast engine cannot flood the event loop with repaints.
    """

    event = Signal(object)

    def __init__(self, config: RunConfig, control):
        super().__init__()
        self._config = config
        self._control = control

    def emit(self, event) -> None:  # the engine's sink interface; called on the worker thread
        if isinstance(event, RunStarted):
            # Model and data are loaded: keep their objects out of every later garbage collection, whose
            # full passes would otherwise hold the GIL (and stall the window) for a long moment each time.
            gc.freeze()
        self.event.emit(event)

    def work(self):
        from workbench.core.training import run

        _yield_cpu_to_the_window()
        return run(self._config, self, self._control)


def _yield_cpu_to_the_window() -> None:
    """Lower this worker thread's scheduling priority (and that of the compute threads it starts).

    Training saturates every core; at equal priority the GUI thread then waits behind torch's threads for
    a time slice, and the window stutters. On Linux a thread's nice value is its own, and threads created
    from it inherit it; elsewhere this does nothing.
    """
    import os
    import threading

    if hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except OSError:
            pass  # not allowed here: training simply runs at normal priority
