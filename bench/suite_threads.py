"""The test suite under one and under two torch/OpenMP threads a process (tests/conftest.py sets one by default).

Runs the pytest targets given (files or node ids) in a fresh ``python -m pytest`` process for each thread count,
interleaved round by round (2 1, 1 2, 2 1, ...) so that a change in the shared machine's load hits both alike, and
prints per thread count the median over the rounds of:

* **wall** seconds of the pytest process, start to exit;
* **CPU** seconds (user + system) of that process and every process it waited for (``workbench`` runs, torchrun
  ranks): the work done, less distorted by other jobs on the machine than the wall time (an OpenMP thread that
  spin-waits for a descheduled partner still burns CPU, so under load CPU time of the two-thread runs rises too);
* the pytest summary line (the same tests must pass both ways).

and the ratios two threads / one thread. The load average is printed before and after.

    OMP_NUM_THREADS is set explicitly for each run (the conftest only sets a default), so:
    .venv/bin/python bench/suite_threads.py tests/core/test_training.py tests/gui/test_judge_views.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def one_run(targets: list[str], threads: int) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (the pytest process and the children it reaped) and pytest's summary line."""
    import resource

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "QT_QPA_PLATFORM": "offscreen"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                          *targets], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True).stdout
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = next((line for line in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed|error)", line)),
                   out[-500:])
    return wall, cpu, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", help="pytest files or node ids")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs=2, default=[2, 1], metavar=("A", "B"))
    args = parser.parse_args()

    print(f"load before: {load()}; targets: {' '.join(args.targets)}", flush=True)
    walls: dict[int, list[float]] = {t: [] for t in args.threads}
    cpus: dict[int, list[float]] = {t: [] for t in args.threads}
    for r in range(args.rounds):
        order = args.threads if r % 2 == 0 else args.threads[::-1]
        for threads in order:
            wall, cpu, summary = one_run(args.targets, threads)
            walls[threads].append(wall)
            cpus[threads].append(cpu)
            print(f"round {r + 1}, {threads} thread(s): wall {wall:.1f} s, CPU {cpu:.1f} s, load {load()}: {summary}",
                  flush=True)
    a, b = args.threads
    for t in args.threads:
        print(f"{t} thread(s): median wall {statistics.median(walls[t]):.1f} s, median CPU {statistics.median(cpus[t]):.1f} s")
    print(f"ratio {a}/{b} threads: wall {statistics.median(walls[a]) / statistics.median(walls[b]):.2f}, "
          f"CPU {statistics.median(cpus[a]) / statistics.median(cpus[b]):.2f}")
    print(f"load after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
