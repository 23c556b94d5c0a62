"""Where the first ``workbench inspect`` of a config goes, and what no program that asks transformers can avoid.

    python bench/inspect_floor.py              # 3 interleaved rounds (about 2 minutes on 2 cores)
    python bench/inspect_floor.py --rounds 5

Five fresh interpreters per round, interleaved, each timed from the parent (wall seconds, and CPU seconds of the
child from ``wait4``: less disturbed by a shared machine than the wall clock):

- ``python -c pass`` and ``python -c "import torch, transformers"`` (the bare rows);
- **transformers alone**: ``AutoConfig.from_pretrained`` and ``AutoModelForCausalLM.from_config`` on the meta
  device, nothing else: the least work that gets a module tree out of transformers' modeling code;
- ``workbench inspect`` on a Llama-3-70B-shaped config.json, the first time (``--no-cache``) and again (the
  remembered tree, core/tree_cache.py).

Then, once per round in a fresh interpreter, the CPU seconds of each step of "transformers alone" after
``import torch, transformers``: which imports its modeling code pulls in (each step imports one module the next
would otherwise import itself, so the steps add up to the whole). The medians are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LLAMA_70B = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8192, "intermediate_size": 28672,
    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "dtype": "bfloat16",
}
ALONE = """
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
config = AutoConfig.from_pretrained(sys.argv[1])
with torch.device("meta"):
    AutoModelForCausalLM.from_config(config)
"""
# Each step imports what the next would pull in anyway, in the order transformers' modeling code reaches them.
STEPS = """
import json, sys, time
marks = [("start", time.process_time())]
def mark(name): marks.append((name, time.process_time()))
import torch, transformers; mark("import torch, transformers (the bare row)")
import transformers.models; mark("transformers.models: the lazy index of every architecture's files")
import torch.distributed.tensor; mark("torch.distributed.tensor (transformers.distributed.sharding_utils)")
import accelerate; mark("accelerate (transformers.integrations.accelerate)")
import transformers.models.llama.configuration_llama; mark("the rest of the config class (type validators, activations)")
from transformers import AutoConfig
config = AutoConfig.from_pretrained(sys.argv[1]); mark("AutoConfig.from_pretrained itself")
import torch._dynamo; mark("torch._dynamo (transformers.masking_utils)")
import transformers.masking_utils; mark("the rest of transformers.masking_utils")
import torch.distributed.checkpoint; mark("torch.distributed.checkpoint (transformers.distributed.checkpoint)")
import transformers.generation.utils; mark("transformers.generation.utils (GenerationMixin)")
import transformers.modeling_utils; mark("the rest of transformers.modeling_utils (PreTrainedModel)")
import transformers.models.llama.modeling_llama; mark("transformers.models.llama.modeling_llama")
from transformers import AutoModelForCausalLM
with torch.device("meta"):
    AutoModelForCausalLM.from_config(config)
mark("building the 70B model on the meta device")
print(json.dumps([(marks[i][0], marks[i][1] - marks[i - 1][1]) for i in range(1, len(marks))]))
"""


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one child process."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    err = child.stderr.read().decode(errors="replace") if child.stderr else ""
    if status != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed: {err.strip()[-800:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3; medians are reported)")
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        env = {**os.environ, "LORA_WORKBENCH_CACHE": str(tmp_path / "cache"),  # never the user's cache
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        # As an installed copy runs: workbench byte-compiled, bytecode read (some sandboxes forbid writing it).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([py, "-m", "compileall", "-q", str(REPO / "workbench")], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        model = tmp_path / "llama-70b"
        model.mkdir()
        (model / "config.json").write_text(json.dumps(LLAMA_70B))
        cases = {
            "bare: python": [py, "-c", "pass"],
            "bare: import torch, transformers": [py, "-c", "import torch, transformers"],
            "transformers alone: config + meta model": [py, "-c", ALONE, str(model)],
            "workbench inspect (70B, first time)": [py, "-m", "workbench", "inspect", str(model), "--no-cache"],
            "workbench inspect (70B, again)": [py, "-m", "workbench", "inspect", str(model)],
        }
        for argv in cases.values():  # untimed: bytecode and the remembered tree are in place for every round
            timed(argv, env)
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        steps: list[list[tuple[str, float]]] = []
        for round_no in range(args.rounds):
            for name, argv in cases.items():
                times[name].append(timed(argv, env))
            done = subprocess.run([py, "-c", STEPS, str(model)], capture_output=True, text=True, env=env, check=True)
            steps.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
        bare = "bare: import torch, transformers"
        wall0 = statistics.median(w for w, _ in times[bare])
        cpu0 = statistics.median(c for _, c in times[bare])
        print(f"load average before the rounds: {load}; after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"{'':42s} {'wall s':>7s} {'ratio':>6s} {'cpu s':>7s} {'ratio':>6s}   (medians of {args.rounds})")
        for name, t in times.items():
            wall, cpu = statistics.median(w for w, _ in t), statistics.median(c for _, c in t)
            print(f"{name:42s} {wall:7.2f} {wall / wall0:5.2f}× {cpu:7.2f} {cpu / cpu0:5.2f}×")
        print(f"\nCPU seconds per step of 'transformers alone' (median of {args.rounds}; ratio to the bare row's CPU):")
        for i, (label, _) in enumerate(steps[0]):
            seconds = statistics.median(s[i][1] for s in steps)
            print(f"  {seconds:6.2f}  {seconds / cpu0:5.2f}×  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
