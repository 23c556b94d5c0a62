"""Every process-wide switch the window sets, in one place, each with what it fixes.

The window changes a few things that belong to the whole Python process rather than to one widget. They live
here so that they are set once, at start-up (``apply_process_switches``, called by ``app.create_app``; starting
a job calls it too, for a dialog used without the window), and so that a reader finds every one of them:

* ``sys.setswitchinterval(0.001)`` — the GIL is handed to a waiting thread after 1 ms instead of 5 ms: job
  threads run Python (the Trainer's loop, tokenisation) while the GUI thread waits for the GIL, and the
  window's repaints and input then wait less, at no measurable cost to the jobs.
* the garbage collector on the GUI thread only (``keep_garbage_collection_on_the_gui_thread``, with
  ``GarbageCollector`` running the collection schedule there) — a collection on a job thread freed Qt
  objects' wrappers there and deadlocked against the GUI thread.
* ``gc.freeze()`` after the ML stack's import, and after a full collection once the window is built and once a
  run's model and data are loaded (``freeze_long_lived_objects``) — millions of long-lived objects leave the
  collections, which stay short; no garbage is frozen with them.
* native-library preloading (``preload_native_libraries``) — torch's and pyarrow's shared libraries are
  loaded with the GIL released, so their import does not stall the window for a few hundred milliseconds.
* a lower scheduling priority for the compute threads torch starts for a job (``lower_compute_threads_priority``)
  — training saturates every core; at equal priority the GUI thread waits behind torch's threads for a time
  slice. Not for the job thread itself: it holds the GIL, and preempted at a low priority it kept the GUI thread
  waiting for the GIL. The same for a run the window starts as a separate process (``lower_process_priority``),
  which shares no GIL with the window.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from PySide6.QtCore import QObject, QTimer

from ..core.gc_phases import full_collections_deferred

# The GIL switch interval the window runs with (Python's default is 5 ms); see the module docstring.
SWITCH_INTERVAL_S = 0.001


def apply_process_switches() -> None:
    """Set the process-wide switches the window needs (idempotent: a second call changes nothing)."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    keep_garbage_collection_on_the_gui_thread()


def freeze_long_lived_objects() -> None:
    """Move every object alive now out of all later collections (``gc.freeze``), after collecting the garbage.

    Called when the window is built and when a run's model and data are loaded: those objects live as long as
    the window or the run, and a full collection would otherwise walk all of them, holding the GIL (and stalling
    the window) for a long moment each time. Garbage must be collected first: a frozen cycle is never freed, and
    what waits for its collection at that moment (the previous run's model and optimizer, say, when the next run
    starts within a minute) would stay for the life of the process. Collections run on the GUI thread only, so
    this asks ``GarbageCollector`` to collect and freeze at its next turn (within 20 ms, in a turn of the event
    loop of its own) instead of doing it here.
    """
    _freeze_requested.set()


@contextlib.contextmanager
def importing_the_ml_stack() -> Iterator[None]:
    """No collection while the ML stack is imported (it would walk millions of new objects to find no
    garbage); afterwards what the import created is frozen out of future collections."""
    _importing.set()
    try:
        yield
    finally:
        # Frozen at once, without a collection first: an import leaves next to no cyclic garbage, and a full
        # collection over the ~600,000 objects it made would itself stall the window ~100 ms.
        gc.freeze()
        _importing.clear()


def lower_compute_threads_priority() -> None:
    """Lower the scheduling priority of torch's compute threads for the calling (job) thread, not its own.

    Training saturates every core; at equal priority the GUI thread then waits behind torch's threads for a
    time slice, and the window stutters. So the threads that only compute (torch's intra-op workers, which
    never run Python) run at a lower priority. The job thread itself keeps the window's: it holds the GIL
    between its ops, and at a lower priority another busy program on the machine preempted it for 40-90 ms
    at a time while it held the GIL, and the GUI thread slept waiting for the GIL all that while (issue #16:
    GUI stalls of 47-152 ms with two other busy processes on 2 cores; see docs/benchmarks.md). torch starts its
    workers for this thread on its first parallel op, with this thread's priority; a small op starts them
    here, and the threads that came with it (none of them a Python thread) are lowered. Linux only, and only
    once torch is imported (a job that never imports it, such as an adapter's GGUF export, starts none of its
    threads); elsewhere, or where it is not allowed, this does nothing.
    """
    torch = sys.modules.get("torch")
    if torch is None or not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        return
    before = _native_threads()
    # at::parallel_for splits work only past 32,768 elements: a million starts the whole team
    torch.ones(1 << 20).add_(1)
    python_threads = {thread.native_id for thread in threading.enumerate()}
    lower = min(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + COMPUTE_THREAD_NICENESS, 19)
    for native_id in _native_threads() - before - python_threads:
        try:
            os.setpriority(os.PRIO_PROCESS, native_id, lower)
        except OSError:
            pass  # gone already, or not allowed here: it computes at normal priority


