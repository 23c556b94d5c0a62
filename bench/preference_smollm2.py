"""DPO and ORPO on the built-in SmolLM2-135M-Instruct with the demo's preference pairs, the way a user would run them.

The pairs (``resources/preference/``, made by ``make_pairs.py`` there) prefer the demo's one-line JSON answer over
the base model's own multi-line answer. Each method trains a fresh LoRA through the engine (``core.training.run``,
TRL underneath), and the script prints TRL's curve step by step (loss, chosen-vs-rejected reward margin, reward
accuracy). Then it loads the saved adapter with PEFT alone and measures, on the held-out pairs (people never seen in
training), how much more the model prefers the chosen answer than the base did:

    Δ = log p(chosen) − log p(rejected), summed over each answer's tokens after the chat template's prompt,

for the base and for base + adapter (DPO's reward margin on a pair is beta · (Δ_adapter − Δ_base)), each answer's
own log-probability (a preference method can widen the gap by pushing both down), and the greedy answers to the
held-out prompts: how many are one line of JSON, and how many are exactly the demo's answer.

    OMP_NUM_THREADS=1 python -m bench.preference_smollm2 [--methods dpo orpo] [--steps 12] [--json out.json]

(as a module from the repository root: bench/inspect.py would shadow the standard library's inspect if bench/ were
the script folder). Writes its runs into a temporary folder unless --runs-root is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "resources" / "preference"
CURVE = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")


def config_for(method: str, steps: int, runs_root: Path, lr: float):
    from workbench.core.config import RunConfig

    return RunConfig.from_dict({
        "model": {"source": "builtin:smollm2-135m-instruct"},
        "lora": {"preset": "all-linear", "r": 16, "alpha": 32.0, "dropout": 0.0},
        "data": {"train_files": [str(PAIRS / "pairs.jsonl")], "max_length": 160},
        "training": {"method": method, "beta": 0.1, "max_steps": steps, "learning_rate": lr, "batch_size": 2,
                     "scheduler": "constant", "warmup_ratio": 0.0, "seed": 42, "device": "cpu"},
        "output": {"runs_root": str(runs_root)},
    })


def answer_logps(model, tokenizer, rows: list[dict]) -> list[tuple[float, float]]:
    """(log p(chosen), log p(rejected)) of each row: the answer's tokens after the rendered prompt, summed."""
    import torch

    out = []
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        pair = []
        for answer in (row["chosen"], row["rejected"]):
            full = tokenizer.apply_chat_template(row["prompt"] + answer, tokenize=False)
            assert full.startswith(prompt), "the chat template renders the prompt as a prefix of the whole chat"
            prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            ids = tokenizer(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
            pair.append(float(logp[prompt_ids.shape[1] - 1:].sum()))
        out.append((pair[0], pair[1]))
    return out


def greedy_answers(model, tokenizer, rows: list[dict], max_new_tokens: int = 48) -> list[str]:
    """The model's greedy answers to the rows' prompts, all in one left-padded batch."""
    import torch

    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out[:, batch["input_ids"].shape[1]:]]


def one_line_json(answer: str, wanted: str) -> tuple[bool, bool]:
    """(the answer is one line of JSON, and equal to the wanted record)."""
    if "\n" in answer:
        return False, False
    try:
        record = json.loads(answer)
    except ValueError:
        return False, False
    return True, record == json.loads(wanted)


