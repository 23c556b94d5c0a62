"""Background jobs for the window: one ``Worker`` per long job, run on its own thread.

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

Cancelling: ``Job.cancel()`` asks the worker to stop (``Worker.should_stop()`` turns true; workers with a
``RunControl`` also request a stop there) and from then on drops what the job reports, so nothing it sends
reaches a widget. A closing window cancels every job, waits about a second for their threads, and then
``abandon()`` the rest: a Python thread cannot be killed, so it runs on to its next check (or, as a
daemon thread, until the process exits) while the window goes.
"""

from __future__ import annotations

import gc
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QObject, QTimer, Signal

from workbench.core.config import RunConfig
from workbench.core.events import RunStarted, SinkLike

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
    from workbench.core.crashlog import describe_unexpected, write_crash_log

    try:
        log = write_crash_log(what, exc)
    except Exception:  # noqa: BLE001  (reporting must not fail in turn)
        log = None
    where = f"The details are in {log} (please include it in a bug report)." if log is not None else \
        "No log could be written (the disk may be full or read-only)."
    return f"{what} failed unexpectedly: {describe_unexpected(exc)}. {where}", str(log or "")


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


def start(worker: Worker, parent: QObject) -> Job:
    """Run ``worker`` on a new thread; its signals arrive on the GUI thread; ``ended`` follows ``finished``
    once the thread has exited."""
    keep_garbage_collection_on_the_gui_thread()  # a window does this too; a dialog used on its own may not
    job = Job(worker, parent)
    job.start()
    return job


class FunctionWorker(Worker):
    """Runs one plain function; for jobs whose whole output is a return value. With ``stoppable`` the function
    gets the worker's ``should_stop`` (a core function's cancel hook) as its only argument."""

    def __init__(self, fn: Callable[..., Any], what: str = "A background job", *, stoppable: bool = False):
        super().__init__()
        self._fn, self.what, self._stoppable = fn, what, stoppable

    def work(self) -> Any:
        return self._fn(self.should_stop) if self._stoppable else self._fn()


def warm_up_imports() -> None:
    """Import the ML stack in the background right after the window shows, so the first model opens fast.

    Importing torch and transformers allocates millions of objects and leaves next to no cyclic garbage;
    afterwards they are frozen out of future collections (``gc.freeze``), so the GUI thread's collections
    (``GarbageCollector``) stay short.
    """
    _importing.set()  # no collection meanwhile: it would walk millions of new objects to find no garbage
    try:
        _preload_native_libraries()
        import datasets  # noqa: F401
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer  # noqa: F401  (lazy modules)

        import workbench.core.data.collators  # noqa: F401  (the package itself imports its modules lazily)
        import workbench.core.data.pipeline  # noqa: F401
        import workbench.core.models  # noqa: F401
        import workbench.core.runs  # noqa: F401
        import workbench.core.training  # noqa: F401
        # Imported by the first training run otherwise, each a GIL-holding pause of the window then (found by
        # listing sys.modules before and after a run that followed this warm-up).
        import datasets.io.generator  # noqa: F401
        import peft.utils.transformers_weight_conversion  # noqa: F401
        import torch.utils.serialization  # noqa: F401
    finally:
        gc.freeze()
        _importing.clear()


