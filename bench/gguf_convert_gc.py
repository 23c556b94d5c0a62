"""The built-in SmolLM2 GGUF's conversion as the window runs it, with and without full collections deferred.

    python bench/gguf_convert_gc.py                      # 3 interleaved rounds of each, no ballast
    python bench/gguf_convert_gc.py --ballast 1000000 --rounds 3

Each conversion is a fresh interpreter set up as the window is: the process switches (automatic collection off,
``gui/process_switches.GarbageCollector`` collecting on the main thread every 20 ms), the ML stack imported under
``importing_the_ml_stack`` (then frozen), and ``core.gguf_import.convert_gguf`` on a job thread while the main
thread runs Qt's event loop. ``--ballast N`` keeps N small lists alive, unfrozen, to stand for what a window that
has been open a while (other models, runs, plots; the GUI tests before the demo test) holds beyond start-up.

"before" runs the conversion without ``core/gc_phases.deferring_full_collections`` (the code before this bench's
change), "after" as shipped. Printed per row, median and minimum over the rounds: the conversion's wall time, the
job thread's CPU time, the main thread's time in full (gen 2) and young collections and how many full ones ran.
Wall time depends on the machine's load (recorded with each run); the collection counts and the job thread's CPU
time far less so.
"""

from __future__ import annotations

import os
import sys

# Running a file puts its folder first on sys.path, where bench/inspect.py would shadow the standard module: drop it.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402


def child(mode: str, ballast: int) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import contextlib
    import gc
    import tempfile
    import threading

    from PySide6.QtCore import QCoreApplication, QEventLoop

    app = QCoreApplication([])
    from workbench.gui import process_switches as ps

    ps.apply_process_switches()
    collector = ps.GarbageCollector(None)
    with ps.importing_the_ml_stack():
        import torch  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from workbench.core import gguf_import
    from workbench.core.builtin import find_builtin_gguf

    keep = [[i] for i in range(ballast)]  # noqa: F841  (alive, unfrozen: a session's objects)
    if mode == "before":
        gguf_import.deferring_full_collections = contextlib.nullcontext  # type: ignore[assignment]
    main = threading.main_thread()
    spent = {0: 0.0, 1: 0.0, 2: 0.0}
    counts = {0: 0, 1: 0, 2: 0}
    started = [0.0]

    def timed(phase: str, info: dict) -> None:
        if threading.current_thread() is not main:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            spent[info["generation"]] += time.perf_counter() - started[0]
            counts[info["generation"]] += 1

    gc.callbacks.append(timed)
    result: dict = {}
    with tempfile.TemporaryDirectory() as cache:
        def job() -> None:
            t0, c0 = time.perf_counter(), time.thread_time()
            gguf_import.convert_gguf(find_builtin_gguf(), name="bench", cache_dir=cache)
            result.update(wall_s=time.perf_counter() - t0, job_cpu_s=time.thread_time() - c0)

        thread = threading.Thread(target=job)
        load = os.getloadavg()[0]
        thread.start()
        while thread.is_alive():
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
            time.sleep(0.005)
    collector.deleteLater()
    print(json.dumps({**result, "full_gc_s": spent[2], "young_gc_s": spent[0] + spent[1], "full_gcs": counts[2],
                      "load_at_start": load}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ballast", type=int, default=0)
    parser.add_argument("--child", choices=["before", "after"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.ballast)
        return
    rows: dict[str, list[dict]] = {"before": [], "after": []}
    for i in range(args.rounds):
        for mode in ("before", "after") if i % 2 == 0 else ("after", "before"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--ballast", str(args.ballast)],
                                 capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows[mode].append(row)
            print(f"round {i + 1} {mode:6s} " + " ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in row.items()), flush=True)
    print(f"\nballast {args.ballast}, {args.rounds} rounds, median (min):")
    for key in ("wall_s", "job_cpu_s", "full_gc_s", "young_gc_s", "full_gcs"):
        cells = [f"{statistics.median(r[key] for r in rows[m]):8.2f} ({min(r[key] for r in rows[m]):.2f})"
                 for m in ("before", "after")]
        print(f"{key:11s} before {cells[0]}  after {cells[1]}")
    ratio = statistics.median(r["wall_s"] for r in rows["after"]) / statistics.median(r["wall_s"] for r in rows["before"])
    print(f"wall after/before: {ratio:.2f}")


if __name__ == "__main__":
    main()
