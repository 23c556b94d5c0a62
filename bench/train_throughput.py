"""Training throughput: the engine against the plain HF Trainer + PEFT scripts people write by hand.

The same model is trained on the same variable-length instruction data (Alpaca-style rows, generated
deterministically: mean ≈ 165 tokens, max 512) for one pass, three ways, in one run:

1. **engine** — ``workbench.core.training.run`` with its defaults (packing on);
2. **padded** — a plain Trainer + PEFT script whose collator pads each batch to its longest row (what
   the existing web UIs do by default);
3. **flattened** — the same plain script with transformers' ``DataCollatorWithFlattening``
   (padding-free: the whole batch is one row with restarting position ids);
4. **engine, packing off** — the engine with ``data.packing = false``, to compare with (2).

Every way sees exactly the same examples with the same LoRA (all-linear, r=16), learning rate and
precision, so *real tokens* (non-padding) are the same; throughput = real tokens / training time (from
the Trainer's first step to its last, model loading and tokenisation excluded). The ratios are printed
against the padded script measured in the same run.

    .venv/bin/python bench/train_throughput.py                     # the built-in SmolLM2-135M
    .venv/bin/python bench/train_throughput.py --model DIR --examples 32
    python bench/train_throughput.py --model DIR --device cuda --precision bf16 --examples 2000   # on a GPU
Targets (issue 3): engine ≥ 2.5× padded and ≥ flattened; engine with packing off within 3 % of padded.
"""

from __future__ import annotations

import os
import sys

# bench/inspect.py would shadow the stdlib's inspect module for every script in this folder.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import tempfile
import time
from pathlib import Path

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


class _Timer:
    """TrainerCallback recording the Trainer's start and its last step's end: the training loop's wall time.

    For the engine the same two moments come from its events: ``RunStarted`` (emitted in
    ``on_train_begin``) and the last ``Step`` (emitted right after that step)."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                timer.start = time.time()

            def on_step_end(self, args, state, control, **kw):
                timer.end = time.time()
                timer.steps = state.global_step

        self.start = self.end = 0.0
        self.steps = 0
        self.callback = CB()

    @property
    def seconds(self) -> float:
        return self.end - self.start


def plain_script(model_dir: Path, data_file: Path, tmp: Path, *, flatten: bool, batch_size: int, max_length: int,
                 device: str = "cpu", precision: str = "fp32"):
    """What a user writes by hand: Alpaca template, tokenize, pad (or flatten), Trainer + PEFT."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorWithFlattening, Trainer, TrainingArguments

    from workbench.core.data import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    def encode(row):
        template = ALPACA_PROMPT if row["input"] else ALPACA_PROMPT_NO_INPUT
        prompt = template.format(instruction=row["instruction"], input=row["input"])
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tok(row["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (p_ids + c_ids)[:max_length]
        return {"input_ids": ids, "labels": ([-100] * len(p_ids) + c_ids)[:max_length]}

    ds = load_dataset("json", data_files=str(data_file), split="train").map(encode, remove_columns=["instruction", "input", "output"])
    real_tokens = sum(len(x) for x in ds["input_ids"])

    def pad(features):
        width = max(len(f["input_ids"]) for f in features)
        out = {"input_ids": [], "labels": [], "attention_mask": []}
        for f in features:
            n = len(f["input_ids"])
            out["input_ids"].append(f["input_ids"] + [tok.pad_token_id] * (width - n))
            out["labels"].append(f["labels"] + [-100] * (width - n))
            out["attention_mask"].append([1] * n + [0] * (width - n))
        return {k: torch.tensor(v) for k, v in out.items()}

    # The same weight dtype the engine loads (precision.training_weight_dtype): bf16 weights for a bf16 run on a GPU.
    weights = torch.bfloat16 if (device == "cuda" and precision == "bf16") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=weights)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))
    timer = _Timer()
    args = TrainingArguments(output_dir=str(tmp), per_device_train_batch_size=batch_size, num_train_epochs=1,
                             learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.03, use_cpu=device == "cpu",
                             bf16=precision == "bf16",
                             report_to="none", save_strategy="no", logging_steps=1000, disable_tqdm=True,
                             remove_unused_columns=False, seed=42, data_seed=42)
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      data_collator=DataCollatorWithFlattening() if flatten else pad, callbacks=[timer.callback])
    trainer.train()
    return real_tokens, timer.seconds, timer.steps