def _preload_native_libraries() -> None:
    """Load the ML stack's large native libraries with the GIL released, so that its import finds them loaded.

    ``import torch`` maps some 450 MB of shared libraries (libtorch_cpu, and what it links) and runs their
    static initialisers inside ``dlopen``, which Python calls with the GIL held: the window stalled for
    200–350 ms. ``import datasets`` does the same with pyarrow's ~140 MB (85–107 ms when they are not in the
    page cache, as after a reboot). A call into C through ctypes releases the GIL, so loading the same files
    that way first (with the flags their own imports use; an already loaded library is found by its soname)
    takes that wait off the window. libtorch_python is only read into the page cache, not loaded: its
    initialisers belong to Python, and reading it first still takes the disk's latency (38–45 ms cold) out of
    the GIL-holding import. Linux only; a library that is not where this build keeps it is left to the import.
    """
    import ctypes
    import importlib.util
    import os
    import re
    import sys

    if not sys.platform.startswith("linux"):
        return

    def package_dir(name: str) -> Path | None:
        spec = importlib.util.find_spec(name)
        return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None

    try:
        dlopen = ctypes.CDLL(None).dlopen
    except (OSError, AttributeError):
        return
    dlopen.restype, dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
    libraries: list[tuple[Path, int]] = []
    torch_dir = package_dir("torch")
    if torch_dir is not None:
        # libc10 and libtorch_cpu (most of the size) link nothing of CUDA: loaded as an extension's dependencies
        # are (RTLD_LOCAL). libtorch_global_deps (RTLD_GLOBAL, as torch._load_global_deps loads it) and libtorch
        # only in a CPU build: in a CUDA build they pull in cuDNN, cuSPARSE..., which torch deliberately loads
        # after preloading the wheel's own CUDA libraries (so that an older system CUDA is not bound instead).
        lib = torch_dir / "lib"
        libraries += [(lib / "libc10.so", os.RTLD_LOCAL), (lib / "libtorch_cpu.so", os.RTLD_LOCAL)]
        if not (lib / "libtorch_cuda.so").exists():
            libraries = [(lib / "libtorch_global_deps.so", os.RTLD_GLOBAL), *libraries,
                         (lib / "libtorch.so", os.RTLD_LOCAL)]
    arrow_dir = package_dir("pyarrow")
    if arrow_dir is not None:  # libarrow.so.2600 and its siblings (not the Flight RPC ones, which it leaves alone)
        libraries += [(path, os.RTLD_LOCAL) for path in sorted(arrow_dir.glob("lib*.so.*"))
                      if re.fullmatch(r"lib\w+\.so\.\d+", path.name) and "flight" not in path.name]
    for path, scope in libraries:
        if path.is_file():
            dlopen(os.fsencode(path), os.RTLD_NOW | scope)
    if torch_dir is not None:
        _read_into_page_cache(torch_dir / "lib" / "libtorch_python.so")


def _read_into_page_cache(path: Path) -> None:
    """Read a file once (each read releases the GIL), so that mapping it later waits for no disk."""
    try:
        with open(path, "rb", buffering=0) as f:
            chunk = bytearray(1 << 20)
            while f.readinto(chunk):
                pass
    except OSError:
        pass


# ------------------------------------------------------------------------------ garbage collection


_collection_requested = threading.Event()
_importing = threading.Event()


def keep_garbage_collection_on_the_gui_thread() -> None:
    """Make sure Python's cyclic garbage collector only ever runs on the GUI (main) thread. Idempotent.

    A collection frees whatever cycles it finds, Qt objects' wrappers included, on the thread that happens to
    run it. When that was a job thread (automatic collections start on any thread's allocation; accelerate
    calls ``gc.collect()`` at the start of every training run), a Qt object of the window was destroyed
    there while the GUI thread was using Qt: the two threads deadlocked, one holding a Qt lock and waiting
    for the GIL, the other the reverse (seen as hung GUI tests, with gdb). So automatic collection is off,
    ``gc.collect()`` called on another thread only asks for a collection, and ``GarbageCollector`` collects
    on the GUI thread.
    """
    if getattr(gc.collect, "gui_thread_only", False):
        return
    real_collect = gc.collect

    def collect(generation: int = 2) -> int:
        if threading.current_thread() is threading.main_thread():
            return real_collect(generation)
        _collection_requested.set()  # the GUI thread collects within a second
        return 0

    collect.gui_thread_only = True  # type: ignore[attr-defined]
    gc.collect = collect
    gc.disable()


