"""Quantized bases: peak memory and throughput of fp32 / bf16 / int8 / nf4 on the same model and data, in one run.

Each configuration trains in its own child process (peak RSS only grows within a process, so a shared one would
report the largest for all), through the engine (``workbench.core.training.run``): the same random llama, the
same packed text rows, LoRA all-linear r=16, the same steps. Printed per configuration: peak RSS (CPU) or peak
device memory (CUDA), the memory estimate (``core/memory.py``, for the same run) beside it, real tokens/s and the
final loss; and ratios against fp32 measured in the same run.

    .venv/bin/python bench/quantized.py                 # CPU: h384 x 6 layers (~10M parameters), ~4 min on 2 cores
    .venv/bin/python bench/quantized.py --hidden 512 --layers 8 --steps 10
    python bench/quantized.py --device cuda --hidden 4096 --layers 32 ...   # on a GPU: bf16 replaces fp32 as baseline

On the CPU most of a small model's RSS is the interpreter and libraries (torch, transformers: ~0.5 GiB), so
the weights' share shows as differences between rows, not ratios.
"""

from __future__ import annotations

import os
import sys

# bench/inspect.py would shadow the stdlib's inspect module for every script in this folder.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

CASES = {  # name: (model.quantization, model.dtype, training.precision)
    "fp32": ("none", "float32", "fp32"),
    "bf16": ("none", "bfloat16", "bf16"),
    "int8": ("int8", "auto", "auto"),
    "nf4": ("nf4", "auto", "auto"),
}
WORDS = ("the model learns a small update to each weight while the base stays frozen and quantized "
         "memory falls by a quarter when four bits hold what sixteen held before").split()


def make_model(folder: Path, hidden: int, layers: int) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import tiny

    # hidden a multiple of 64 (bitsandbytes' 4-bit block); heads of 64 like the real llamas
    return tiny.save_model("llama", folder, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64,
                           num_hidden_layers=layers, num_attention_heads=hidden // 64,
                           num_key_value_heads=max(1, hidden // 256), initializer_range=0.05)


def make_data(folder: Path, rows: int) -> Path:
    import random

    rng = random.Random(0)
    path = folder / "text.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 160)))}) + "\n"
                            for _ in range(rows)))
    return path


def config_for(case: str, args: argparse.Namespace, model: Path, data: Path, runs: Path):
    from workbench.core.config import RunConfig

    quant, dtype, precision = CASES[case]
    if args.device == "cuda" and case == "fp32":
        precision = "fp32"
    return RunConfig.from_dict({
        "model": {"source": str(model), "quantization": quant, "dtype": dtype},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "preset": "all-linear"},
        "data": {"train_files": [str(data)], "format": "text", "max_length": args.seq, "train_on": "all"},
        "training": {"max_steps": args.steps, "batch_size": args.batch, "learning_rate": 2e-4, "device": args.device,
                     "precision": precision, "warmup_ratio": 0.0, "logging_steps": 1, "seed": 0,
                     "gradient_checkpointing": args.checkpointing},
        "output": {"runs_root": str(runs), "name": case},
    })


def estimate(config, device: str) -> tuple[int, list]:
    from workbench.core.layers import resolve_selection
    from workbench.core.memory import estimate_for_config
    from workbench.core.models import open_overview
    from workbench.core.quantization import mark_tree

    ov = open_overview(config.model.source)
    mark_tree(ov.tree, config.model)
    est = estimate_for_config(ov.tree, resolve_selection(ov.tree, config.lora), ov.hf_config, config, device=device)
    return est.total, est.parts()


def child(case: str, args: argparse.Namespace) -> None:
    """One configuration, in this process: train, then print one JSON line."""
    import torch

    from workbench.core import events as ev
    from workbench.core.training import run

    config = config_for(case, args, Path(args.model), Path(args.data), Path(args.runs))
    total_estimate, parts = estimate(config, args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sink = ev.ListSink()
    result = run(config, sink)
    steps = sink.of(ev.Step)
    peak = (torch.cuda.max_memory_allocated() if args.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
    s = result.summary
    print("RESULT " + json.dumps({
        "case": case, "peak": peak, "estimate": total_estimate, "parts": parts,
        "tokens_per_s": s["tokens_seen"] / s["train_seconds"] if s["train_seconds"] else 0.0,
        "first_loss": steps[0].loss, "last_loss": steps[-1].loss, "trainable": s["trainable_params"],
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=False,
                    help="gradient checkpointing for every case (default off, so all four compare the same way)")
    ap.add_argument("--cases", default="fp32,bf16,int8,nf4")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--runs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_model(root / "model", args.hidden, args.layers)
        data = make_data(root, 400)
        results = []
        for case in args.cases.split(","):
            cmd = [sys.executable, __file__, "--child", case, "--model", str(model), "--data", str(data),
                   "--runs", str(root / "runs"), "--hidden", str(args.hidden), "--layers", str(args.layers),
                   "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
                   "--device", args.device, "--checkpointing" if args.checkpointing else "--no-checkpointing"]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{case}: failed\n{out.stderr[-3000:]}")
                continue
            results.append(json.loads(line[7:]))
    print(f"model: llama h{args.hidden} x {args.layers} layers; {args.steps} steps of {args.batch} x {args.seq} "
          f"tokens on {args.device}; LoRA all-linear r=16; checkpointing {'on' if args.checkpointing else 'off'}")
    base = results[0] if results else None
    mib = 1024 ** 2
    print(f"{'case':6} {'peak MiB':>9} {'estimate':>9} {'est/peak':>8} {'tok/s':>8} {'vs ' + (base['case'] if base else ''):>7} "
          f"{'loss first→last':>16}  weights in estimate")
    for r in results:
        weights = r["parts"][0]
        print(f"{r['case']:6} {r['peak'] / mib:9.0f} {r['estimate'] / mib:9.0f} {r['estimate'] / r['peak']:8.2f} "
              f"{r['tokens_per_s']:8.0f} {r['tokens_per_s'] / base['tokens_per_s']:7.2f} "
              f"{r['first_loss']:7.3f}→{r['last_loss']:<7.3f}  {weights[0]}: {weights[1] / mib:.1f} MiB")


if __name__ == "__main__":
    main()
