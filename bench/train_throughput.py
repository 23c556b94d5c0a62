"""Training throughput and memory: the engine against the plain HF Trainer + PEFT scripts people write by hand.

The same model is trained on the same variable-length instruction data (Alpaca-style rows, generated
deterministically: mean ≈ 165 tokens, max 512) with the same LoRA (all-linear, r=16), learning rate and
precision, three ways:

* **engine** — ``workbench.core.training.run`` with its defaults (packing on, the loss on supervised positions);
* **padded** — a plain Trainer + PEFT script whose collator pads each batch to its longest row (what the web
  UIs do by default);
* **flattened** — the same plain script with transformers' ``DataCollatorWithFlattening`` (padding-free: the
  whole batch is one row with restarting position ids), the best a plain script does.

Each way trains in its own process (so each has its own peak RSS), the ways interleaved round by round
(A B C, B C A, C A B, ...) so that a change in the shared machine's load hits all of them alike; each prints
min and median over the rounds. Reported per way:

* **trained tokens/s** — positions that carry loss (the completion), what the optimisation pays for;
* **examples/s**, and **real tokens/s** (non-padding: template and prompt tokens included, which flatter it);
* **peak RSS** of the process (model loading included; the same model for every way).

Time is the training loop's wall time (the Trainer's start to its last step's end: model loading and
tokenisation excluded). Before the rounds, one batch's loss through the engine's loss
(``core/loss.HeadlessCausalLM``) is compared with the model's own loss, padded and packed, and printed.

    .venv/bin/python bench/train_throughput.py                     # the built-in SmolLM2-135M
    .venv/bin/python bench/train_throughput.py --model DIR --examples 64 --rounds 5
    python bench/train_throughput.py --model DIR --device cuda --precision bf16 --examples 2000   # on a GPU

Targets (issue 22): engine ≥ 1.5× flattened in trained tokens/s; engine peak RSS ≤ 0.5× flattened's.
"""

from __future__ import annotations

import os
import sys

# bench/inspect.py would shadow the stdlib's inspect module for every script in this folder.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

WAYS = ("engine", "padded", "flattened")
RESULT_PREFIX = "RESULT "

WORDS = (
    "the a of to and in is for on with as by at from that this it be are was were will can should would model data "
    "train answer question explain describe list write summarize translate number value result example short long "
    "simple clear first second third next last small large fast slow good bad new old city river country science "
    "history music language computer program function variable system network energy water light sound color time"
).split()