class GarbageCollector(QObject):
    """Python's automatic collection schedule, run on the GUI thread: every 20 ms it looks at the allocation
    counts and collects the young generation past 2,000 new objects, the middle one after 10 of those, and
    everything after 10 middle ones (at most every 10 s) or every 60 s, and nothing while the ML stack
    is being imported. Small, frequent collections, as the interpreter itself
    would do them: a one-second schedule let a second of a training run's allocations pile up and took
    40–100 ms to collect, a stall the window cannot afford. A job thread's ``gc.collect()`` only moves the
    next middle collection forward; the full ones stay on schedule (they walk every object not frozen)."""

    INTERVAL_MS = 20
    YOUNG_THRESHOLD = 2_000
    FULL_EVERY_S = 60.0
    FULL_MIN_GAP_S = 10.0  # the interpreter's own rule (a full pass only when long-lived objects grew by a
    #                        quarter) is not visible from Python; a minimum gap keeps full passes rare likewise

    def __init__(self, parent: QObject):
        super().__init__(parent)
        keep_garbage_collection_on_the_gui_thread()
        self._last_full = time.monotonic()
        self._timer = QTimer(self)
        self._timer.setInterval(self.INTERVAL_MS)
        self._timer.timeout.connect(self.collect)
        self._timer.start()

    def collect(self) -> None:
        if _importing.is_set():
            return
        young, young_collections, middle_collections = gc.get_count()
        now = time.monotonic()
        if (middle_collections >= 10 and now - self._last_full >= self.FULL_MIN_GAP_S) or \
                now - self._last_full >= self.FULL_EVERY_S:
            gc.collect(2)
            self._last_full = now
        elif young_collections >= 10 or _collection_requested.is_set():
            _collection_requested.clear()
            gc.collect(1)
        elif young >= self.YOUNG_THRESHOLD:
            gc.collect(0)


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


def open_model(config: RunConfig, sink: SinkLike = None) -> dict[str, Any]:
    """The 'open a model' job: overview (config + meta skeleton + tree) and the training device."""
    from workbench.core.models import open_overview

    m = config.model
    overview = open_overview(m.source, revision=m.revision, task=m.task, num_labels=m.num_labels,
                             trust_remote_code=m.trust_remote_code, allow_pickle=m.allow_pickle, sink=sink)
    device_text, available, device_kind = describe_device(config)
    return {"overview": overview, "device_text": device_text, "available": available, "device_kind": device_kind}


class OpenModelWorker(Worker):
    """Opens a model; a built-in model's one-time conversion reports ``progress(done, total, detail)``."""

    progress = Signal(float, float, str)
    what = "Opening the model"
    # The model opens only if the user allows something unsafe by default: (model.* setting, files, what the
    # files say — the code that would run, for remote code — and the refusal's message).
    consent_needed = Signal(str, list, str, str)

    def __init__(self, config: RunConfig):
        super().__init__()
        self._config = config

    def work(self):
        from workbench.core.errors import ConsentRequired

        try:
            return open_model(self._config, sink=self)
        except ConsentRequired as exc:
            self.post("consent_needed", exc.setting, list(exc.files), _preview_files(exc.files, exc.setting), exc.message)
            raise

    def emit(self, event) -> None:  # conversion sink, on the job thread
        from workbench.core.events import Message, Progress

        if self.should_stop():  # cancelled: the conversion ends at its next step and removes its partial folder
            raise JobCancelled

        if isinstance(event, Progress):
            detail = event.detail or event.task
            if event.task == "convert":  # say why this open is slow, and that it happens once
                detail = f"Converting the model to safetensors, once (later starts reuse it) — {detail}"
            self.post("progress", float(event.done), float(event.total), detail)
        elif isinstance(event, Message):
            self.post("progress", 0.0, 0.0, event.text)


