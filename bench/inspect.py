"""The first, the templated and the remembered `workbench inspect` of a 70B config, and the window's time to show
its tree, each against a bare ``python -c "import torch, transformers"`` measured in the same run.

    python bench/inspect.py                 # 3 interleaved rounds (about 3 minutes on 2 cores)
    python bench/inspect.py --rounds 5

Every row is a fresh interpreter, timed from the parent: wall seconds and the child's CPU seconds (``wait4``; less
disturbed by a shared machine), rounds interleaved, medians (and the minimum wall) printed. The model is a
Llama-3-70B-shaped config.json beside decoy weight files; an audit hook in the window rows fails the run if a
weight file is opened.

- ``inspect, first ever, built-in``: an empty cache, and the 70B's config.json as Meta-Llama-3-70B's on the Hub
  (core/builtin_template_sources.py): the tree comes from the template shipped with Workbench
  (core/builtin_templates/); the run checks that nothing was written to the cache (which a build would do);
- ``inspect, first ever, no built-in``: an empty cache and the minimal config above, whose non-size fields match no
  built-in template: the tree is built through transformers' modeling code on the meta device, remembered
  (core/tree_cache.py), and the architecture's template is learned (core/tree_template.py);
- ``inspect, --no-cache``: built, nothing remembered or learned;
- ``inspect, template``: a cache holding only the template learned from a Llama-3-8B config: the 70B tree is
  derived from it;
- ``inspect, same config again``: the remembered tree;
- ``window: open 70B``: a ``ModelController`` (the window's) opens the model in its job, after the window's
  import warm-up (gui/workers/warm_up.py), from ``open()`` to its ``opened`` signal, in the three states of the
  cache (``built`` is what the window did before it used the cache).
"""

from __future__ import annotations

import os
import sys

# This file is named like the stdlib's `inspect` module, and Python puts the script's folder first on
# sys.path: drop it so that `import inspect` inside torch gets the real module (every bench script does this).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from workbench.core.builtin_template_sources import SOURCES  # noqa: E402  plain dicts: imports nothing heavy
LLAMA_70B = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8192, "intermediate_size": 28672,
    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "dtype": "bfloat16",
}
LLAMA_8B = {**LLAMA_70B, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32}
# The window's open, in a child: warm-up imports, then ModelController.open → opened, timed; weight reads audited.
WINDOW = r"""
import json, sys, time
from pathlib import Path
from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication, QWidget
app = QApplication([])
from workbench.gui.workers.warm_up import warm_up_imports
warm_up_imports()
from workbench.gui import workers
from workbench.gui.config_store import ConfigStore
from workbench.gui.model_controller import ModelController
opened = []
def audit(event, args):
    if event == "open" and args and str(args[0]).endswith((".safetensors", ".bin", ".gguf")):
        opened.append(str(args[0]))
sys.addaudithook(audit)
owner = QWidget()
store = ConfigStore(owner)
runner = workers.JobRunner(owner)
models = ModelController(store, runner.start, owner)
loop = QEventLoop()
models.opened.connect(lambda *_: loop.quit())
models.failed.connect(lambda *a: (print(a, file=sys.stderr), loop.quit()))
QTimer.singleShot(60_000, loop.quit)
t0 = time.perf_counter()
models.open(sys.argv[1])
loop.exec()
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "origin": models.origin, "blocks": models.overview.tree.num_blocks,
                  "weight_reads": opened}))
runner.cancel_all()
"""


