"""Training throughput and memory: the engine against the plain HF Trainer + PEFT scripts people write by hand.

The same model is trained on the same variable-length instruction data (Alpaca-style rows, generated
deterministically: mean ≈ 165 tokens, max 512) with the same LoRA (all-linear, r=16, dropout 0.05), learning rate
and precision, three ways:

* **engine** — ``workbench.core.training.run`` with its defaults (packing on, the loss on supervised positions);
* **padded** — a plain Trainer + PEFT script whose collator pads each batch to its longest row (what the web
  UIs do by default);
* **flattened** — the same plain script with transformers' ``DataCollatorWithFlattening`` (padding-free: the
  whole batch is one row with restarting position ids), the best a plain script does;
* **engine+compile** (only with ``--only``) — the engine with ``training.compile = "blocks"`` (each decoder block
  through torch.compile, core/training/compiled.py). Its process keeps torch.compile's in-memory cache between
  rounds, so only its first round pays the compilation: the "first step" column shows it.

Each way trains in its own child process, started once and kept for all rounds (so its imports are paid once,
and each peak RSS is that way's alone: ``ru_maxrss`` of its child; the model is loaded afresh each round), the
ways taking turns round by round (A B C, B C A, C A B, ...) so that a change in the shared machine's load hits all
of them alike; min and median over the rounds are printed. Measured per way, over the steps after the first
``--warmup-steps`` (warm-up excluded: its allocations and first-call costs are not the steady rate):

* **trained tokens/s** — positions that carry loss (the completion), what the optimisation pays for;
* **examples/s**, and **real tokens/s** (non-padding: template and prompt tokens included, which flatter it);
* **trained tokens per CPU-second** — the same tokens over the process's CPU time (``time.process_time``, all its
  threads) in the same window: on a shared machine the wall-clock rates move with the other jobs' load, the CPU
  time much less (it still grows somewhat with cache and memory-bandwidth contention);
* **peak RSS** of the way's process over its rounds (model loading included; the same model for every way), and
  its rise over the RSS at the first round's start of training (activations, gradients, optimizer state).

Before the rounds, one batch's loss through the engine's loss and forward (``core/loss.HeadlessCausalLM``, the
fused LoRA forward, the lean attention) is compared with the plain model's own loss, padded and packed, and printed.

The defaults fit a 2-core, 24 GB machine in under 10 minutes even when it is shared: the built-in SmolLM2-135M cut
to its first ``--layers 6`` decoder layers (its real weights; the head and the 49k vocabulary stay, so the head is a
larger share of a step than in all 30 layers, which favours the engine's supervised-positions-only head: run
``--layers 0`` for the whole model), 24 examples, batches of 8, rows of ≤ 512, 3 steps a way (1 warm-up), 3 rounds.

    .venv/bin/python bench/train_throughput.py                     # the defaults above
    .venv/bin/python bench/train_throughput.py --layers 0 --examples 32 --rounds 3   # all 30 layers (~1 h here)
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

WAYS = ("engine", "padded", "flattened", "engine+compile")
DEFAULT_WAYS = ("engine", "padded", "flattened")  # engine+compile only when asked for (--only): it compiles for minutes
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

    batches: list[tuple[int, int, int]] = []  # (real tokens, trained tokens, examples) of each batch collated
    records: list[dict] = []
    begin: dict = {}

    def counted(collate):
        def collate_and_count(features):
            batches.append((sum(len(f["input_ids"]) for f in features),
                            sum(sum(1 for y in f["labels"][1:] if y != -100) for f in features), len(features)))
            return collate(features)
        return collate_and_count

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            begin.update(record(0, 0, 0, 0, None))

        def on_step_end(self, args, state, control, **kw):
            done = batches[:state.global_step]  # the loader may have collated a batch ahead
            records.append(record(state.global_step, *(sum(b[i] for b in done) for i in range(3)), None))

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs and records:
                records[-1]["loss"] = float(logs["loss"])

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
                      data_collator=counted(DataCollatorWithFlattening() if flatten else pad), callbacks=[Timer()])
    trainer.train()
    return {"real_tokens": real_tokens, "trained_tokens": trained_tokens, "examples": len(ds), "begin": begin,
            "records": records}


def record(step: int, real: int, trained: int, examples: int, loss: float | None) -> dict:
    """One step's end: wall time, the process's CPU time (all threads), its resident memory now, the counts so far."""
    return {"step": step, "wall": time.time(), "cpu": time.process_time(), "rss": current_rss_bytes(), "real": real,
            "trained": trained, "examples": examples, "loss": loss}


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# ---------------------------------------------------------------------------------------------- the engine


def engine(model_dir: Path, data_file: Path, tmp: Path, *, batch_size: int, max_length: int, device: str,
           precision: str, examples: int, compile_blocks: bool = False) -> dict:
    from workbench.core import events as ev
    from workbench.core.config import RunConfig
    from workbench.core.training import run

    cfg = RunConfig.from_dict({
        "model": {"source": str(model_dir)},
        "lora": {"r": 16, "alpha": 32.0, "dropout": 0.05, "preset": "all-linear"},
        "data": {"train_files": [str(data_file)], "format": "alpaca", "max_length": max_length},
        "training": {"epochs": 1.0, "learning_rate": 2e-4, "batch_size": batch_size, "logging_steps": 1, "device": device,
                     "precision": precision, "compile": "blocks" if compile_blocks else "off"},
        "output": {"run_dir": str(tmp / "run")},
    })
    records: list[dict] = []
    begin: dict = {}
    counted = {"examples": 0.0, "time": 0.0}

    class Sink(ev.ListSink):  # called in the training thread as each event happens: the CPU time is the step's end
        def emit(self, event):
            if isinstance(event, ev.RunStarted):
                begin.update(record(0, 0, 0, 0, None))
                counted["time"] = event.time
            elif isinstance(event, ev.Step):  # the engine reports examples as a rate over the step
                counted["examples"] += (event.examples_per_second or 0.0) * (event.time - counted["time"])
                counted["time"] = event.time
                records.append(record(event.step, event.tokens_seen, event.trained_tokens_seen,
                                      round(counted["examples"]), event.loss))
            super().emit(event)

    run(cfg, Sink())
    return {"real_tokens": records[-1]["real"], "trained_tokens": records[-1]["trained"], "examples": examples,
            "begin": begin, "records": records}


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
    from workbench.core.lean_attention import install_lean_attention
    from workbench.core.lora_forward import install_fused_lora_forward

    def loss_and_grads(fn, batch):
        model.zero_grad()
        loss = fn(dict(batch))
        loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    batches = (("padded", padded), ("packed", packed))
    plain_results = {name: loss_and_grads(lambda b: model(**b).loss, batch) for name, batch in batches}
    install_fused_lora_forward(model)  # the engine's forward: one node per LoRA linear, lean attention
    install_lean_attention(model)
    out = {}
    for name, batch in batches:
        plain, plain_grads = plain_results[name]
        ours, our_grads = loss_and_grads(lambda b: HeadlessCausalLM(model, *found)(**b)["loss"], batch)
        grad_diff = max(float((our_grads[n] - plain_grads[n]).abs().max()) for n in plain_grads)
        grad_scale = max(float(g.abs().max()) for g in plain_grads.values())
        out[name] = {"plain": plain, "engine": ours, "grad_diff": grad_diff, "grad_scale": grad_scale}
    return out


# -------------------------------------------------------------------------------------------- the driver


def truncated_model(model_dir: Path, layers: int, out: Path) -> Path:
    """The model cut to its first ``layers`` decoder layers (its own weights), saved with its tokenizer in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    stack = model.get_decoder().layers
    if layers >= len(stack):
        return model_dir
    del stack[layers:]
    model.config.num_hidden_layers = layers
    for key in ("layer_types",):  # per-layer lists some configs carry
        if isinstance(getattr(model.config, key, None), list):
            setattr(model.config, key, getattr(model.config, key)[:layers])
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def worker(args) -> int:
    """A way's child process: one training (or the loss check) per line read from stdin, each printed as a RESULT
    line; the imports happen once, so later rounds do not pay them again (they are outside the timed steps anyway)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import datasets  # noqa: F401  (imported before the first run, while the other ways start too)
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import workbench.core.training  # noqa: F401

    where = {"device": args.device, "precision": args.precision, "max_length": args.max_length}
    print("READY", flush=True)
    while sys.stdin.readline().strip() == "run":
        with tempfile.TemporaryDirectory() as tmp_s:
            tmp = Path(tmp_s)
            if args.worker == "loss-check":
                result = loss_check(args.model, args.data, max_length=args.max_length)
            elif args.worker in ("engine", "engine+compile"):
                result = engine(args.model, args.data, tmp, batch_size=args.engine_batch, examples=args.examples,
                                compile_blocks=args.worker == "engine+compile", **where)
            else:
                result = plain_script(args.model, args.data, tmp, flatten=args.worker == "flattened",
                                      batch_size=args.batch_size, **where)
        result["peak_rss"] = peak_rss_bytes()
        result["threads"] = torch.get_num_threads()
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


class Worker:
    """One way's child process, kept between rounds (its peak RSS is that way's alone; the ways still take turns)."""

    def __init__(self, way: str, args, data_file: Path, model_dir: Path, engine_batch: int, logs: Path):
        command = [sys.executable, os.path.abspath(__file__), "--worker", way, "--model", str(model_dir), "--data",
                   str(data_file), "--examples", str(args.examples), "--batch-size", str(args.batch_size),
                   "--engine-batch", str(engine_batch), "--max-length", str(args.max_length), "--device",
                   args.device, "--precision", args.precision, "--threads", str(args.threads or 0)]
        self.way, self.log = way, logs / f"{way}.log"
        self._log_file = open(self.log, "w")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._log_file, text=True)

    def ready(self) -> None:
        """Wait for the child's imports to finish (so that no way's first timed step shares the cores with them)."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip() == "READY":
                return
        self.process.wait()
        sys.stderr.write(self.log.read_text()[-4000:])
        raise SystemExit(f"{self.way} failed to start (exit {self.process.returncode})")

    def run(self) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        for line in self.process.stdout:  # the Trainer prints its logs to stdout too
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX):])
        self.process.wait()
        sys.stderr.write(self.log.read_text()[-4000:])
        raise SystemExit(f"{self.way} failed (exit {self.process.returncode})")

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # the loop ends at end of input
            self.process.wait()
        self._log_file.close()


