"""Trained (loss-carrying) tokens/s and examples/s, beside real tokens/s: in the Step event, metrics.jsonl's
round trip, the CLI's progress line and the trackers' metrics."""

from __future__ import annotations

import io
import json

from workbench.commands.train import ConsoleSink
from workbench.core.events import Step, event_from_dict
from workbench.core.trackers import step_metrics


def step(**kw) -> Step:
    return Step(step=3, total_steps=10, epoch=0.3, loss=1.5, learning_rate=1e-4, tokens_per_second=1000.0,
                tokens_seen=3000, time=0.0, **kw)


def test_step_events_carry_trained_tokens_and_examples_through_metrics_jsonl():
    e = step(trained_tokens_per_second=640.0, examples_per_second=4.5, trained_tokens_seen=1920)
    back = event_from_dict(json.loads(e.to_json()))
    assert back == e
    old = json.loads(step().to_json())  # a metrics.jsonl line written before these fields existed
    for name in ("trained_tokens_per_second", "examples_per_second", "trained_tokens_seen"):
        del old[name]
    assert event_from_dict(old) == step()


def test_the_cli_progress_line_shows_trained_tokens_and_examples_per_second():
    out = io.StringIO()
    ConsoleSink(stream=out).emit(step(trained_tokens_per_second=640.0, examples_per_second=4.5))
    assert "1,000 tok/s (640 trained, 4.5 ex/s)" in out.getvalue()
    out = io.StringIO()
    ConsoleSink(stream=out).emit(step())  # a run from before (or a model without the counts): no empty brackets
    assert "1,000 tok/s  ETA" in out.getvalue()


def test_trackers_get_trained_tokens_and_examples_per_second():
    metrics = step_metrics(step(trained_tokens_per_second=640.0, examples_per_second=4.5))
    assert metrics["train/trained_tokens_per_second"] == 640.0 and metrics["train/examples_per_second"] == 4.5
    assert "train/examples_per_second" not in step_metrics(step())
