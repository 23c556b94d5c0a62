"""The step-0 evaluation of the base model, made once per sweep (core/base_eval.py): the second run of a sweep replays
the first one's, with the numbers a fresh evaluation gives and the same training after it; a run whose evaluation
could differ (another scorer setting, other data bytes) evaluates again; a run on its own always evaluates."""

from __future__ import annotations

import json
import os

import pytest

from test_training import make_config  # noqa: E402  (tests/core is on sys.path through pytest's rootdir)
from workbench.core import base_eval
from workbench.core import events as ev
from workbench.core.precision import resolve_compute
from workbench.core.sweep import expand
from workbench.core.training import run

TIMINGS = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


@pytest.fixture
def config(tiny_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}: say yes", "completion": " yes"}) + "\n" for i in range(6)))
    return make_config(tiny_model_dir("llama", initializer_range=0.3), tmp_path, max_steps=2, batch_size=2, eval_steps=2,
                       learning_rate=5e-3).copy_with(
        lora={"preset": "attention", "r": 4, "dropout": 0.3},  # dropout: training draws random numbers
        data={"train_files": [str(data)], "validation_files": [str(data)], "packing": False},
        eval={"scorers": ["exact_match", "perplexity"], "max_new_tokens": 3, "batch_size": 4, "max_examples": 4},
        output={"name": "ranks"})


def trained(config):
    sink = ev.ListSink()
    result = run(config, sink)
    step0 = next(e for e in sink.of(ev.Evaluation) if e.step == 0)
    reused = [m.text for m in sink.of(ev.Message) if "not computed again" in m.text]
    return result, sink, step0, reused


def numbers(evaluation):
    return evaluation.eval_loss, {k: v for k, v in evaluation.metrics.items() if k not in TIMINGS}


