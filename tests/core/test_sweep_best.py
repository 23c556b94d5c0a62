"""The sweep table's "best" numbers: each metric's best evaluation by its own direction and the step it came from,
step 0 (the base model) left out, retention taken at the best checkpoint's step — in core and in the CLI's table.

The run folders are written by the engine's own writers with evaluation events whose best steps are known by
construction (tests/sweep_folders.py), so every expected value is read off those events."""

from __future__ import annotations

import pytest

from sweep_folders import EVALUATIONS, write_run_folder
from workbench.commands.queue import _sweep_columns
from workbench.core.events import Evaluation
from workbench.core.sweep import Best, best_metrics, lower_is_better, sweep_table


def test_directions():
    assert lower_is_better("eval_loss") and lower_is_better("perplexity") and lower_is_better("retention_ppl_ratio")
    assert lower_is_better("eval_mse") is True
    assert lower_is_better("json_exact") is False and lower_is_better("eval_accuracy") is False
    assert lower_is_better("retention_agreement") is False
    assert lower_is_better("eval_runtime") is None and lower_is_better("eval_samples_per_second") is None


def test_each_metric_is_best_by_its_own_direction_and_names_its_step():
    best = best_metrics(EVALUATIONS, "json_exact")
    assert best["json_exact"] == Best(0.75, 20)
    assert best["eval_loss"] == Best(0.03, 40)
    assert best["perplexity"] == Best(1.1, 30)
    assert best["json_fields"] == Best(0.90, 20), "a tie goes to the earlier step"
    assert best["json_valid"] == Best(0.8, 30), "step 0 is the base model, not the run's best"
    assert "eval_runtime" not in best
    # Retention at the step of the best checkpoint (json_exact's best, step 20), not the base model's 1.0.
    assert best["retention_agreement"] == Best(0.90, 20, at_best_checkpoint=True)
    assert best["retention_ppl_ratio"] == Best(1.05, 20, at_best_checkpoint=True)

    by_loss = best_metrics(EVALUATIONS, "eval_loss")
    assert by_loss["retention_agreement"] == Best(0.70, 40, at_best_checkpoint=True)
    assert best_metrics(EVALUATIONS[:1]) == {}, "only the base model's evaluation: nothing trained to be best"


def test_the_sweep_table_and_the_cli_show_the_best_evaluation_and_its_step(tmp_path):
    late = [Evaluation(step=e.step, eval_loss=e.eval_loss, metrics={**e.metrics, "json_exact": e.step / 80})
            for e in EVALUATIONS]  # json_exact best at the last step, 0.5 @40
    dirs = [write_run_folder(tmp_path, "ranks-r2", 2, EVALUATIONS), write_run_folder(tmp_path, "ranks-r8", 8, late)]
    rows = sweep_table(dirs, ["lora.r"])
    assert [r.values for r in rows] == [{"lora.r": "2"}, {"lora.r": "8"}]
    assert rows[0].best["json_exact"] == Best(0.75, 20) and rows[1].best["json_exact"] == Best(0.5, 40)
    assert rows[0].best["retention_agreement"].step == 20 and rows[1].best["retention_agreement"] == Best(0.70, 40, True)
    assert rows[0].extra["json_exact"] == 0.65, "extra stays the last evaluation's metrics"

    table = _sweep_columns(rows, ["lora.r"])
    header, first, second = table.splitlines()[:3]
    assert "BEST JSON_EXACT" in header and "RETENTION_AGREEMENT" in header and "EVAL_RUNTIME" not in header
    assert "0.75 @20" in first and "0.03 @40" in first and "0.9 @20" in first and "1.1 @30" in first
    assert "0.5 @40" in second and "0.7 @40" in second
    assert "at the step of the best checkpoint" in table


@pytest.mark.parametrize("prediction, value", [
    ('{"name": "Kenji Watanabe", "amount": 1200}', 1.0),
    ('{"amount": 1200, "name": "Kenji Watanabe"}', 1.0),   # key order does not matter
    ('{"name": "Kenji Watanabe", "amount": 1200}\nThis is JSON.', 0.0),  # nothing may follow the record
    ('{"name": "Kenji Watanabe", "amount": "1200"}', 0.0),  # a string is not the number
    ('{"name": "Kenji Watanabe"}', 0.0),
    ("", 0.0),
])
def test_json_exact(prediction, value):
    from workbench.core.scorers import json_exact

    assert json_exact(prediction, '{"name": "Kenji Watanabe", "amount": 1200}') == value
