"""Task metrics: each scorer on hand-made predictions with known answers, and the metrics of a real run."""

from __future__ import annotations

import json
import math

import pytest

from test_training import make_config  # noqa: E402  (tests/core is on sys.path through pytest's rootdir)
from workbench.core import events as ev
from workbench.core.config import ConfigError, RunConfig
from workbench.core.scorers import exact_match, json_fields, json_valid, label_match, perplexity, regex_match, score_all
from workbench.core.training import run


def test_exact_match_trims_and_optionally_normalizes():
    assert exact_match(" 42\n", "42") == 1.0
    assert exact_match("Paris", "paris") == 0.0
    assert exact_match("The  Eiffel\nTower", "the eiffel tower", normalize=True) == 1.0


def test_regex_looks_for_the_pattern():
    assert regex_match("Answer: B", "", pattern=r"^Answer: [A-D]$") == 1.0
    assert regex_match("I think B", "", pattern=r"^Answer: [A-D]$") == 0.0


def test_json_validity_takes_the_first_line_when_the_model_rambles():
    assert json_valid('{"a": 1}', "") == 1.0
    assert json_valid('{"a": 1}\nand some more words', "") == 1.0
    assert json_valid("{'a': 1}", "") == 0.0
    assert json_valid("", "") == 0.0


def test_json_fields_gives_partial_credit_per_field():
    reference = json.dumps({"city": "Paris", "country": "France", "population": 2100000, "capital": True})
    assert json_fields(reference, reference) == 1.0
    assert json_fields('{"city": "Paris", "country": "France", "population": 2000000}', reference) == 0.5
    assert json_fields('["Paris"]', reference) == 0.0, "not an object"
    assert json_fields("Paris, France", reference) == 0.0
    assert json_fields("plain answer", "plain answer") == 1.0, "a reference that is not JSON falls back to exact match"


def test_label_compares_the_first_word():
    assert label_match("Positive. The review praises the food.", "positive") == 1.0
    assert label_match("negative", "positive") == 0.0
    assert label_match("", "positive") == 0.0


def test_perplexity_is_the_exponential_of_the_loss():
    assert perplexity(math.log(7.5)) == pytest.approx(7.5)
    assert perplexity(1000.0) == math.inf


def test_score_all_averages_each_scorer_over_the_rows():
    predictions = ['{"a": 1, "b": 2}', '{"a": 1, "b": 3}', "nonsense", '{"a": 1, "b": 2}']
    references = ['{"a": 1, "b": 2}'] * 4
    scores = score_all(["exact_match", "json_valid", "json_fields"], predictions, references)
    assert scores == {"exact_match": 0.5, "json_valid": 0.75, "json_fields": pytest.approx((1 + 0.5 + 0 + 1) / 4)}


@pytest.mark.parametrize("section, message", [
    ({"scorers": ["regex"]}, r"the regex scorer needs eval\.regex"),
    ({"best_metric": "exact_match"}, r"best_metric 'exact_match' must be eval_loss or one of eval\.scorers"),
    ({"regex": "(unclosed"}, r"eval\.regex: got '\(unclosed' — not a valid regular expression"),
])
def test_bad_eval_settings_are_named(section, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict({"eval": section})


def test_a_run_reports_task_metrics_at_every_evaluation_and_keeps_the_best_checkpoint(tiny_model_dir, tmp_path):
    """The tiny model learns a fixed answer by heart: exact match on the validation rows (the same rows) starts at
    0 with the base model and must reach 1; perplexity is exp(eval loss) at every evaluation; the best checkpoint
    is the one at the evaluation where exact match was highest (the first such), and the rotation keeps it."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}:", "completion": " yes"}) + "\n" for i in range(8)))
    config = make_config(tiny_model_dir("llama", initializer_range=0.3), tmp_path, max_steps=12, batch_size=8,
                         learning_rate=2e-2, eval_steps=4, save_steps=4, save_total_limit=1).copy_with(
        data={"train_files": [str(data)], "validation_files": [str(data)], "packing": False},
        eval={"scorers": ["exact_match", "json_valid", "perplexity"], "max_new_tokens": 6, "batch_size": 4,
              "best_metric": "exact_match"})
    sink = ev.ListSink()
    result = run(config, sink)
    evaluations = [e for e in sink.events if isinstance(e, ev.Evaluation)]
    assert [e.step for e in evaluations] == [0, 4, 8, 12]
    for e in evaluations:
        assert set(e.metrics) >= {"exact_match", "json_valid", "perplexity"}
        assert e.metrics["perplexity"] == pytest.approx(math.exp(e.eval_loss), rel=1e-6)
        assert e.metrics["json_valid"] == 0.0, "' yes' is no JSON"
    exact = [e.metrics["exact_match"] for e in evaluations]
    assert exact[0] == 0.0 and exact[-1] == 1.0, exact
    best_step = next(e.step for e in evaluations[1:] if e.metrics["exact_match"] == max(exact[1:]))
    note = next(e.text for e in sink.events if isinstance(e, ev.Message) and e.text.startswith("best checkpoint"))
    assert f"checkpoint-{best_step} (exact_match 1)" in note
    assert (result.run_dir / "checkpoints" / f"checkpoint-{best_step}").is_dir(), "the rotation keeps the best one"
    first = next(e for e in sink.events if isinstance(e, ev.Step) and e.step > 4)
    assert first.tokens_per_second is None or first.tokens_per_second > 1, "evaluation time is left out"


def test_early_stopping_ends_the_run_when_the_metric_stops_improving(tiny_model_dir, tmp_path):
    """A learning rate of zero: nothing changes, so exact match never improves on the base model's, and with a
    patience of 2 the run ends at the second evaluation after the start — finished, not stopped."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}:", "completion": " yes"}) + "\n" for i in range(8)))
    config = make_config(tiny_model_dir("llama", initializer_range=0.3), tmp_path, max_steps=40, batch_size=4,
                         learning_rate=1e-12,
                         eval_steps=3).copy_with(
        data={"train_files": [str(data)], "validation_files": [str(data)], "packing": False},
        eval={"scorers": ["exact_match"], "max_new_tokens": 2, "best_metric": "exact_match",
              "early_stopping_patience": 2})
    sink = ev.ListSink()
    result = run(config, sink)
    assert result.status == "finished" and result.final_step == 6
    assert any(isinstance(e, ev.Message) and "early stopping at step 6: exact_match has not improved for 2" in e.text
               for e in sink.events)
