"""The demo's preference pairs (resources/preference): read by the engine's own DPO/ORPO reader, each pair's prompt and
chosen answer are the demo row's, and the rejected answer is the base model's multi-line kind, never the chosen one."""

import json
from pathlib import Path

import pytest

from workbench.core.config import DataConfig
from workbench.core.preference import read_preference_rows

ROOT = Path(__file__).resolve().parents[2]
PAIRS = ROOT / "resources" / "preference"
DEMO = ROOT / "resources" / "demo"


@pytest.mark.parametrize("name, demo, count", [("pairs.jsonl", "train.jsonl", 48), ("validation.jsonl", "validation.jsonl", 16)])
def test_the_pairs_are_the_demo_rows_against_the_base_models_answers(name, demo, count):
    rows = read_preference_rows(DataConfig(train_files=[str(PAIRS / name)]), [str(PAIRS / name)], "train_files", "dpo")
    demo_rows = [json.loads(line)["messages"] for line in (DEMO / demo).read_text(encoding="utf-8").splitlines()]
    assert len(rows) == count
    for row, (user, assistant) in zip(rows, demo_rows):
        assert row["prompt"] == [user]
        assert row["chosen"] == [assistant]
        chosen, rejected = assistant["content"], row["rejected"][0]["content"]
        assert row["rejected"][0]["role"] == "assistant" and rejected != chosen
        assert "\n" not in chosen and "\n" in rejected, "one line of JSON against the base model's multi-line answer"
        json.loads(chosen)
