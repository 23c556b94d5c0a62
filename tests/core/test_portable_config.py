"""The run file a launch script carries to other nodes (core.launch.portable_config): every local relative path
made absolute from the folder the window reads it from, everything else as written."""

from workbench.core.config import RunConfig
from workbench.core.launch import portable_config


def test_relative_local_paths_become_absolute_and_nothing_else_changes(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "train.jsonl").write_text("{}\n")
    config = RunConfig.from_dict({
        "model": {"source": "model"},
        "data": {"train_files": ["train.jsonl", "/shared/more.jsonl", "missing.jsonl"],
                 "validation_files": ["train.jsonl"]},
        "output": {"runs_root": "runs"},
        "training": {"max_steps": 5},
    })
    portable = portable_config(config, tmp_path)
    assert portable.model.source == str(tmp_path / "model")
    assert portable.data.train_files == [str(tmp_path / "train.jsonl"), "/shared/more.jsonl", "missing.jsonl"]
    assert portable.data.validation_files == [str(tmp_path / "train.jsonl")]
    assert portable.output.runs_root == str(tmp_path / "runs")  # a folder to be made: taken from base all the same
    assert portable.training == config.training


def test_built_in_and_hub_models_are_left_as_named(tmp_path):
    for source in ("builtin:smollm2-135m-instruct", "org/model"):
        assert portable_config(RunConfig.from_dict({"model": {"source": source}}), tmp_path).model.source == source