def timed_cpu(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child, its stdout): the child's output goes to a file, so wait4 reaps it."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(argv[:5])} failed: {err.read().decode(errors='replace').strip()[-800:]}")
        return wall, usage.ru_utime + usage.ru_stime, out.read().decode(errors="replace")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3; medians are reported)")
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base_env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen"),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        base_env.pop("PYTHONDONTWRITEBYTECODE", None)  # as an installed copy runs: bytecode read
        subprocess.run([py, "-m", "compileall", "-q", str(REPO / "workbench")], check=True, env=base_env,
                       stdout=subprocess.DEVNULL)
        model = root / "llama-70b"
        model.mkdir()
        (model / "config.json").write_text(json.dumps(LLAMA_70B))
        for i in (1, 2):  # decoys: opening either one is a failure
            (model / f"model-0000{i}-of-00002.safetensors").write_bytes(b"\0" * 64)
        hub = root / "meta-llama-3-70b"  # the Hub's config.json: a built-in template serves it
        hub.mkdir()
        (hub / "config.json").write_text(json.dumps(SOURCES["meta-llama/Meta-Llama-3-70B"], indent=2))
        small = root / "llama-8b"
        small.mkdir()
        (small / "config.json").write_text(json.dumps(LLAMA_8B))
        # The caches: one with the 8B's template only (copied afresh for every templated run, so the 70B's tree is
        # never remembered there), one that remembers the 70B's tree.
        seed, again = root / "seed-cache", root / "again-cache"
        inspect = [py, "-m", "workbench", "inspect"]
        subprocess.run(inspect + [str(small)], check=True, env={**base_env, "LORA_WORKBENCH_CACHE": str(seed)},
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(seed / "trees")
        assert list((seed / "templates").glob("*.json")), "no template was learned from the 8B config"
        subprocess.run(inspect + [str(model)], check=True, env={**base_env, "LORA_WORKBENCH_CACHE": str(again)},
                       stdout=subprocess.DEVNULL)
        counter = iter(range(10**6))

        def fresh_cache(from_seed: bool) -> dict[str, str]:
            folder = root / f"cache-{next(counter)}"
            if from_seed:
                shutil.copytree(seed, folder)
            return {**base_env, "LORA_WORKBENCH_CACHE": str(folder)}

        cases = {
            "bare: import torch, transformers": ([py, "-c", "import torch, transformers"], lambda: base_env),
            "inspect 70B, first ever, built-in": (inspect + [str(hub)], lambda: fresh_cache(False)),
            "inspect 70B, first ever, no built-in": (inspect + [str(model)], lambda: fresh_cache(False)),
            "inspect 70B, --no-cache": (inspect + [str(model), "--no-cache"], lambda: fresh_cache(False)),
            "inspect 70B, template (8B seen)": (inspect + [str(model)], lambda: fresh_cache(True)),
            "inspect 70B, same config again": (inspect + [str(model)],
                                               lambda: {**base_env, "LORA_WORKBENCH_CACHE": str(again)}),
            "window: open 70B, built": ([py, "-c", WINDOW, str(model)], lambda: fresh_cache(False)),
            "window: open 70B, template": ([py, "-c", WINDOW, str(model)], lambda: fresh_cache(True)),
            "window: open 70B, cache": ([py, "-c", WINDOW, str(model)],
                                        lambda: {**base_env, "LORA_WORKBENCH_CACHE": str(again)}),
        }
        for name, (argv, env) in cases.items():  # untimed: bytecode in place, file caches warm
            child_env = env()
            timed_cpu(argv, child_env)
            cache = Path(child_env.get("LORA_WORKBENCH_CACHE", root / "none"))
            if name == "inspect 70B, first ever, built-in" and cache.exists() and any(cache.rglob("*.json")):
                raise SystemExit(f"{name}: the cache was written, so no built-in template served the 70B config")
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        opens: dict[str, list[float]] = {name: [] for name in cases if name.startswith("window")}
        weight_reads: list[str] = []
        for round_no in range(args.rounds):
            for name, (argv, env) in cases.items():
                wall, cpu, out = timed_cpu(argv, env())
                times[name].append((wall, cpu))
                if name in opens:
                    result = json.loads(out.strip().splitlines()[-1])
                    expected = name.rsplit(", ", 1)[-1]
                    if result["origin"] != expected or result["blocks"] != 80:
                        raise SystemExit(f"{name}: opened from {result['origin']}, {result['blocks']} blocks")
                    opens[name].append(result["seconds"])
                    weight_reads += result["weight_reads"]
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
    bare = "bare: import torch, transformers"
    wall0 = statistics.median(w for w, _ in times[bare])
    cpu0 = statistics.median(c for _, c in times[bare])
    print(f"load average before the rounds: {load}; after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'whole process':36s} {'wall s':>7s} {'min':>6s} {'ratio':>6s} {'cpu s':>7s} {'ratio':>6s}"
          f"   (medians of {args.rounds})")
    for name, t in times.items():
        wall, cpu = statistics.median(w for w, _ in t), statistics.median(c for _, c in t)
        print(f"{name:36s} {wall:7.2f} {min(w for w, _ in t):6.2f} {wall / wall0:5.2f}× {cpu:7.2f} {cpu / cpu0:5.2f}×")
    print("\nthe window's open → opened (in-process, after the import warm-up; median s):")
    for name, seconds in opens.items():
        print(f"  {name:34s} {statistics.median(seconds):.3f}   (min {min(seconds):.3f})")
    print(f"weight files opened: {len(weight_reads)} (target 0)")
    return 0 if not weight_reads else 1


if __name__ == "__main__":
    raise SystemExit(main())
