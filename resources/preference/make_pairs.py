#!/usr/bin/env python3
"""Write the demo's preference pairs: the demo's one-line JSON answer (chosen) against the base model's own answer
(rejected), for DPO/ORPO on the built-in SmolLM2 (``training.method = "dpo" | "orpo"``).

    python resources/preference/make_pairs.py                # (re)write pairs.jsonl and validation.jsonl here
    python resources/preference/make_pairs.py --out DIR      # write somewhere else

Prompts and chosen answers are the first ``--train`` rows of ``resources/demo/train.jsonl`` and the first
``--validation`` rows of ``resources/demo/validation.jsonl`` (people never seen in training). The rejected answer is
what the built-in SmolLM2-135M-Instruct itself answers to the same chat, greedily, at most ``--max-new-tokens``
tokens (its pretty-printed multi-line JSON, often with the date copied as written, the amount as a string and some
talk after the brace). Greedy decoding in fp32 on a CPU, 16 prompts at a time (left-padded): the same files on
every run of the same torch build. Each row is TRL's conversational format: ``prompt`` (the user turn), ``chosen`` and ``rejected``
(one assistant turn each); the chat template renders them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "demo"


def base_answers(prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM

    from workbench.core.models import load_tokenizer, resolve_builtin

    source = resolve_builtin("builtin:smollm2-135m-instruct")
    tokenizer = load_tokenizer(source)
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    tokenizer.padding_side = "left"  # generation continues every row at its right end
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
                 for m in prompts[start:start + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        answers += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out[:, batch["input_ids"].shape[1]:]]
        print(f"{len(answers)}/{len(prompts)}", end="\r", file=sys.stderr, flush=True)
    return answers


def pairs(rows: list[dict], max_new_tokens: int) -> list[dict]:
    prompts = [[m for m in r["messages"] if m["role"] == "user"] for r in rows]
    chosen = [next(m["content"] for m in r["messages"] if m["role"] == "assistant") for r in rows]
    rejected = base_answers(prompts, max_new_tokens)
    out = []
    for p, c, r in zip(prompts, chosen, rejected):
        if r == c:  # the base already answers as the demo wants: not a preference
            continue
        out.append({"prompt": p, "chosen": [{"role": "assistant", "content": c}],
                    "rejected": [{"role": "assistant", "content": r}]})
    return out


def read(path: Path, n: int) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n]]


def write(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--train", type=int, default=48, help="pairs from the demo's training rows (default 48)")
    parser.add_argument("--validation", type=int, default=16, help="pairs from its validation rows (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name, source, n in (("pairs.jsonl", DEMO / "train.jsonl", args.train),
                            ("validation.jsonl", DEMO / "validation.jsonl", args.validation)):
        rows = pairs(read(source, n), args.max_new_tokens)
        write(args.out / name, rows)
        print(f"{args.out / name}: {len(rows)} pairs", file=sys.stderr)
    print(f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
