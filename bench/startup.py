"""How long short commands and the window take to start, against the bare imports they cannot avoid.

    python bench/startup.py             # 3 interleaved rounds (about 2 minutes on 2 cores)
    python bench/startup.py --rounds 5

Each measurement is a fresh interpreter, timed from the parent (whole process, as a user waits for it):

- ``workbench inspect`` on a Llama-3-70B-shaped config.json (no weights) against a bare
  ``python -c "import torch, transformers"``, twice: the first time a config is seen (``--no-cache``: the
  architecture's modeling code is imported to build the tree) and again (the remembered tree, core/tree_cache.py).
  Target: ≤ 1.3×.
- the window's first paint (the process ends in the turn after the window's first UpdateRequest: its shell,
  gui/startup.py) against a bare PySide6 ``QMainWindow`` timed the same way. Target: ≤ 1.5×. For the record also the window
  complete (every tab built, in the turns after the first paint).
- ``workbench export`` (copy a trained adapter) and ``workbench runs`` against ``python -c "import torch"``
  and a bare interpreter.
- "transformers alone": the 70B config read and the model built on the meta device, nothing else: the floor of
  the first inspect (bench/inspect_floor.py says which imports set it).

Rounds are interleaved (A B C D …, repeated), and the median and minimum of each are printed with the ratios,
because the machine may be shared. Each row measures what a user sees on an installed copy: the children run
without ``PYTHONDONTWRITEBYTECODE`` (some sandboxes set it, and then workbench's modules were compiled from source
in every round while the bare rows' libraries came compiled), and workbench is byte-compiled before the rounds. After the timings, one profile of a small streaming merge prints how many
seconds of it went to importing PEFT (the target is none).
"""

from __future__ import annotations

import os
import sys

# Running a file puts its folder first on sys.path, where bench/inspect.py would shadow the standard module
# that pstats and torch import: drop it before anything else is imported.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The least a first inspect must do through transformers: read the config and build the model on the meta device.
# Its ratio to the bare row is the floor of "inspect (70B, first time)"; bench/inspect_floor.py splits it by import.
TRANSFORMERS_ALONE = """
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
config = AutoConfig.from_pretrained(sys.argv[1])
with torch.device("meta"):
    AutoModelForCausalLM.from_config(config)
"""

LLAMA_70B = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8192, "intermediate_size": 28672,
    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "dtype": "bfloat16",
}

# Both windows end their process at their first paint: the turn after the window's first UpdateRequest (the
# event that paints it and flushes it to the screen). Nothing after it is timed, for neither window: what happens
# next (the workbench window builds its tabs, the interpreter shuts down) is not what "visible" waits for.
AT_FIRST_PAINT = """
import os
from PySide6.QtCore import QEvent, QObject, QTimer
class _FirstPaint(QObject):
    def eventFilter(self, watched, event):
        if event.type() == QEvent.Type.UpdateRequest:
            QTimer.singleShot(0, lambda: os._exit(0))
        return False
_first_paint = _FirstPaint()
"""

FIRST_PAINT = AT_FIRST_PAINT + """
import sys
from PySide6.QtCore import QSettings
from workbench.gui.app import create_app
app = create_app()
from workbench.gui.main_window import MainWindow
window = MainWindow(QSettings(sys.argv[1], QSettings.Format.IniFormat))
window.installEventFilter(_first_paint)
window.show()
app.exec()
"""

# Until every tab is built (gui/startup.py builds them in the turns after the first paint), for the record.
WINDOW_COMPLETE = """
import os, sys
from PySide6.QtCore import QSettings
from workbench.gui.app import create_app
app = create_app()
from workbench.gui.main_window import MainWindow
window = MainWindow(QSettings(sys.argv[1], QSettings.Format.IniFormat))
window.show()
window.when_built(lambda: os._exit(0))
app.exec()
"""

BARE_PAINT = AT_FIRST_PAINT + """
from PySide6.QtWidgets import QApplication, QMainWindow
app = QApplication([])
window = QMainWindow()
window.installEventFilter(_first_paint)
window.resize(1280, 860)
window.show()
app.exec()
"""


def compile_workbench(env: dict[str, str]) -> str:
    """Byte-compile workbench as an install does, and let the children write and read bytecode; says what it did."""
    was_set = env.pop("PYTHONDONTWRITEBYTECODE", None) is not None
    done = subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "workbench")], capture_output=True,
                          text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"could not byte-compile workbench: {done.stdout.strip()[-800:]}")
    return ("workbench byte-compiled before the rounds; PYTHONDONTWRITEBYTECODE was set here and is unset for the "
            "timed processes" if was_set else "workbench byte-compiled before the rounds")


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return seconds


def train_tiny_run(root: Path, env: dict[str, str]) -> Path:
    """A real run folder to export: a tiny llama trained for one step."""
    code = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(REPO / 'tests')!r})
