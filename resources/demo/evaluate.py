#!/usr/bin/env python3
"""Score a demo run: validation loss and exactly right answers, base model against the run's adapter.

    python resources/demo/evaluate.py RUN_DIR              # e.g. runs/builtin-smollm2-135m-instruct-20260101-120000
    python resources/demo/evaluate.py RUN_DIR --rows 8     # generate answers for the first 8 validation rows only

The validation loss is computed as the training engine computes it (the same prepared data, collator and
batch size through ``Trainer.evaluate``), so the "after" number equals the run's last ``eval loss`` and
the "before" number is what an evaluation at step 0 would have shown. An answer counts as exact when the
greedy completion is one line of JSON equal to the reference record (same keys, same values).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rows", type=int, default=None, help="validation rows to generate answers for (default: all)")
    args = parser.parse_args(argv)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from workbench.core.builtin import is_builtin_source
    from workbench.core.config import RunConfig
    from workbench.core.data import make_collator, prepare
    from workbench.core.models import load_tokenizer, resolve_builtin, resolve_source

    config = RunConfig.from_toml(args.run_dir / "run.toml")
    spec = config.model.source
    source = resolve_builtin(spec) if is_builtin_source(spec) else resolve_source(spec, download="none")
    tokenizer = load_tokenizer(source)
    data_cfg = config.data.model_copy(update={
        "train_files": [str(ROOT / f) for f in config.data.train_files],
        "validation_files": [str(ROOT / f) for f in config.data.validation_files],
    })
    hf_model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    model_type = hf_model.config.model_type
    prepared = prepare(data_cfg, tokenizer, seed=config.training.seed, model_type=model_type)
    if prepared.validation is None:
        print("the run has no validation data", file=sys.stderr)
        return 2
    collator = make_collator(tokenizer, packing=prepared.packed, model_type=model_type)
    rows = [json.loads(line) for f in data_cfg.validation_files for line in Path(f).read_text(encoding="utf-8").splitlines()]
    rows = rows[: args.rows] if args.rows else rows

    results = {}
    for label, model in (("base model", hf_model), ("with adapter", None)):
        if model is None:
            model = PeftModel.from_pretrained(hf_model, args.run_dir / "adapter").eval()
        started = time.time()
        loss = _eval_loss(model, prepared.validation, collator, config.training.batch_size)
        valid, exact, answers = _answers(model, tokenizer, rows, config.training.sample_max_new_tokens)
        results[label] = {"eval_loss": round(loss, 4), "valid_json": valid, "exact": exact, "rows": len(rows),
                          "example": answers[0], "seconds": round(time.time() - started, 1)}
        print(f"{label:>13}: validation loss {loss:.4f}; one-line JSON {valid}/{len(rows)}, exactly right {exact}/{len(rows)}")
        misses = [(row, a) for row, a in zip(rows, answers) if not _exact(a, row)]
        for row, a in misses[:5]:
            print(f"{'':>15}{row['messages'][0]['content'].split(': ', 1)[1]}\n{'':>15}  → {json.dumps(a, ensure_ascii=False)}")
    before, after = results["base model"]["eval_loss"], results["with adapter"]["eval_loss"]
    print(f"validation loss falls by {100 * (1 - after / before):.1f}% ({before:.4f} → {after:.4f})")
    print(json.dumps(results, ensure_ascii=False))
    return 0


def _eval_loss(model, dataset, collator, batch_size: int) -> float:
    from transformers import PrinterCallback, Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_eval_batch_size=batch_size, use_cpu=True, report_to="none",
                                 remove_unused_columns=False, label_names=["labels"], disable_tqdm=True)
        trainer = Trainer(model=model, args=args, eval_dataset=dataset, data_collator=collator)
        trainer.remove_callback(PrinterCallback)  # it would print the metrics dict
        return float(trainer.evaluate()["eval_loss"])


def _answers(model, tokenizer, rows: list[dict], max_new_tokens: int) -> tuple[int, int, list[str]]:
    """(answers that are one line of JSON, answers equal to the reference, the answers)."""
    import torch

    answers = []
    for row in rows:
        prompt = tokenizer.apply_chat_template([row["messages"][0]], tokenize=False, add_generation_prompt=True)
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    valid = sum(_one_line_json(a) is not None for a in answers)
    exact = sum(_exact(a, row) for a, row in zip(answers, rows))
    return valid, exact, answers


def _one_line_json(answer: str) -> dict | None:
    if "\n" in answer:
        return None
    try:
        record = json.loads(answer)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _exact(answer: str, row: dict) -> bool:
    return _one_line_json(answer) == json.loads(row["messages"][1]["content"])


if __name__ == "__main__":
    sys.exit(main())
