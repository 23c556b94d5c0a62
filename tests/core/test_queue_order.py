"""Reordering the run queue (the window's Up / Down, ``workbench queue move``) and reading sweeps back as groups."""

from __future__ import annotations

import json

import pytest

from test_training import make_config  # noqa: E402  (tests/core is on sys.path through pytest's rootdir)
from workbench.cli import main
from workbench.core import run_queue
from workbench.core.errors import WorkbenchError
from workbench.core.sweep import expand, parse_axes, sweep_groups, varied_fields


@pytest.fixture
def config(tiny_model_dir, tmp_path):
    return make_config(tiny_model_dir("llama"), tmp_path, max_steps=1).copy_with(output={"name": "ranks"})


def names(root) -> list[str]:
    return [e.name for e in run_queue.queue_entries(root)]


def test_moving_entries_changes_the_order_the_runner_follows(config, tmp_path):
    root = tmp_path / "runs"
    for name in ("a", "b", "c", "d"):
        run_queue.add_to_queue(config, name=name)
    run_queue.move_entry(root, 3, -2)
    assert names(root) == ["c", "a", "b", "d"]
    run_queue.move_entry(root, 1, +10)  # past the end: last
    assert names(root) == ["c", "b", "d", "a"]
    run_queue.add_to_queue(config, name="e")  # a new entry goes after the ordered ones
    assert names(root) == ["c", "b", "d", "a", "e"]
    run_queue.remove_entry(root, 2)
    assert names(root) == ["c", "d", "a", "e"]

    started = []

    def refuse(run_file, run_dir):  # no training: the command fails at once, which is all the order needs
        started.append(json.loads((run_file.with_suffix(".json")).read_text())["name"])
        return ["false"]

    run_queue.run_queue(root, command=refuse)
    assert started == ["c", "d", "a", "e"]


def test_only_pending_entries_move_and_an_unknown_number_is_named(config, tmp_path):
    root = tmp_path / "runs"
    first = run_queue.add_to_queue(config, name="first")
    run_queue.add_to_queue(config, name="second")
    run_queue.run_queue(root, only=[first.number], command=lambda f, d: ["false"])
    with pytest.raises(WorkbenchError, match=r"entry 1 \(first\) is failed"):
        run_queue.move_entry(root, 1, 1)
    with pytest.raises(WorkbenchError, match="has no entry 9"):
        run_queue.move_entry(root, 9, 1)
    assert main(["queue", "move", "2", "--by", "-1", "--root", str(root)]) == 0
    assert names(root) == ["second", "first"]


def test_sweep_groups_and_the_fields_they_vary(config, tmp_path):
    from workbench.core.runs import claim_run_dir

    dirs = []
    for point in expand(config, parse_axes(["lora.r=2,4", "training.learning_rate=1e-3,1e-2"])):
        run_dir, _ = claim_run_dir(point.config)
        point.config.save(run_dir / "run.toml")
        dirs.append(run_dir)
    alone, _ = claim_run_dir(config.copy_with(output={"name": "alone"}))
    config.save(alone / "run.toml")
    assert sweep_groups([*dirs, alone]) == {"ranks": dirs}
    assert varied_fields(dirs) == ["lora.r", "training.learning_rate"]