import tiny
from workbench.core.config import RunConfig
from workbench.core.training import run
root = Path({str(root)!r})
model = tiny.save_model("llama", root / "model")
data = root / "train.jsonl"
data.write_text("".join(json.dumps({{"prompt": f"Q{{i}}?", "completion": f" A{{i}}."}}) + "\\n" for i in range(4)))
config = RunConfig.from_dict({{"model": {{"source": str(model)}}, "lora": {{"r": 4, "alpha": 8}},
    "data": {{"train_files": [str(data)], "max_length": 32}}, "training": {{"max_steps": 1, "batch_size": 2}},
    "output": {{"runs_root": str(root / "runs")}}}})
print(run(config, None, run_dir=root / "runs" / "done").run_dir)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"could not train the tiny run: {done.stderr.strip()[-800:]}")
    return root / "runs" / "done"


def merge_peft_import_seconds(run_dir: Path, out: Path) -> tuple[float, float]:
    """(seconds spent importing peft, total seconds) of one profiled in-process merge of the tiny run."""
    from workbench.core.merge import merge_adapter

    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    merge_adapter(run_dir.parent.parent / "model", run_dir, out)
    profile.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profile)
    peft_seconds = max((ct for (file, _, func), (_, _, _, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
                        if func == "<module>" and f"{os.sep}peft{os.sep}__init__.py" in file), default=0.0)
    return peft_seconds, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3; the median is reported)")
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen"),
               "LORA_WORKBENCH_CACHE": str(tmp_path / "cache"),  # never the user's cache
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        compiled = compile_workbench(env)
        model70 = tmp_path / "llama-70b"
        model70.mkdir()
        (model70 / "config.json").write_text(json.dumps(LLAMA_70B))
        run_dir = train_tiny_run(tmp_path / "tiny", env)
        cases: dict[str, list[str]] = {
            "bare: import torch, transformers": [py, "-c", "import torch, transformers"],
            "workbench inspect (70B, first time)": [py, "-m", "workbench", "inspect", str(model70), "--no-cache"],
            "workbench inspect (70B, again)": [py, "-m", "workbench", "inspect", str(model70)],
            "transformers alone (70B, meta model)": [py, "-c", TRANSFORMERS_ALONE, str(model70)],
            "bare: PySide6 window shown": [py, "-c", BARE_PAINT],
            "workbench window first paint": [py, "-c", FIRST_PAINT, str(tmp_path / "settings.ini")],
            "workbench window complete": [py, "-c", WINDOW_COMPLETE, str(tmp_path / "settings.ini")],
            "bare: import torch": [py, "-c", "import torch"],
            "workbench export (tiny adapter)": [py, "-m", "workbench", "export", str(run_dir)],
            "bare: python": [py, "-c", "pass"],
            "workbench runs": [py, "-m", "workbench", "runs", "--root", str(run_dir.parent)],
        }
        timed(cases["workbench inspect (70B, again)"], env)  # remembers the tree: every timed "again" reuses it
        for name, argv in cases.items():  # one untimed run each: any bytecode still missing is written now
            if "export" not in name:
                timed(argv, env)
        load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
        times: dict[str, list[float]] = {name: [] for name in cases}
        for round_no in range(args.rounds):
            for name, argv in cases.items():
                if "export" in name:
                    argv = [*argv, "--out", str(tmp_path / f"exported-{round_no}")]
                times[name].append(timed(argv, env))
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
        median = {name: statistics.median(t) for name, t in times.items()}
        print(f"({compiled}; {args.rounds} interleaved rounds; load average before: {load_before})")
        print(f"{'':38s} {'median s':>9s} {'min s':>7s}")
        for name, t in times.items():
            print(f"{name:38s} {median[name]:9.2f} {min(t):7.2f}")
        print()
        for what, bare, target in (("workbench inspect (70B, first time)", "bare: import torch, transformers", 1.3),
                                   ("workbench inspect (70B, again)", "bare: import torch, transformers", 1.3),
                                   ("transformers alone (70B, meta model)", "bare: import torch, transformers", None),
                                   ("workbench window first paint", "bare: PySide6 window shown", 1.5),
                                   ("workbench window complete", "bare: PySide6 window shown", None),
                                   ("workbench export (tiny adapter)", "bare: import torch", None),
                                   ("workbench runs", "bare: python", None)):
            ratio = median[what] / median[bare]
            goal = f"   (target ≤ {target}×: {'met' if ratio <= target else 'NOT met'})" if target else ""
            print(f"{what} / {bare}: {ratio:.2f}×{goal}")
        sys.path.insert(0, str(REPO))
        peft_s, total_s = merge_peft_import_seconds(run_dir, tmp_path / "merged")
        print(f"\nmerge of the tiny model: {total_s:.2f} s in all, {peft_s:.3f} s importing peft "
              f"(peft imported: {'yes' if 'peft' in sys.modules else 'no'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
