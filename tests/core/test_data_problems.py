"""The Data tab shows each data problem beside the control it concerns, in the window's words: the real
errors of real bad files are placed and reworded (no run-file setting names such as data.skip_bad_rows)."""

from __future__ import annotations

import json

import pytest

from workbench.core import data
from workbench.core.config import DataConfig
from workbench.core.data.problems import SKIP_HINT_IN_WINDOW, describe
from workbench.core.errors import DataError


def reported(cfg: DataConfig) -> str:
    """The error as the window's worker words it: message, blank line, hint."""
    with pytest.raises(DataError) as failed:
        data.detect(cfg)
    return failed.value.message + (f"\n\n{failed.value.hint}" if failed.value.hint else "")


def good_file(tmp_path, name="good.jsonl"):
    path = tmp_path / name
    path.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    return str(path)


def test_a_bad_row_belongs_to_its_files_list_and_offers_the_checkbox(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 3, "completion": "b"}\n')
    cfg = DataConfig(train_files=[good_file(tmp_path)], validation_files=[str(bad)])
    problem = describe(reported(cfg), cfg)
    assert problem.setting == "validation_files" and problem.bad_row
    assert problem.message.startswith(f"{bad}: line 2: field 'prompt'")
    assert problem.hint == SKIP_HINT_IN_WINDOW and "data.skip_bad_rows" not in problem.text


def test_a_missing_training_file_names_the_training_list(tmp_path):
    cfg = DataConfig(train_files=[str(tmp_path / "gone.jsonl")])
    problem = describe(reported(cfg), cfg)
    assert (problem.setting, problem.bad_row) == ("train_files", False)
    assert problem.hint == "Check the path in the Training files list."


def test_columns_and_split_problems_name_their_boxes(tmp_path):
    cfg = DataConfig(train_files=[good_file(tmp_path)], columns={"answer": "x"})
    assert describe(reported(cfg), cfg).setting == "columns"
    cfg = DataConfig(train_files=[good_file(tmp_path)], validation_split=0.9)
    problem = describe(reported(cfg), cfg)
    assert problem.setting == "validation_split" and "the Hold out box" in problem.hint


def test_a_format_nobody_can_tell_points_at_the_format_box(tmp_path):
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"question": "a", "answer": "b"}) + "\n")
    cfg = DataConfig(train_files=[str(odd)])
    problem = describe(reported(cfg), cfg)
    assert problem.setting == "train_files" and "the Format box" in problem.hint
    assert "data.format" not in problem.hint