def test_the_second_run_of_a_sweep_replays_the_first_runs_base_evaluation(config):
    first, second = expand(config, {"lora.r": ["2", "4"]}, name="ranks")
    run1, _, step0_1, reused1 = trained(first.config)
    assert not reused1
    slots = list((run1.run_dir.parent / base_eval.CACHE_DIR).rglob("*.json"))
    assert len(slots) == 1

    run2, sink2, step0_2, reused2 = trained(second.config)
    assert reused2 and run1.run_dir.name in reused2[0]
    # the same numbers, timings included (what the first run measured); a time stamp of its own
    assert (step0_2.eval_loss, step0_2.metrics) == (step0_1.eval_loss, step0_1.metrics)
    assert set(step0_2.metrics) >= {"exact_match", "perplexity", "eval_runtime"}
    # ... recorded in the run folder like any evaluation (what the Runs tab and the sweep view read)
    recorded = [json.loads(line) for line in (run2.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in recorded if r.get("kind") == "evaluation" and r.get("step") == 0]

    # The same run on its own evaluates its base itself, and gets the same numbers, then trains the same steps
    alone = second.config.copy_with(output={"name": "alone", "group": None})
    _, sink3, step0_3, reused3 = trained(alone)
    assert not reused3
    assert numbers(step0_3) == numbers(step0_2)
    assert [s.loss for s in sink3.of(ev.Step)] == [s.loss for s in sink2.of(ev.Step)]
    later = [numbers(e) for e in sink3.of(ev.Evaluation) if e.step > 0]
    assert later == [numbers(e) for e in sink2.of(ev.Evaluation) if e.step > 0]


def test_a_run_whose_evaluation_could_differ_evaluates_again(config, tmp_path):
    first, second = expand(config, {"eval.max_new_tokens": ["3", "5"]}, name="tokens")
    trained(first.config)
    _, _, _, reused = trained(second.config)
    assert not reused  # another generation setting: computed, not replayed
    assert len(list((tmp_path / "runs" / base_eval.CACHE_DIR).rglob("*.json"))) == 2


def test_the_key_follows_what_decides_the_evaluation_and_nothing_else(config, tmp_path):
    model = config.model.source
    compute = resolve_compute(config)
    key = base_eval.evaluation_key(config, compute, model)
    same = [{"lora": {"r": 64, "alpha": 3.0, "dropout": 0.0, "preset": "all-linear"}},
            {"training": {"learning_rate": 1.0, "max_steps": 99, "save_steps": 1, "scheduler": "constant"}},
            {"output": {"name": "other", "group": "another"}}, {"eval": {"best_metric": "exact_match"}}]
    for change in same:
        assert base_eval.evaluation_key(config.copy_with(**change), compute, model) == key, change
    differ = [{"eval": {"scorers": ["perplexity"]}}, {"eval": {"max_examples": 2}}, {"eval": {"max_new_tokens": 9}},
              {"training": {"seed": 7}}, {"training": {"batch_size": 3}}, {"data": {"max_length": 32}},
              {"lora": {"init": "pissa"}}, {"lora": {"use_dora": True}}]
    for change in differ:
        assert base_eval.evaluation_key(config.copy_with(**change), compute, model) != key, change
    # PiSSA moves the base's principal part into the adapter: there the rank decides the step-0 model too
    pissa = config.copy_with(lora={"init": "pissa"})
    assert base_eval.evaluation_key(pissa.copy_with(lora={"r": 8}), compute, model) != \
        base_eval.evaluation_key(pissa, compute, model)

    data = config.data.validation_files[0]
    with open(data, "a") as fh:  # the evaluation rows' bytes
        fh.write(json.dumps({"prompt": "Q9:", "completion": " no"}) + "\n")
    assert base_eval.evaluation_key(config, compute, model) != key
    key = base_eval.evaluation_key(config, compute, model)
    weights = next(p for p in os.scandir(model) if p.name.endswith(".safetensors"))
    os.utime(weights.path, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    try:
        assert base_eval.evaluation_key(config, compute, model) != key  # the model's files were rewritten
    finally:
        os.utime(weights.path, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns - 10**9))


def test_only_a_new_single_process_causal_lm_run_of_a_group_shares(config, tmp_path):
    compute = resolve_compute(config)
    grouped = config.copy_with(output={"group": "g"})
    slot = base_eval.reuse_slot(grouped, tmp_path / "runs" / "r1", compute, config.model.source, world_size=1,
                                resumed=False)
    assert slot is not None and slot.parent.parent == tmp_path / "runs" / base_eval.CACHE_DIR
    assert base_eval.reuse_slot(config, tmp_path / "r", compute, "m", world_size=1, resumed=False) is None
    assert base_eval.reuse_slot(grouped, tmp_path / "r", compute, "m", world_size=2, resumed=False) is None
    assert base_eval.reuse_slot(grouped, tmp_path / "r", compute, "m", world_size=1, resumed=True) is None
    dpo = grouped.copy_with(training={"method": "dpo"})
    assert base_eval.reuse_slot(dpo, tmp_path / "r", compute, "m", world_size=1, resumed=False) is None
    slot.parent.mkdir(parents=True)
    slot.write_text("{not json")
    assert base_eval.load(slot) is None  # a damaged file: the run evaluates


def test_a_data_folder_is_keyed_by_its_files_and_an_unreadable_one_shares_nothing(config, tmp_path):
    compute = resolve_compute(config)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "part-0.jsonl").write_text(json.dumps({"prompt": "Q:", "completion": " a"}) + "\n")
    grouped = config.copy_with(data={"validation_files": [str(shards)]}, output={"group": "g"})
    key = base_eval.evaluation_key(grouped, compute, config.model.source)
    (shards / "part-1.jsonl").write_text(json.dumps({"prompt": "Q:", "completion": " b"}) + "\n")
    assert base_eval.evaluation_key(grouped, compute, config.model.source) != key  # a shard added
    key = base_eval.evaluation_key(grouped, compute, config.model.source)
    (shards / "part-1.jsonl").write_text(json.dumps({"prompt": "Q:", "completion": " c"}) + "\n")
    assert base_eval.evaluation_key(grouped, compute, config.model.source) != key  # a shard's rows changed

    # A file that cannot be read has no key: the run evaluates for itself rather than trust another's result
    missing = grouped.copy_with(data={"validation_files": [str(tmp_path / "gone.jsonl")]})
    assert base_eval.reuse_slot(missing, tmp_path / "runs" / "r1", compute, config.model.source, world_size=1,
                                resumed=False) is None


def test_a_cache_that_cannot_be_written_never_fails_the_run(config, tmp_path, monkeypatch):
    def disk_full(slot, evaluation):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(base_eval, "save", disk_full)
    first, _ = expand(config, {"lora.r": ["2", "4"]}, name="ranks")
    result, sink, step0, reused = trained(first.config)
    assert not reused and step0.eval_loss > 0
    assert any(isinstance(e, ev.Finished) for e in sink.events)
    warned = [m.text for m in sink.of(ev.Message) if "could not keep the base model's evaluation" in m.text]
    assert warned and "No space left on device" in warned[0]
