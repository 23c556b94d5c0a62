"""The trained-token counts of preference runs: the positions that predict a chosen or rejected answer token, counted
from TRL's own collated batches (DPO, KTO, ORPO), equal a direct count of the answers' tokens; a run reports them."""

import json
import logging

import pytest

from workbench.core import events as ev
from workbench.core.config import RunConfig
from workbench.core.loss import LossCounts
from workbench.core.preference import orpo_input_tokens
from workbench.core.training import run

pytest.importorskip("trl")

ROWS = [  # prompt ids, chosen ids, rejected ids
    ([5, 6, 7], [8, 9], [10, 11, 12]),
    ([5, 6], [13], [14, 15, 16, 17]),
    ([7, 7, 7, 7], [8, 9, 10], [11]),
]


def take(batch):
    counts = LossCounts()
    counts.add(batch)
    return counts.take()


def test_dpo_batches_count_both_answers_and_each_pair_once():
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    batch = DataCollatorForPreference(pad_token_id=0)(
        [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in ROWS])
    assert take(batch) == (sum(len(c) + len(r) for _, c, r in ROWS), len(ROWS))


def test_kto_batches_count_the_answer_not_the_kl_rows():
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    examples = [{"prompt_ids": p, "completion_ids": c, "KL_completion_ids": r, "label": i % 2 == 0}
                for i, (p, c, r) in enumerate(ROWS)]
    batch = DataCollatorForUnpairedPreference(pad_token_id=0)(examples)
    assert "KL_completion_mask" in batch
    assert take(batch) == (sum(len(c) for _, c, _ in ROWS), len(ROWS))


def test_orpo_batches_count_the_labelled_answers():
    from trl.experimental.utils import DPODataCollatorWithPadding

    examples = []
    for p, c, r in ROWS:
        row = {}
        for side, answer in (("chosen", c), ("rejected", r)):
            row[f"{side}_input_ids"] = p + answer
            row[f"{side}_attention_mask"] = [1] * len(p + answer)
            row[f"{side}_labels"] = [-100] * len(p) + answer
        examples.append(row)
    batch = DPODataCollatorWithPadding(pad_token_id=0)(examples)
    assert take(batch) == (sum(len(c) + len(r) for _, c, r in ROWS), len(ROWS))
    # tokens_seen: every non-padding input token of both sequences (prompt and answer), not the padding the
    # collator added to the shorter rows (the batch is wider than its shortest row)
    assert batch["chosen_input_ids"].numel() + batch["rejected_input_ids"].numel() > sum(
        2 * len(p) + len(c) + len(r) for p, c, r in ROWS)
    assert int(orpo_input_tokens(batch)) == sum(2 * len(p) + len(c) + len(r) for p, c, r in ROWS)


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_a_preference_run_reports_its_trained_tokens(method, tiny_model_dir, tmp_path, caplog):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in [
        ("Capital of France?", " Paris.", " the lazy dog"), ("Two plus two?", " four.", " brown fox jumps"),
        ("Capital of Italy?", " Rome.", " lazy brown dog"), ("Cat in French?", " chat", " the quick fox")]))
    config = RunConfig.from_dict({
        "model": {"source": str(tiny_model_dir("llama"))}, "lora": {"r": 4, "preset": "attention"},
        "data": {"train_files": [str(path)], "max_length": 64},
        "training": {"method": method, "max_steps": 2, "batch_size": 4, "device": "cpu"},
        "output": {"runs_root": str(tmp_path / "runs")}})
    sink = ev.ListSink()
    # transformers' loggers do not propagate to the root logger (outside CI): listen on its library root
    hf_root = logging.getLogger("transformers")
    hf_root.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING"):
            run(config, sink)
    finally:
        hf_root.removeHandler(caplog.handler)
    steps = sink.of(ev.Step)
    assert len(steps) == 2
    # batch_size 4 = every pair, every step: the same count each step, and a speed to show
    per_step = steps[0].trained_tokens_seen
    assert per_step > 0 and steps[1].trained_tokens_seen == 2 * per_step
    assert all(s.trained_tokens_per_second for s in steps)
    # the input tokens: counted from every method's batches (ORPO's have no input_ids), the same each step
    assert steps[0].tokens_seen > per_step and steps[1].tokens_seen == 2 * steps[0].tokens_seen
    assert steps[1].tokens_per_second
    assert not [r for r in caplog.records if "main_input_name" in r.getMessage()]
