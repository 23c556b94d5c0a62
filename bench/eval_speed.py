"""Evaluation throughput against training throughput, measured in one engine run, interleaved.

One ``workbench.core.training.run`` on the same model, data layout and batch size trains ``--eval-every`` steps,
evaluates the whole validation set, trains again, evaluates again … (A B A B …, ``--rounds`` times). Each training
segment and each evaluation is one measurement, so both see the same machine load at about the same time (on a
shared machine, load drifts over minutes; interleaving keeps that drift out of the ratio):

* **training tokens/s** of a segment: the non-padding tokens it trained on (the Trainer's ``num_input_tokens_seen``,
  as the ``Step`` events report it) over the wall time from the end of the evaluation before it to its last step —
  data loading, forward, backward and optimizer step;
* **evaluation tokens/s** of an evaluation: the validation set's non-padding tokens (the engine's own prepared rows)
  over the Trainer's ``eval_runtime`` — the batched, packed forward pass that gives the evaluation loss.

The medians over the rounds are printed with their ratio. Target (issue 19): evaluation ≥ 2× the training
throughput, since it has no backward pass and no optimizer step.

    .venv/bin/python bench/eval_speed.py                      # the built-in SmolLM2-135M: under 10 min on 2 busy cores
    .venv/bin/python bench/eval_speed.py --model DIR --rounds 5 --eval-every 4 --batch-size 4 --max-length 256

The defaults are sized to finish in under 10 minutes on a 2-core machine shared with other jobs (load 10+), where
a SmolLM2 step of 4 × 256 tokens took up to 140 s: 3 rounds (the fewest a median needs) of 2 steps of 2 × 128
tokens, and 8 validation rows. On a machine of its own, the larger settings above measure the same ratio with
less noise.
"""

from __future__ import annotations

import os
import sys

# bench/inspect.py would shadow the stdlib's inspect module for every script in this folder.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def _make_rows():
    """train_throughput.make_rows: the same deterministic Alpaca-style rows (mean ≈ 165 tokens)."""
    path = Path(__file__).with_name("train_throughput.py")
    spec = importlib.util.spec_from_file_location("_train_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_rows


def measure(model_dir: Path, tmp: Path, *, rounds: int, eval_every: int, batch_size: int, max_length: int,
            train_examples: int, validation_examples: int, device: str, precision: str, packing: bool) -> dict:
    from workbench.core import events as ev
    from workbench.core.config import RunConfig
    from workbench.core.data import prepare
    from workbench.core.models import load_tokenizer, resolve_source
    from workbench.core.training import run

    make_rows = _make_rows()
    train_file, validation_file = tmp / "train.jsonl", tmp / "validation.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in make_rows(train_examples, seed=0)))
    validation_file.write_text("".join(json.dumps(r) + "\n" for r in make_rows(validation_examples, seed=1)))
    cfg = RunConfig.from_dict({
        "model": {"source": str(model_dir)},
        "lora": {"r": 16, "alpha": 32.0, "dropout": 0.05, "preset": "all-linear"},
        "data": {"train_files": [str(train_file)], "validation_files": [str(validation_file)], "format": "alpaca",
                 "max_length": max_length, "packing": packing},
        "training": {"max_steps": rounds * eval_every, "eval_steps": eval_every, "learning_rate": 2e-4,
                     "batch_size": batch_size, "logging_steps": 1, "device": device, "precision": precision},
        "output": {"run_dir": str(tmp / "run")},
    })
    sink = ev.ListSink()
    started = time.monotonic()
    run(cfg, sink)
    wall = time.monotonic() - started

    tokenizer = load_tokenizer(resolve_source(str(model_dir)))
    data = prepare(cfg.data, tokenizer, seed=cfg.training.seed)  # served from the datasets cache
    validation_tokens = sum(len(ids) for ids in data.validation["input_ids"])
    steps = {e.step: e for e in sink.of(ev.Step)}
    evaluations = sink.of(ev.Evaluation)
    train_tps, eval_tps = [], []
    for before, after in zip(evaluations, evaluations[1:]):  # a training segment, then the evaluation after it
        last = steps[after.step]
        first_tokens = steps[before.step].tokens_seen if before.step in steps else 0
        # The Evaluation event is sent when the evaluation before the segment has ended: the segment starts there.
        train_tps.append((last.tokens_seen - first_tokens) / (last.time - before.time))
        eval_tps.append(validation_tokens / after.metrics["eval_runtime"])
    return {"train": train_tps, "eval": eval_tps, "validation_tokens": validation_tokens,
            "validation_rows": len(data.validation), "wall_s": wall,
            "eval_s": [e.metrics["eval_runtime"] for e in evaluations[1:]]}


def default_model() -> Path:
    from workbench.core.builtin import ensure_builtin

    return ensure_builtin()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="local HF model folder (default: the built-in SmolLM2-135M)")
    ap.add_argument("--rounds", type=int, default=3, help="training segments, each followed by an evaluation (≥ 3)")
    # Short segments and a small validation set: A and B alternate every few seconds on an idle machine, so a
    # change in load (other jobs on a shared machine) reaches both sides of a round alike.
    ap.add_argument("--eval-every", type=int, default=2, help="optimizer steps per training segment (default 2)")
    ap.add_argument("--batch-size", type=int, default=2, help="rows per step, for training and evaluation alike")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--validation-examples", type=int, default=8)
    ap.add_argument("--no-packing", action="store_true", help="train and evaluate on padded rows instead of packed ones")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    if args.rounds < 3:
        ap.error("--rounds must be at least 3 (the medians need them)")

    model_dir = args.model or default_model()
    with tempfile.TemporaryDirectory() as tmp_s:
        result = measure(model_dir, Path(tmp_s), rounds=args.rounds, eval_every=args.eval_every,
                         batch_size=args.batch_size, max_length=args.max_length,
                         train_examples=args.rounds * args.eval_every * args.batch_size * 2,
                         validation_examples=args.validation_examples, device=args.device, precision=args.precision,
                         packing=not args.no_packing)
    for i, (t, e) in enumerate(zip(result["train"], result["eval"]), 1):
        print(f"round {i}: training {t:,.0f} tok/s, evaluation {e:,.0f} tok/s ({e / t:.2f}×)")
    train, evaluation = statistics.median(result["train"]), statistics.median(result["eval"])
    print(f"median training:   {train:,.0f} non-padding tokens/s")
    print(f"median evaluation: {evaluation:,.0f} non-padding tokens/s "
          f"({result['validation_tokens']:,} tokens in {result['validation_rows']} rows, "
          f"{statistics.median(result['eval_s']):.1f} s per evaluation)")
    ratio = evaluation / train
    print(f"evaluation / training: {ratio:.2f}× (target ≥ 2×: {'met' if ratio >= 2 else 'NOT met'})")
    print(f"model: {model_dir}; batch {args.batch_size}, max_length {args.max_length}, packing "
          f"{'off' if args.no_packing else 'on'}; torch threads: {__import__('torch').get_num_threads()}; "
          f"device {args.device}, {args.precision}; whole run {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