def _preview_files(files: list[str], setting: str, limit: int = 20_000) -> str:
    """The text of the Python files a model would run (what the user is asked to trust); pickle is not text."""
    if setting != "trust_remote_code":
        return ""
    parts = []
    for name in files:
        try:
            text = Path(name).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            text = f"(cannot read: {exc.strerror})"
        if len(text) > limit:
            text = text[:limit] + f"\n… ({len(text) - limit:,} more characters)"
        parts.append(f"# ===== {name}\n{text}")
    return "\n\n".join(parts)


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
            # Model and data are loaded: keep their objects out of every later garbage collection, whose
            # full passes would otherwise hold the GIL (and stall the window) for a long moment each time.
            gc.freeze()
        self.post("event", event)

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
    """Adapter export (PEFT copy or portable), a streaming merge into a full model, or a GGUF export (merged,
    adapter, or merged with an Ollama Modelfile: modes "gguf", "gguf_adapter", "ollama").

    Progress (``Progress`` events: bytes done / total, or tensors for llama.cpp's quantizer) is re-emitted as
    ``progress(done, total, detail)`` at most every 50 ms, so a merge of many small tensors cannot flood the
    event loop; ``stage(task)`` says when the kind of progress changes ("merge", "gguf", "quantize").
    """

    progress = Signal(float, float, str)  # bytes as floats: a C++ int stops at 2 GiB, a double is exact to 8 PiB
    stage = Signal(str)
    what = "The export"

    def __init__(self, mode: str, adapter: str, out: str, base: str = "", dtype: str | None = None, control=None,
                 gguf_type: str | None = None):
        super().__init__()
        self._mode, self._adapter, self._out, self._base, self._dtype = mode, adapter, out, base, dtype
        self._control = control
        self._gguf_type = gguf_type
        self._last = 0.0
        self._task = ""
        self._notes: list[str] = []

    def emit(self, event) -> None:  # merge / export sink, on the worker thread
        from workbench.core.events import Message, Progress

        if isinstance(event, Progress):
            if event.task != self._task:
                self._task = event.task
                self.post("stage", event.task)
            now = time.monotonic()
            if now - self._last >= 0.05 or event.done >= event.total:
                self._last = now
                self.post("progress", float(event.done), float(event.total), event.detail)
        elif isinstance(event, Message) and "nothing was written" not in event.text:
            self._notes.append(event.text)

    def work(self):
        if self._mode in ("gguf", "gguf_adapter", "ollama"):
            return self._gguf()
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

    def _gguf(self) -> dict:
        from workbench.core.gguf_export import prepare_adapter_export, prepare_merged_export

        _yield_cpu_to_the_window()
        if self._mode == "gguf_adapter":
            job = prepare_adapter_export(self._adapter, self._base, self._out, type_name=self._gguf_type or "f32")
        else:
            job = prepare_merged_export(self._base, self._adapter, self._out, type_name=self._gguf_type or "q8_0",
                                        ollama=self._mode == "ollama")
        result = job.run(sink=self, control=self._control)
        return {"mode": self._mode, "output": result.output, "file": result.gguf, "stopped": result.stopped,
                "bytes": result.bytes_written, "notes": tuple(self._notes),
                "commands": _next_commands(result) if not result.stopped else ""}


def _next_commands(result) -> str:
    """What to run with the export, as commands to copy: Ollama's with the Modelfile's full path (the core's
    instructions start with ``cd`` into the folder), llama.cpp's as the core gives them."""
    if result.modelfile is not None:
        line = next((x for x in result.instructions.splitlines() if x.startswith("ollama create ")), "")
        name = line.split()[2] if len(line.split()) > 2 else result.output.name
        return f"ollama create {name} -f {result.modelfile}\nollama run {name}"
    return result.instructions