def make_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca-style rows whose token lengths spread like real instruction data (log-normal, capped)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        # With SmolLM2's tokenizer and the Alpaca template: mean ≈ 164 tokens, median 135, max ≈ 510.
        total_words = min(int(rng.lognormvariate(4.6, 0.85)), 480)
        instr = max(4, total_words // 5)
        inp = rng.choice([0, 0, max(1, total_words // 4)])
        out = max(3, total_words - instr - inp)
        words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
        rows.append({"instruction": words(instr).capitalize() + "?", "input": words(inp) if inp else "",
                     "output": words(out).capitalize() + "."})
    return rows


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


# ------------------------------------------------------------------------------------- the plain scripts


def encode_alpaca(tok, max_length: int):
    from workbench.core.data import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT

    def encode(row):
        template = ALPACA_PROMPT if row["input"] else ALPACA_PROMPT_NO_INPUT
        prompt = template.format(instruction=row["instruction"], input=row["input"])
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tok(row["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (p_ids + c_ids)[:max_length]
        return {"input_ids": ids, "labels": ([-100] * len(p_ids) + c_ids)[:max_length]}

    return encode


def plain_script(model_dir: Path, data_file: Path, tmp: Path, *, flatten: bool, batch_size: int, max_length: int,
                 device: str, precision: str) -> dict:
    """What a user writes by hand: Alpaca template, tokenize, pad (or flatten), Trainer + PEFT."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorWithFlattening, Trainer,
                              TrainerCallback, TrainingArguments)

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    ds = load_dataset("json", data_files=str(data_file), split="train").map(
        encode_alpaca(tok, max_length), remove_columns=["instruction", "input", "output"])
    real_tokens = sum(len(x) for x in ds["input_ids"])
    trained_tokens = sum(sum(1 for y in labels[1:] if y != -100) for labels in ds["labels"])

    def pad(features):
        width = max(len(f["input_ids"]) for f in features)
        out: dict[str, list] = {"input_ids": [], "labels": [], "attention_mask": []}
        for f in features:
            n = len(f["input_ids"])
            out["input_ids"].append(f["input_ids"] + [tok.pad_token_id] * (width - n))
            out["labels"].append(f["labels"] + [-100] * (width - n))
            out["attention_mask"].append([1] * n + [0] * (width - n))
        return {k: torch.tensor(v) for k, v in out.items()}

    moments: dict[str, float] = {}
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            moments["start"] = time.time()

        def on_step_end(self, args, state, control, **kw):
            moments["end"], moments["steps"] = time.time(), state.global_step

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    # The same weight dtype the engine loads (precision.training_weight_dtype): bf16 weights for a bf16 run on a GPU.
    weights = torch.bfloat16 if (device == "cuda" and precision == "bf16") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=weights)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=str(tmp), per_device_train_batch_size=batch_size, num_train_epochs=1,
                             learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.03, use_cpu=device == "cpu",
                             bf16=precision == "bf16", report_to="none", save_strategy="no", logging_steps=1,
                             disable_tqdm=True, remove_unused_columns=False, seed=42, data_seed=42)
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      data_collator=DataCollatorWithFlattening() if flatten else pad, callbacks=[Timer()])
    trainer.train()
    return {"real_tokens": real_tokens, "trained_tokens": trained_tokens, "examples": len(ds),
            "seconds": moments["end"] - moments["start"], "steps": int(moments["steps"]), "losses": losses}


# ---------------------------------------------------------------------------------------------- the engine


def engine(model_dir: Path, data_file: Path, tmp: Path, *, batch_size: int, max_length: int, device: str,
           precision: str, examples: int) -> dict:
    from workbench.core import events as ev
    from workbench.core.config import RunConfig
    from workbench.core.training import run

    cfg = RunConfig.from_dict({
        "model": {"source": str(model_dir)},
        "lora": {"r": 16, "alpha": 32.0, "dropout": 0.05, "preset": "all-linear"},
        "data": {"train_files": [str(data_file)], "format": "alpaca", "max_length": max_length},
        "training": {"epochs": 1.0, "learning_rate": 2e-4, "batch_size": batch_size, "logging_steps": 1, "device": device,
                     "precision": precision},
        "output": {"run_dir": str(tmp / "run")},
    })
    sink = ev.ListSink()
    run(cfg, sink)
    started, steps = sink.of(ev.RunStarted)[0], sink.of(ev.Step)
    last = steps[-1]
    return {"real_tokens": last.tokens_seen, "trained_tokens": last.trained_tokens_seen, "examples": examples,
            "seconds": last.time - started.time, "steps": last.step, "losses": [s.loss for s in steps]}


def loss_check(model_dir: Path, data_file: Path, *, max_length: int) -> dict:
    """One batch of the 4 shortest examples, padded and packed (as the engine's collators build them): the
    engine's loss against the model's own, and the largest LoRA gradient difference."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.core.data import PackedCollator, PaddedCollator
    from workbench.core.loss import HeadlessCausalLM, chunked_loss_head

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = load_dataset("json", data_files=str(data_file), split="train")
    encoded = sorted((encode_alpaca(tok, max_length)(r) for r in rows), key=lambda e: len(e["input_ids"]))[:4]
    padded = PaddedCollator(tok.pad_token_id or 0)(encoded)
    packed_row = {"input_ids": sum((e["input_ids"] for e in encoded), []),
                  "labels": sum((e["labels"] for e in encoded), []),
                  "position_ids": sum((list(range(len(e["input_ids"]))) for e in encoded), [])}
    packed = PackedCollator(tok.pad_token_id or 0)([packed_row])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.01)  # B = 0 would make A's gradients zero
    found = chunked_loss_head(model)
    if found is None:
        return {"note": f"{model.config.model_type}: the engine keeps the model's own loss"}
    out = {}
    for name, batch in (("padded", padded), ("packed", packed)):
        results = []
        for fn in (lambda b: model(**b).loss, lambda b: HeadlessCausalLM(model, *found)(**b)["loss"]):
            model.zero_grad()
            loss = fn(dict(batch))
            loss.backward()
            results.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
        (plain, plain_grads), (ours, our_grads) = results
        grad_diff = max(float((our_grads[n] - plain_grads[n]).abs().max()) for n in plain_grads)
        grad_scale = max(float(g.abs().max()) for g in plain_grads.values())
        out[name] = {"plain": plain, "engine": ours, "grad_diff": grad_diff, "grad_scale": grad_scale}
    return out


# -------------------------------------------------------------------------------------------- the driver


def worker(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    where = {"device": args.device, "precision": args.precision, "max_length": args.max_length}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        if args.worker == "loss-check":
            result = loss_check(args.model, args.data, max_length=args.max_length)
        elif args.worker == "engine":
            result = engine(args.model, args.data, tmp, batch_size=args.engine_batch, examples=args.examples, **where)
        else:
            result = plain_script(args.model, args.data, tmp, flatten=args.worker == "flattened",
                                  batch_size=args.batch_size, **where)
    result["peak_rss"] = peak_rss_bytes()
    result["threads"] = torch.get_num_threads()
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def run_worker(way: str, args, data_file: Path, model_dir: Path, engine_batch: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", way, "--model", str(model_dir), "--data",
               str(data_file), "--examples", str(args.examples), "--batch-size", str(args.batch_size),
               "--engine-batch", str(engine_batch), "--max-length", str(args.max_length), "--device", args.device,
               "--precision", args.precision, "--threads", str(args.threads or 0)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{way} failed (exit {done.returncode})")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="local HF model folder (default: the built-in SmolLM2-135M)")
    ap.add_argument("--examples", type=int, default=32, help="training examples per run (default 32)")
    ap.add_argument("--batch-size", type=int, default=8, help="examples per step for the plain scripts (default 8)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per process (default: torch's choice)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--only", choices=WAYS, action="append", help="run only these ways (repeatable)")
    ap.add_argument("--worker", choices=[*WAYS, "loss-check"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--engine-batch", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    model_dir = args.model or default_model()
    rows = make_rows(args.examples)
    began = time.time()
    with tempfile.TemporaryDirectory() as tmp_s:
        data_file = Path(tmp_s) / "alpaca.jsonl"
        data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        template_tokens = 30  # the Alpaca template around each row
        mean_tokens = sum(len(tok(r["instruction"] + r["input"] + r["output"])["input_ids"]) for r in rows) / len(rows) + template_tokens
        # The engine packs examples into rows of max_length: give it about as many tokens per step as the scripts get.
        engine_batch = max(1, round(args.batch_size * mean_tokens / args.max_length))
        print(f"model: {model_dir}; {len(rows)} examples, mean ≈ {mean_tokens:.0f} tokens; plain batch {args.batch_size} "
              f"examples, engine batch {engine_batch} packed rows of ≤ {args.max_length}; device {args.device}, "
              f"{args.precision}; load average before: {load_average()}", flush=True)

        check = run_worker("loss-check", args, data_file, model_dir, engine_batch)
        for name in ("padded", "packed"):
            if name in check:
                c = check[name]
                print(f"loss check ({name} batch): model's own {c['plain']:.6f}, engine's {c['engine']:.6f}, "
                      f"difference {abs(c['plain'] - c['engine']):.2e}; largest LoRA gradient difference "
                      f"{c['grad_diff']:.2e} (largest gradient {c['grad_scale']:.2e})", flush=True)
        if "note" in check:
            print("loss check:", check["note"])

        ways = list(args.only or WAYS)
        results: dict[str, list[dict]] = {w: [] for w in ways}
        for r in range(args.rounds):
            order = ways[r % len(ways):] + ways[:r % len(ways)]  # A B C, B C A, C A B
            for way in order:
                res = run_worker(way, args, data_file, model_dir, engine_batch)
                results[way].append(res)
                print(f"round {r + 1} {way:>10}: {res['trained_tokens'] / res['seconds']:8,.1f} trained tok/s "
                      f"{res['real_tokens'] / res['seconds']:8,.1f} real tok/s {res['examples'] / res['seconds']:6.2f} ex/s "
                      f"in {res['seconds']:6.1f} s, {res['steps']} steps, peak RSS {res['peak_rss'] / 2**30:5.2f} GiB "
                      f"(load {load_average()})", flush=True)

    print()
    summary = {}
    print(f"{'way':>10}  {'trained tok/s':>21}  {'real tok/s':>21}  {'examples/s':>13}  {'peak RSS GiB':>12}")
    print(f"{'':>10}  {'min':>10} {'median':>10}  {'min':>10} {'median':>10}  {'min':>6} {'median':>6}  {'median':>12}")
    for way, runs in results.items():
        trained = [x["trained_tokens"] / x["seconds"] for x in runs]
        real = [x["real_tokens"] / x["seconds"] for x in runs]
        examples = [x["examples"] / x["seconds"] for x in runs]
        rss = statistics.median(x["peak_rss"] for x in runs)
        summary[way] = {"trained": statistics.median(trained), "real": statistics.median(real),
                        "examples": statistics.median(examples), "rss": rss}
        print(f"{way:>10}  {min(trained):10,.1f} {statistics.median(trained):10,.1f}  {min(real):10,.1f} "
              f"{statistics.median(real):10,.1f}  {min(examples):6.2f} {statistics.median(examples):6.2f}  {rss / 2**30:12.2f}")
    print()
    if "engine" in summary:
        e = summary["engine"]
        for base in ("flattened", "padded"):
            if base in summary:
                b = summary[base]
                print(f"engine / {base:>9} (medians): trained tok/s {e['trained'] / b['trained']:.2f}×, "
                      f"examples/s {e['examples'] / b['examples']:.2f}×, real tok/s {e['real'] / b['real']:.2f}×, "
                      f"peak RSS {e['rss'] / b['rss']:.2f}×")
        if results["engine"]:
            print("engine trained tokens:", results["engine"][0]["trained_tokens"],
                  "| plain scripts':", next((r[0]["trained_tokens"] for w, r in results.items() if w != "engine" and r), "–"))
    first = next(iter(results.values()))[0]
    print(f"torch threads per process: {first['threads']}; load average after: {load_average()}; "
          f"wall time {time.time() - began:.0f} s")
    print("targets (issue 22): engine ≥ 1.5× flattened trained tok/s; engine peak RSS ≤ 0.5× flattened")
    return 0


def default_model() -> Path:
    from workbench.core.builtin import ensure_builtin

    return ensure_builtin()


if __name__ == "__main__":
    sys.exit(main())
