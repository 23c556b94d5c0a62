"""Sweeps and the run queue: expansion of a run file over fields, the Pareto front, and real runs of a tiny model
in a queue (each run its own process), including a failing run that must not stop the queue."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from test_training import make_config  # noqa: E402  (tests/core is on sys.path through pytest's rootdir)
from workbench.cli import main
from workbench.core import run_queue
from workbench.core.config import ConfigError
from workbench.core.runs import read_events, run_status
from workbench.core.sweep import expand, pareto_front, parse_axes, sweep_table


@pytest.fixture
def config(tiny_model_dir, tmp_path):
    return make_config(tiny_model_dir("llama"), tmp_path, max_steps=2, batch_size=2).copy_with(
        lora={"preset": "attention", "r": 4}, output={"name": "ranks"})


def test_a_grid_is_every_combination_and_a_list_pairs_values(config):
    points = expand(config, parse_axes(["lora.r=2,4,8", "training.learning_rate=1e-4,3e-4"]))
    assert [(p.config.lora.r, p.config.training.learning_rate) for p in points] == [
        (2, 1e-4), (2, 3e-4), (4, 1e-4), (4, 3e-4), (8, 1e-4), (8, 3e-4)]
    assert points[0].name == "ranks-r2-lr1e-4" and points[0].values == {"lora.r": "2", "training.learning_rate": "1e-4"}
    assert {p.config.output.group for p in points} == {"ranks"}
    assert len({p.config.output.name for p in points}) == 6, "every run has a folder of its own"

    paired = expand(config, parse_axes(["lora.r=4,16", "lora.alpha=8,32"]), paired=True)
    assert [(p.config.lora.r, p.config.lora.alpha) for p in paired] == [(4, 8), (16, 32)]


def test_values_in_brackets_stay_whole(config):
    axes = parse_axes(['lora.target_modules=["q_proj","v_proj"],["q_proj"]'])
    assert axes == {"lora.target_modules": ['["q_proj","v_proj"]', '["q_proj"]']}


@pytest.mark.parametrize("items, paired, message", [
    (["lora.r"], False, r"expected section\.field=value1,value2"),
    (["lora.r=4,4"], False, r"lora\.r repeats a value"),
    (["lora.r=4,0"], False, r"sweep run ranks-r0"),
    (["lora.r=4,8", "lora.alpha=8"], True, r"--list fields need the same number of values; got lora\.r: 2, lora\.alpha: 1"),
    (["training.nonsense=1,2"], False, r"nonsense"),
])
def test_bad_sweeps_name_the_field(config, items, paired, message):
    with pytest.raises(ConfigError, match=message):
        expand(config, parse_axes(items), paired=paired)


def test_the_pareto_front_keeps_the_runs_no_other_beats_on_both():
    points = [(100, 2.0), (200, 1.5), (400, 1.6), (800, 1.0), (150, None), (800, 1.2), (100, 2.5)]
    assert pareto_front(points) == [0, 1, 3]


@pytest.mark.subprocess
def test_a_sweep_of_three_ranks_makes_three_runs_and_the_table_reads_them_back(config, tmp_path, capsys):
    config.save(tmp_path / "run.toml")
    assert main(["sweep", str(tmp_path / "run.toml"), "--grid", "lora.r=2,4,8"]) == 0
    out = capsys.readouterr().out
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if not p.name.startswith("."))
    assert [p.name for p in runs] == ["ranks-r2", "ranks-r4", "ranks-r8"]
    assert all(run_status(p).value == "finished" for p in runs)

    rows = sweep_table(runs, ["lora.r"])
    for row, r in zip(rows, (2, 4, 8)):
        started = next(e for e in read_events(row.path) if e.kind == "run_started")
        with safe_open(row.path / "adapter" / "adapter_model.safetensors", "pt") as f:
            adapter_params = sum(f.get_slice(k).get_shape()[0] * f.get_slice(k).get_shape()[1] for k in f.keys())
        assert row.values == {"lora.r": str(r)}
        assert row.trainable_params == started.trainable_params == adapter_params
        assert row.adapter_bytes == (row.path / "adapter" / "adapter_model.safetensors").stat().st_size
        assert row.last_loss == pytest.approx([e.loss for e in read_events(row.path) if e.kind == "step"][-1])
        assert f"ranks-r{r}" in out and f"{row.trainable_params:,}" in out
    # LoRA's parameter count is linear in the rank: each doubling doubles it exactly.
    assert rows[1].trainable_params == 2 * rows[0].trainable_params and rows[2].trainable_params == 4 * rows[0].trainable_params
    assert [r.on_front for r in rows] == [i in pareto_front([(r.trainable_params, r.quality) for r in rows])
                                          for i in range(3)]
    entries = run_queue.queue_entries(tmp_path / "runs")
    assert [e.status for e in entries] == ["finished"] * 3 and [e.run_dir for e in entries] == [str(p) for p in runs]


@pytest.mark.subprocess
def test_a_failing_run_does_not_stop_the_queue(config, tmp_path):
    # The failing run first: the run after it is the one that must still start. (A queue of several good runs,
    # in order, is the sweep test above; each good run here costs a process of its own.)
    bad = run_queue.add_to_queue(config.copy_with(output={"name": "broken"},
                                                  data={"train_files": [str(tmp_path / "missing.jsonl")]}))
    last = run_queue.add_to_queue(config.copy_with(output={"name": "last"}))
    reported = []
    ran = run_queue.run_queue(tmp_path / "runs", report=lambda e: reported.append((e.name, e.status)))
    assert [(e.name, e.status) for e in ran] == [("broken", "failed"), ("last", "finished")]
    assert reported == [("broken", "running"), ("broken", "failed"), ("last", "running"), ("last", "finished")]
    broken = next(e for e in run_queue.queue_entries(tmp_path / "runs") if e.number == bad.number)
    assert "missing.jsonl: file not found" in broken.message and broken.exit_code == 2
    assert broken.run_dir is None and not (tmp_path / "runs" / "broken").exists(), "a refused run leaves no folder"
    assert [e.number for e in ran] == [bad.number, last.number]
    state = json.loads((run_queue.queue_dir(tmp_path / "runs") / f"{last.id}.json").read_text())
    assert state["status"] == "finished" and state["ended_at"] >= state["started_at"]


@pytest.mark.subprocess
def test_stop_on_error_leaves_the_rest_pending(config, tmp_path):
    run_queue.add_to_queue(config.copy_with(output={"name": "broken"}, data={"train_files": [str(tmp_path / "no.jsonl")]}))
    run_queue.add_to_queue(config.copy_with(output={"name": "after"}))
    ran = run_queue.run_queue(tmp_path / "runs", continue_on_error=False)
    assert [e.status for e in ran] == ["failed"]
    assert [e.status for e in run_queue.queue_entries(tmp_path / "runs")] == ["failed", "pending"]


def test_one_runner_per_queue(config, tmp_path):
    from workbench.core.locks import acquire

    run_queue.add_to_queue(config)
    folder = run_queue.queue_dir(tmp_path / "runs")
    with acquire(folder / ".runner.lock"):
        with pytest.raises(run_queue.QueueBusy, match="is being run already"):
            run_queue.run_queue(tmp_path / "runs")


def test_set_changes_a_field_of_every_run_of_the_sweep(config, tmp_path, capsys):
    from workbench.core.config import RunConfig

    config.save(tmp_path / "run.toml")
    assert main(["sweep", str(tmp_path / "run.toml"), "--list", "lora.r=2,4", "--list", "lora.alpha=4,8",
                 "--set", "training.max_steps=7", "--set", "eval.max_examples=3", "--no-run"]) == 0
    entries = run_queue.queue_entries(tmp_path / "runs")
    queued = [RunConfig.from_toml(run_queue.queue_dir(tmp_path / "runs") / f"{e.id}.toml") for e in entries]
    assert [(c.lora.r, c.lora.alpha, c.training.max_steps, c.eval.max_examples) for c in queued] == [
        (2, 4.0, 7, 3), (4, 8.0, 7, 3)]
    assert config.training.max_steps == 2, "the run file itself is not changed"
    assert RunConfig.from_toml(tmp_path / "run.toml").training.max_steps == 2