def plan_gguf(mode: str, adapter: str, base: str, type_name: str | None) -> dict:
    """The export dialog's look ahead: ``{"unsupported": reason or "", "size", "exact", "file_name"}``; the
    base's architecture is checked first (an unsupported one is not an error: the dialog disables the
    choice); any other problem (a DoRA adapter for a GGUF adapter, say) raises as the export itself would."""
    from workbench.core.base_model import open_base_model
    from workbench.core.errors import ModelSourceError
    from workbench.core.gguf_export.arch import architecture_for

    checkpoint = open_base_model(base)
    try:
        architecture_for(checkpoint.config, str(checkpoint.path))
    except ModelSourceError as exc:
        return {"unsupported": exc.message, "size": 0, "exact": False, "file_name": ""}
    if mode == "gguf_adapter":
        from workbench.core.gguf_export.adapter import plan_adapter

        plan = plan_adapter(adapter, checkpoint, type_name or "f32")
        label = plan.file.tensors[0].ggml_type if plan.file.tensors else "F32"  # as AdapterExport names it
        return {"unsupported": "", "size": plan.size, "exact": True, "file_name": f"adapter-{label}.gguf"}
    from workbench.core.gguf_export.merged import plan_merged

    plan = plan_merged(checkpoint, adapter, type_name or "q8_0")
    return {"unsupported": "", "size": plan.size, "exact": plan.gtype.writer == "python",
            "file_name": f"model-{plan.gtype.label}.gguf"}


def inspect_adapter_job(adapter: str, base: str | None):
    """Per-module norms and effective ranks of any PEFT adapter folder (with ``||W||`` when a base is given)."""
    from workbench.core.adapter_report import inspect_adapter
    from workbench.core.adapters import load_adapter

    return inspect_adapter(load_adapter(adapter), base or None)


def load_playground(base: str, adapter: str):
    """The base model once, wrapped with the adapter: base answers come from ``disable_adapter()``. The base is
    found and loaded as everywhere else (``core.models``): a folder, a Hub id, a GGUF file or ``builtin:``."""
    from peft import PeftModel

    from workbench.core.models import load_config, load_model, load_tokenizer, resolve_source

    source = resolve_source(base, download="all")
    tokenizer = load_tokenizer(source)
    model = load_model(source, load_config(source))
    model = PeftModel.from_pretrained(model, adapter).eval()
    return {"model": model, "tokenizer": tokenizer}


class GenerateWorker(Worker):
    """Streams the base model's answer, then the adapter's, token by token, from one loaded PeftModel.

    ``token(which, text)``: which is "base" or "adapter"; pieces come from transformers' ``TextStreamer``. Both use the same settings and seed, so the only
    difference between the two answers is the adapter.
    """

    token = Signal(str, str)
    what = "Generating"

    def __init__(self, model, tokenizer, prompt: str, max_new_tokens: int, temperature: float, top_p: float, control):
        super().__init__()
        self._model, self._tok = model, tokenizer
        self._prompt, self._max, self._temp, self._top_p = prompt, max_new_tokens, temperature, top_p
        self._control = control

    def work(self):
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

        _yield_cpu_to_the_window()
        control, worker = self._control, self

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return control.stop_requested

        class _Streamer(TextStreamer):
            """transformers' own streamer (word-boundary decoding), with each finished piece sent as a signal
            straight from ``generate`` on this worker thread — no extra thread, no queue."""

            def __init__(self, which: str):
                super().__init__(worker._tok, skip_prompt=True, skip_special_tokens=True)
                self.which, self.text = which, ""

            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    self.text += text
                    worker.post("token", self.which, text)

        inputs = self._tok(self._prompt, return_tensors="pt")
        answers = {}
        for which in ("base", "adapter"):
            if control.stop_requested:
                break
            streamer = _Streamer(which)
            kw = dict(**inputs, max_new_tokens=self._max, streamer=streamer,
                      stopping_criteria=StoppingCriteriaList([_Stop()]),
                      pad_token_id=self._tok.pad_token_id or self._tok.eos_token_id)
            if self._temp > 0:
                kw.update(do_sample=True, temperature=self._temp, top_p=self._top_p)
            else:
                kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            torch.manual_seed(0)  # the same draws for both answers: only the adapter differs
            with torch.no_grad():
                if which == "base":
                    with self._model.disable_adapter():
                        self._model.generate(**kw)
                else:
                    self._model.generate(**kw)
            answers[which] = streamer.text
        return answers