# How much lower torch's compute threads run than their job thread (nice values; 19 is the lowest priority).
COMPUTE_THREAD_NICENESS = 10


def _native_threads() -> set[int]:
    """The kernel's thread ids of this process's threads (Linux)."""
    try:
        return {int(name) for name in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def lower_process_priority(pid: int) -> None:
    """Lower the scheduling priority of a process the window has just started (a run in a separate process).

    Its training saturates every core as a training thread would, and the window's GUI thread, at equal
    priority, waited up to ~45 ms for a CPU between two turns while it drew the run's plots. On Linux this sets
    the process's first thread; the threads it starts later (torch's, the launcher's processes) inherit it, and a
    new process has started none yet. Elsewhere, or where it is not allowed, this does nothing.
    """
    if hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, pid, 10)
        except OSError:
            pass  # gone already, or not allowed here: it runs at normal priority


# ------------------------------------------------------------------------------ garbage collection


_collection_requested = threading.Event()
_freeze_requested = threading.Event()  # freeze_long_lived_objects: collect everything, then freeze the survivors
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
    is being imported. While a job runs a phase that defers full collections (``core/gc_phases.py``: a GGUF
    conversion) the young and middle ones go on and the full one waits for the phase to end. Small, frequent collections, as the interpreter itself
    would do them: a one-second schedule let a second of a training run's allocations pile up and took
    40–100 ms to collect, a stall the window cannot afford. A job thread's ``gc.collect()`` only moves the
    next middle collection forward; the full ones stay on schedule (they walk every object not frozen).

    A full pass due on a tick that came late (its turn followed a busy one: a repaint, a plot's redraw) waits for a
    tick on time, at most ``MAX_FULL_WAIT_S``, as ``IdleSteps(when_idle=True)`` pieces do: after a run the pass
    that frees its objects takes 30-40 ms, and on the heels of a plot's redraw the two made one stall over 50 ms.
    A freeze (``freeze_long_lived_objects``) does not wait."""

    INTERVAL_MS = 20
    YOUNG_THRESHOLD = 2_000
    FULL_EVERY_S = 60.0
    FULL_MIN_GAP_S = 10.0  # the interpreter's own rule (a full pass only when long-lived objects grew by a
    #                        quarter) is not visible from Python; a minimum gap keeps full passes rare likewise
    BUSY_SLACK_S = 0.004  # a tick later than its interval by more than this followed a busy turn (IdleSteps' rule)
    MAX_FULL_WAIT_S = 5.0

    def __init__(self, parent: QObject):
        super().__init__(parent)
        keep_garbage_collection_on_the_gui_thread()
        self._last_full = self._last_tick = time.monotonic()
        self._full_waiting_since: float | None = None  # when a full pass due began to wait for a tick on time
        self._timer = QTimer(self)
        self._timer.setInterval(self.INTERVAL_MS)
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    def _tick(self) -> None:
        now = time.monotonic()
        on_time = now - self._last_tick - self.INTERVAL_MS / 1000 <= self.BUSY_SLACK_S
        self._last_tick = now
        self.collect(on_time)

    def collect(self, on_time: bool = True) -> None:
        """One turn of the schedule; ``on_time``: the timer's tick was not delayed by a busy turn before it."""
        if _importing.is_set():
            return
        young, young_collections, middle_collections = gc.get_count()
        now = time.monotonic()
        full_due = (middle_collections >= 10 and now - self._last_full >= self.FULL_MIN_GAP_S) or \
            now - self._last_full >= self.FULL_EVERY_S
        if full_due and not on_time:
            self._full_waiting_since = self._full_waiting_since or now
            full_due = now - self._full_waiting_since >= self.MAX_FULL_WAIT_S
        if (full_due or _freeze_requested.is_set()) and not full_collections_deferred():
            self._full_waiting_since = None
            freezing = _freeze_requested.is_set()
            _freeze_requested.clear()
            gc.collect(2)
            if freezing:
                gc.freeze()
            self._last_full = now
        elif young_collections >= 10 or _collection_requested.is_set():
            _collection_requested.clear()
            gc.collect(1)
        elif young >= self.YOUNG_THRESHOLD:
            gc.collect(0)


# ------------------------------------------------------------------------------ native libraries


def preload_native_libraries() -> None:
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
