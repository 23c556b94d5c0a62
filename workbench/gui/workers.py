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


class JobThread(QThread):
    """A QThread that says ``ended`` only once it has really exited.

    ``finished`` is emitted from the thread just *before* it exits; a slot that deletes the thread (or its
    owner, the window) on that signal can run while the thread is still finishing, which aborts the
    process ("QThread: Destroyed while thread is still running") — likeliest for a worker whose priority
    was lowered, as its last instructions then wait behind the GUI thread. ``wait(0)`` never blocks: it only
    asks whether the thread is gone, and the check is repeated a few milliseconds later if it is not.
    """

    ended = Signal()

    def __init__(self, parent: QObject):
        super().__init__(parent)
        self.finished.connect(self._check_ended)  # queued: this object lives in the GUI thread

    @Slot()
    def _check_ended(self) -> None:
        from PySide6.QtCore import QTimer

        if self.wait(0):
            self.ended.emit()
            self.deleteLater()
        else:
            QTimer.singleShot(5, self._check_ended)


def start(worker: Worker, parent: QObject) -> JobThread:
    """Run ``worker`` on a new thread owned by ``parent``; both are deleted once the job has finished.

    The GUI never waits on the thread: it quits itself when ``finished`` arrives; ``ended`` follows once
    it has exited, and only then is it deleted.
    """
    thread = JobThread(parent)
    worker.moveToThread(thread)
    thread.started.connect(worker.run)
    worker.finished.connect(thread.quit)
    worker.finished.connect(worker.deleteLater)
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


class ResumeWorker(TrainWorker):
    """Resumes a stopped or crashed run from its newest complete checkpoint (``core.training.resume``)."""

    def __init__(self, run_dir, control):
        Worker.__init__(self)
        self._run_dir = run_dir
        self._control = control

    def work(self):
        from workbench.core.training import resume

        _yield_cpu_to_the_window()
        return resume(self._run_dir, self, self._control)


class ExportWorker(Worker):
    """Adapter export (PEFT copy or portable) or a streaming merge into a full model.

    Merge progress (``Progress`` events, bytes done / total) is re-emitted as ``progress(done, total, detail)``
    at most every 50 ms, so a merge of many small tensors cannot flood the event loop.
    """

    progress = Signal(float, float, str)  # bytes as floats: a C++ int stops at 2 GiB, a double is exact to 8 PiB

    def __init__(self, mode: str, adapter: str, out: str, base: str = "", dtype: str | None = None, control=None):
        super().__init__()
        self._mode, self._adapter, self._out, self._base, self._dtype = mode, adapter, out, base, dtype
        self._control = control
        self._last = 0.0

    def emit(self, event) -> None:  # merge sink, on the worker thread
        import time

        from workbench.core.events import Progress

        if isinstance(event, Progress):
            now = time.monotonic()
            if now - self._last >= 0.05 or event.done >= event.total:
                self._last = now
                self.progress.emit(float(event.done), float(event.total), event.detail)

    def work(self):
        if self._mode == "merge":
            from workbench.core.merge import merge_adapter

            _yield_cpu_to_the_window()
            result = merge_adapter(self._base, self._adapter, self._out, dtype=self._dtype, sink=self,
                                   control=self._control)
            return {"mode": "merge", "output": result.output, "stopped": result.stopped,
                    "bytes": result.bytes_written, "modules": result.merged_modules}
        from workbench.core.export import export_adapter

        out = export_adapter(self._adapter, self._out, portable=self._mode == "portable")
        return {"mode": self._mode, "output": out, "stopped": False}


def inspect_adapter_job(adapter: str, base: str | None):
    """Per-module norms and effective ranks of any PEFT adapter folder (with ``||W||`` when a base is given)."""
    from workbench.core.adapters import inspect_adapter, load_adapter

    return inspect_adapter(load_adapter(adapter), base or None)