def timed_window(res: dict, warmup: int) -> dict:
    """The rates over the steps after the first ``warmup`` (the warm-up's end to the last step's end)."""
    records = res["records"]
    if len(records) <= warmup:
        raise SystemExit(f"{len(records)} steps, {warmup} of them warm-up: raise --examples or lower --warmup-steps")
    first = records[warmup - 1] if warmup else res["begin"]
    last = records[-1]
    seconds, cpu = last["wall"] - first["wall"], last["cpu"] - first["cpu"]
    counts = {k: last[k] - first[k] for k in ("trained", "real", "examples")}
    return {"trained": counts["trained"] / seconds, "real": counts["real"] / seconds,
            "examples": counts["examples"] / seconds, "trained_per_cpu": counts["trained"] / cpu,
            "seconds": seconds, "cpu": cpu, "steps": last["step"] - first["step"], "trained_tokens": counts["trained"],
            "rss": res["peak_rss"], "rise": res["peak_rss"] - res["begin"]["rss"],
            "first_step": records[0]["wall"] - res["begin"]["wall"],  # with engine+compile: the compilation
            "losses": [r["loss"] for r in records]}


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="local HF model folder (default: the built-in SmolLM2-135M)")
    ap.add_argument("--layers", type=int, default=6,
                    help="keep only the model's first N decoder layers (default 6; 0: all of them)")
    ap.add_argument("--examples", type=int, default=24, help="training examples per run (default 24: 3 steps a way)")
    ap.add_argument("--batch-size", type=int, default=8, help="examples per step for the plain scripts (default 8)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--warmup-steps", type=int, default=1, help="first steps left out of the rates (default 1)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per process (default: torch's choice)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--only", choices=WAYS, action="append", help="run only these ways (repeatable)")
    ap.add_argument("--skip-loss-check", action="store_true", help="leave out the loss comparison before the rounds")
    ap.add_argument("--worker", choices=[*WAYS, "loss-check"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--engine-batch", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    began = time.time()
    rows = make_rows(args.examples)
    with tempfile.TemporaryDirectory() as tmp_s:
        model_dir = args.model or default_model()
        if args.layers:
            model_dir = truncated_model(model_dir, args.layers, Path(tmp_s) / "model")
        data_file = Path(tmp_s) / "alpaca.jsonl"
        data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        from transformers import AutoConfig, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        layers = AutoConfig.from_pretrained(model_dir).num_hidden_layers
        template_tokens = 30  # the Alpaca template around each row
        mean_tokens = sum(len(tok(r["instruction"] + r["input"] + r["output"])["input_ids"]) for r in rows) / len(rows) + template_tokens
        # The engine packs examples into rows of max_length: give it about as many tokens per step as the scripts get.
        engine_batch = max(1, round(args.batch_size * mean_tokens / args.max_length))
        print(f"model: {args.model or 'built-in SmolLM2-135M'}, {layers} decoder layers; {len(rows)} examples, mean ≈ "
              f"{mean_tokens:.0f} tokens; plain batch {args.batch_size} examples, engine batch {engine_batch} packed "
              f"rows of ≤ {args.max_length}; device {args.device}, {args.precision}; rates over the steps after "
              f"{args.warmup_steps} warm-up; load average before: {load_average()}", flush=True)

        logs = Path(tmp_s) / "logs"
        logs.mkdir()
        ways = list(args.only or DEFAULT_WAYS)
        workers = {w: Worker(w, args, data_file, model_dir, engine_batch, logs) for w in ways}  # importing meanwhile
        check: dict = {}
        if not args.skip_loss_check:
            checker = Worker("loss-check", args, data_file, model_dir, engine_batch, logs)
            checker.ready()
            check = checker.run()
            checker.close()
        for name in ("padded", "packed"):
            if name in check:
                c = check[name]
                print(f"loss check ({name} batch): model's own {c['plain']:.6f}, engine's {c['engine']:.6f}, "
                      f"difference {abs(c['plain'] - c['engine']):.2e}; largest LoRA gradient difference "
                      f"{c['grad_diff']:.2e} (largest gradient {c['grad_scale']:.2e})", flush=True)
        if "note" in check:
            print("loss check:", check["note"])

        results: dict[str, list[dict]] = {w: [] for w in ways}
        for worker_ in workers.values():
            worker_.ready()
        starts: dict[str, int] = {}
        for r in range(args.rounds):
            order = ways[r % len(ways):] + ways[:r % len(ways)]  # A B C, B C A, C A B
            for way in order:
                res = workers[way].run()
                starts.setdefault(way, res["begin"]["rss"])  # the rise: from the way's first training start
                res["begin"]["rss"] = starts[way]
                w = timed_window(res, args.warmup_steps)
                w["threads"] = res["threads"]
                results[way].append(w)
                print(f"round {r + 1} {way:>14}: {w['trained']:7,.1f} trained tok/s {w['real']:7,.1f} real tok/s "
                      f"{w['examples']:5.2f} ex/s {w['trained_per_cpu']:6.1f} trained tok/CPU-s; {w['steps']} timed "
                      f"steps in {w['seconds']:5.1f} s, {w['cpu']:5.1f} CPU-s; peak RSS {w['rss'] / 2**30:4.2f} GiB "
                      f"(+{w['rise'] / 2**30:4.2f} in training); first step {w['first_step']:5.1f} s; losses {', '.join(f'{x:.4f}' for x in w['losses'] if x is not None)} "
                      f"(load {load_average()})", flush=True)
        for worker_ in workers.values():
            worker_.close()

    print()
    summary = {}
    keys = (("trained", "trained tok/s", "10,.1f"), ("trained_per_cpu", "trained tok/CPU-s", "10,.1f"),
            ("real", "real tok/s", "10,.1f"), ("examples", "examples/s", "10.3f"))
    print(f"{'way':>14}  " + "  ".join(f"{title:>21}" for _, title, _ in keys) + f"  {'peak RSS GiB':>12}  {'rise GiB':>8}")
    print(f"{'':>14}  " + "  ".join(f"{'min':>10} {'median':>10}" for _ in keys) + f"  {'of process':>12}  {'':>8}")
    for way, runs in results.items():
        summary[way] = {k: statistics.median(x[k] for x in runs) for k in (k for k, _, _ in keys)}
        summary[way].update(rss=max(x["rss"] for x in runs), rise=max(x["rise"] for x in runs))  # the process's peak
        cells = "  ".join(f"{min(x[k] for x in runs):{fmt}} {summary[way][k]:{fmt}}" for k, _, fmt in keys)
        print(f"{way:>14}  {cells}  {summary[way]['rss'] / 2**30:12.2f}  {summary[way]['rise'] / 2**30:8.2f}")
    print()
    if "engine+compile" in summary and "engine" in summary:
        c, e = summary["engine+compile"], summary["engine"]
        per_round = ", ".join(f"{x['trained'] / y['trained']:.2f}×" for x, y in zip(results["engine+compile"], results["engine"]))
        firsts = ", ".join(f"{x['first_step']:.1f} s / {y['first_step']:.1f} s"
                           for x, y in zip(results["engine+compile"], results["engine"]))
        print(f"engine+compile / engine (medians): trained tok/s {c['trained'] / e['trained']:.2f}× (per round "
              f"{per_round}), trained tok/CPU-s {c['trained_per_cpu'] / e['trained_per_cpu']:.2f}×, peak RSS "
              f"{c['rss'] / e['rss']:.2f}×, RSS rise in training {c['rise'] / e['rise']:.2f}×; first step (compile / "
              f"eager) per round {firsts}")
    if "engine" in summary:
        e = summary["engine"]
        for base in ("flattened", "padded"):
            if base in summary:
                b = summary[base]
                per_round = ", ".join(f"{x['trained'] / y['trained']:.2f}×" for x, y in zip(results["engine"], results[base]))
                print(f"engine / {base:>9} (medians): trained tok/s {e['trained'] / b['trained']:.2f}× (per round "
                      f"{per_round}), trained tok/CPU-s {e['trained_per_cpu'] / b['trained_per_cpu']:.2f}×, examples/s "
                      f"{e['examples'] / b['examples']:.2f}×, real tok/s {e['real'] / b['real']:.2f}×, peak RSS "
                      f"{e['rss'] / b['rss']:.2f}×, RSS rise in training {e['rise'] / b['rise']:.2f}×")
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
