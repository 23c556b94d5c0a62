"""The test suite under one and under two torch/OpenMP threads a process (tests/conftest.py sets one by default),
and with and without the conftest's gc.freeze.

Runs the pytest targets given (files or node ids) in a fresh ``python -m pytest`` process for each thread count,
interleaved round by round (2 1, 1 2, 2 1, ...) so that a change in the shared machine's load hits both alike, and
prints per thread count the median over the rounds of:

* **wall** seconds of the pytest process, start to exit;
* **CPU** seconds (user + system) of that process and every process it waited for (``workbench`` runs, torchrun
  ranks): the work done, less distorted by other jobs on the machine than the wall time (an OpenMP thread that
  spin-waits for a descheduled partner still burns CPU, so under load CPU time of the two-thread runs rises too);
* the pytest summary line (the same tests must pass both ways).

and the ratios two threads / one thread. The load average is printed before and after.

OMP_NUM_THREADS is set explicitly for each run (the conftest only sets a default). With ``--gc`` the two ways are
the conftest's gc.freeze off and on (WORKBENCH_TEST_GC_FREEZE=0/1), one thread each.

    .venv/bin/python bench/suite_threads.py tests/core/test_training.py tests/gui/test_judge_views.py --rounds 3
    .venv/bin/python bench/suite_threads.py tests/core/test_training.py --gc
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


def one_run(targets: list[str], env_vars: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (the pytest process and the children it reaped) and pytest's summary line."""
    import resource

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", **env_vars}
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
    parser.add_argument("--gc", action="store_true",
                        help="compare the conftest's gc.freeze off and on (one thread both ways) instead of threads")
    args = parser.parse_args()

    if args.gc:
        variants = {"gc freeze off": {"OMP_NUM_THREADS": "1", "WORKBENCH_TEST_GC_FREEZE": "0"},
                    "gc freeze on": {"OMP_NUM_THREADS": "1", "WORKBENCH_TEST_GC_FREEZE": "1"}}
    else:
        variants = {"2 threads": {"OMP_NUM_THREADS": "2"}, "1 thread": {"OMP_NUM_THREADS": "1"}}
    names = list(variants)
    print(f"load before: {load()}; targets: {' '.join(args.targets)}", flush=True)
    walls: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            wall, cpu, summary = one_run(args.targets, variants[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
            print(f"round {r + 1}, {name}: wall {wall:.1f} s, CPU {cpu:.1f} s, load {load()}: {summary}", flush=True)
    for name in names:
        print(f"{name}: median wall {statistics.median(walls[name]):.1f} s, median CPU {statistics.median(cpus[name]):.1f} s")
    a, b = names
    print(f"ratio {a} / {b}: wall {statistics.median(walls[a]) / statistics.median(walls[b]):.2f}, "
          f"CPU {statistics.median(cpus[a]) / statistics.median(cpus[b]):.2f}")
    print(f"load after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
