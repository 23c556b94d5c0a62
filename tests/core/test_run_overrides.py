"""The command line that reproduces an edited configuration (core/run_overrides.py): ``--set`` for each changed
field, parsed back by the CLI's own ``with_overrides`` into the same configuration."""

import shlex

import pytest

from workbench.core.config import RunConfig
from workbench.core.run_overrides import NotExpressible, command_line, overrides, toml_literal


def _base() -> RunConfig:
    return RunConfig.from_dict({"model": {"source": "./m"}, "data": {"train_files": ["a.jsonl"]}})


def test_the_assignments_rebuild_the_edited_configuration():
    base = _base()
    edited = base.copy_with(training={"learning_rate": 3e-5, "max_steps": 7},
                            data={"train_files": ["a b.jsonl", 'c"d.jsonl']}, lora={"use_rslora": True})
    sets = overrides(base, edited)
    assert sorted(s.split("=", 1)[0] for s in sets) == ["data.train_files", "lora.use_rslora",
                                                        "training.learning_rate", "training.max_steps"]
    assert base.with_overrides(sets) == edited
    assert overrides(base, base) == []


def test_the_command_line_starts_from_the_saved_run_file(tmp_path):
    run_file = tmp_path / "run.toml"
    _base().save(run_file)
    edited = _base().copy_with(training={"max_steps": 3})
    words = shlex.split(command_line(run_file, edited))
    assert words == ["workbench", "train", str(run_file), "--set", "training.max_steps=3"]


def test_a_cleared_optional_field_cannot_be_carried_and_says_what_to_do():
    base = _base().copy_with(output={"run_dir": "/tmp/x"})
    with pytest.raises(NotExpressible, match="output.run_dir was cleared; save the run file"):
        overrides(base, _base())


def test_literals():
    assert [toml_literal(v) for v in (True, 2, 0.5, "x", [1, "y"], {"k": 1})] == \
        ["true", "2", "0.5", '"x"', '[1, "y"]', '{"k" = 1}']