def held_out_check(adapter_dir: Path, rows: list[dict]) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from workbench.core.models import load_tokenizer, resolve_builtin

    source = resolve_builtin("builtin:smollm2-135m-instruct")
    tokenizer = load_tokenizer(source)
    base = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()  # PEFT alone reads the saved adapter
    with model.disable_adapter():
        before = answer_logps(model, tokenizer, rows)
        base_answers = greedy_answers(model, tokenizer, rows)
    after = answer_logps(model, tokenizer, rows)
    adapter_answers = greedy_answers(model, tokenizer, rows)
    wanted = [r["chosen"][0]["content"] for r in rows]
    scores = {name: [one_line_json(a, w) for a, w in zip(answers, wanted)]
              for name, answers in (("base", base_answers), ("adapter", adapter_answers))}
    d_before = [c - r for c, r in before]
    d_after = [c - r for c, r in after]
    return {"pairs": len(rows), "delta_base_mean": sum(d_before) / len(rows), "delta_adapter_mean": sum(d_after) / len(rows),
            "pairs_moved_towards_chosen": sum(a > b for a, b in zip(d_after, d_before)),
            "logp_chosen_base_mean": sum(c for c, _ in before) / len(rows),
            "logp_chosen_adapter_mean": sum(c for c, _ in after) / len(rows),
            "logp_rejected_base_mean": sum(r for _, r in before) / len(rows),
            "logp_rejected_adapter_mean": sum(r for _, r in after) / len(rows),
            **{f"{name}_one_line_json": sum(ok for ok, _ in s) for name, s in scores.items()},
            **{f"{name}_exact": sum(exact for _, exact in s) for name, s in scores.items()},
            "adapter_answers": adapter_answers[:3]}


def train(method: str, steps: int, runs_root: Path, lr: float) -> dict:
    from workbench.core import events as ev
    from workbench.core.training import run

    sink = ev.ListSink()
    start = time.perf_counter()
    result = run(config_for(method, steps, runs_root, lr), sink)
    seconds = time.perf_counter() - start
    curve = [{"step": s.step, **{k: (s.loss if k == "loss" else s.metrics.get(k)) for k in CURVE}} for s in sink.of(ev.Step)]
    print(f"\n{method.upper()}: {result.status} after {result.final_step} steps in {seconds:.0f} s ({result.run_dir})")
    print("step " + " ".join(f"{k:>20}" for k in CURVE))
    for row in curve:
        print(f"{row['step']:4d} " + " ".join(f"{row[k]:20.4f}" if row[k] is not None else f"{'-':>20}" for k in CURVE))
    return {"method": method, "status": result.status, "seconds": round(seconds), "adapter": str(result.adapter_dir),
            "curve": curve}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["dpo", "orpo"], choices=["dpo", "orpo"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--runs-root", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if not (PAIRS / "pairs.jsonl").is_file():
        print(f"no {PAIRS / 'pairs.jsonl'}: run python resources/preference/make_pairs.py first", file=sys.stderr)
        return 2
    runs_root = args.runs_root or Path(tempfile.mkdtemp(prefix="preference-"))
    held_out = [json.loads(line) for line in (PAIRS / "validation.jsonl").read_text(encoding="utf-8").splitlines()]
    results = []
    for method in args.methods:
        numbers = train(method, args.steps, runs_root, args.lr)
        numbers["held_out"] = check = held_out_check(Path(numbers["adapter"]), held_out)
        print(f"held-out pairs ({check['pairs']}), loaded with PEFT: mean log p(chosen) − log p(rejected) "
              f"{check['delta_base_mean']:.2f} (base) → {check['delta_adapter_mean']:.2f} (adapter); moved towards "
              f"the chosen answer in {check['pairs_moved_towards_chosen']}/{check['pairs']}; mean log p(chosen) "
              f"{check['logp_chosen_base_mean']:.2f} → {check['logp_chosen_adapter_mean']:.2f}, of the rejected "
              f"{check['logp_rejected_base_mean']:.2f} → {check['logp_rejected_adapter_mean']:.2f}; greedy answers that "
              f"are one line of JSON / exactly right: base {check['base_one_line_json']}/{check['base_exact']}, "
              f"adapter {check['adapter_one_line_json']}/{check['adapter_exact']}")
        for answer in check["adapter_answers"]:
            print(f"  adapter: {answer!r}")
        results.append(numbers)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