def engine(model_dir: Path, data_file: Path, tmp: Path, *, packing: bool, batch_size: int, max_length: int,
           device: str = "cpu", precision: str = "fp32"):
    from workbench.core import events as ev
    from workbench.core.config import RunConfig
    from workbench.core.training import run

    cfg = RunConfig.from_dict({
        "model": {"source": str(model_dir)},
        "lora": {"r": 16, "alpha": 32.0, "dropout": 0.05, "preset": "all-linear"},
        "data": {"train_files": [str(data_file)], "format": "alpaca", "max_length": max_length, "packing": packing},
        "training": {"epochs": 1.0, "learning_rate": 2e-4, "batch_size": batch_size, "logging_steps": 1, "device": device,
                     "precision": precision},
        "output": {"run_dir": str(tmp / "run")},
    })
    sink = ev.ListSink()
    run(cfg, sink)
    started, steps = sink.of(ev.RunStarted)[0], sink.of(ev.Step)
    real_tokens = sum(len(x) for x in _engine_rows(tmp / "run"))
    return real_tokens, steps[-1].time - started.time, steps[-1].step


def _engine_rows(run_dir: Path):
    """Real tokens the engine trained on: the prepared rows' lengths (padding excluded)."""
    from workbench.core.config import RunConfig
    from workbench.core.data import prepare
    from workbench.core.models import load_tokenizer, resolve_source

    cfg = RunConfig.from_toml(run_dir / "run.toml")
    tok = load_tokenizer(resolve_source(cfg.model.source))
    data = prepare(cfg.data, tok, seed=cfg.training.seed)  # served from the datasets cache
    return data.train["input_ids"]


def default_model() -> Path:
    from workbench.core.builtin import ensure_builtin

    return ensure_builtin()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="local HF model folder (default: the built-in SmolLM2-135M)")
    ap.add_argument("--examples", type=int, default=64, help="training examples (default 64)")
    ap.add_argument("--batch-size", type=int, default=8, help="examples per step for the plain scripts (default 8)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--only", choices=["engine", "padded", "flattened", "engine-unpacked"], action="append")
    args = ap.parse_args()

    model_dir = args.model or default_model()
    rows = make_rows(args.examples)
    results = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        data_file = tmp / "alpaca.jsonl"
        data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        template_tokens = 30  # the Alpaca template around each row
        mean_tokens = sum(len(tok(r["instruction"] + r["input"] + r["output"])["input_ids"]) for r in rows) / len(rows) + template_tokens
        # The engine packs examples into rows of max_length: give it about as many tokens per step as the scripts get.
        packed_batch = max(1, round(args.batch_size * mean_tokens / args.max_length))
        where = {"device": args.device, "precision": args.precision}
        plan = {
            "padded": lambda d: plain_script(model_dir, data_file, d, flatten=False, batch_size=args.batch_size,
                max_length=args.max_length, **where),
            "flattened": lambda d: plain_script(model_dir, data_file, d, flatten=True, batch_size=args.batch_size,
                max_length=args.max_length, **where),
            "engine": lambda d: engine(model_dir, data_file, d, packing=True, batch_size=packed_batch,
                max_length=args.max_length, **where),
            "engine-unpacked": lambda d: engine(model_dir, data_file, d, packing=False, batch_size=args.batch_size,
                max_length=args.max_length, **where),
        }
        for name in args.only or list(plan):
            d = tmp / name
            d.mkdir()
            tokens, seconds, steps = plan[name](d)
            results[name] = (tokens, seconds, steps)
            print(f"{name:>16}: {tokens:,} real tokens in {seconds:.1f} s over {steps} steps = {tokens / seconds:,.1f} tok/s", flush=True)

    base = results.get("padded")
    if base:
        base_tps = base[0] / base[1]
        for name, (tokens, seconds, _) in results.items():
            print(f"{name:>16} / padded: {tokens / seconds / base_tps:.2f}×")
    if "engine" in results and "flattened" in results:
        e, f = results["engine"], results["flattened"]
        print(f"          engine / flattened: {(e[0] / e[1]) / (f[0] / f[1]):.2f}×")
    print(f"model: {model_dir}; examples: {len(rows)}, mean ≈ {mean_tokens:.0f} tokens; torch threads: {__import__('torch').get_num_threads()}; "
          f"device: {args.device}, precision: {args.precision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
