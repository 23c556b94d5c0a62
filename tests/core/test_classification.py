"""Sequence classification: labels read and checked, the label set, the metrics (no model needed here)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from workbench.core.classification import (ClassificationMetrics, LabelSet, check_validation_labels, discover_labels,
                                           label_set_for, read_label_file, read_labelled_rows, write_label_file)
from workbench.core.config import DataConfig, ModelConfig
from workbench.core.errors import DataError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def rows_of(tmp_path, rows, problem_type="single-label", **data):
    cfg = DataConfig(train_files=[write_jsonl(tmp_path / "train.jsonl", rows)], **data)
    return read_labelled_rows(cfg, cfg.train_files, "train_files", problem_type)


def test_string_labels_sorted_and_counted(tmp_path):
    rows = rows_of(tmp_path, [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"},
                              {"text": "fine", "label": "pos"}])
    labels = discover_labels(rows, "single-label")
    assert labels.names == ("neg", "pos")
    assert labels.counts == {"neg": 1, "pos": 2}
    assert labels.id2label == {0: "neg", 1: "pos"} and labels.label2id == {"neg": 0, "pos": 1}
    assert labels.majority_share() == pytest.approx(2 / 3)


def test_numbers_sort_numerically_and_csv_matches_jsonl(tmp_path):
    # 10 after 9, not after 1; "2" in a CSV cell and 2 (or 2.0) in JSON are the same class
    rows = rows_of(tmp_path, [{"text": "a", "label": 10}, {"text": "b", "label": 9}, {"text": "c", "label": 2.0}])
    assert discover_labels(rows, "single-label").names == ("2", "9", "10")
    (tmp_path / "t.csv").write_text("text,label\nx,10\ny,2\n", encoding="utf-8")
    cfg = DataConfig(train_files=[str(tmp_path / "t.csv")])
    assert [r.label for r in read_labelled_rows(cfg, cfg.train_files, "train_files", "single-label")] == ["10", "2"]


def test_column_mapping_and_text_pairs(tmp_path):
    rows = rows_of(tmp_path, [{"premise": "p", "hypothesis": "h", "gold": "entail"}],
                   columns={"text": "premise", "text_pair": "hypothesis", "label": "gold"})
    assert (rows[0].text, rows[0].text_pair, rows[0].label) == ("p", "h", "entail")


def test_given_labels_fix_the_order(tmp_path):
    rows = rows_of(tmp_path, [{"text": "a", "label": "low"}, {"text": "b", "label": "high"}])
    assert discover_labels(rows, "single-label", ["low", "mid", "high"]).names == ("low", "mid", "high")
    with pytest.raises(DataError, match="'high' is not one of model.labels"):
        discover_labels(rows, "single-label", ["low", "mid"])


def test_single_class_is_refused(tmp_path):
    rows = rows_of(tmp_path, [{"text": "a", "label": "spam"}, {"text": "b", "label": "spam"}])
    with pytest.raises(DataError, match="only the class 'spam'.*at least two classes"):
        discover_labels(rows, "single-label")


def test_missing_label_names_the_row(tmp_path):
    with pytest.raises(DataError, match=r"train.jsonl: line 2: the label \(column 'label'\) is missing"):
        rows_of(tmp_path, [{"text": "a", "label": "x"}, {"text": "b"}])


def test_fractional_label_for_single_label_points_to_regression(tmp_path):
    with pytest.raises(DataError, match=r"(?s)line 1: the label 0\.5 .* fractional number.*regression"):
        rows_of(tmp_path, [{"text": "a", "label": 0.5}])


def test_text_label_for_regression(tmp_path):
    with pytest.raises(DataError, match=r"(?s)line 1: the label 'high' .* is not a number.*regression"):
        rows_of(tmp_path, [{"text": "a", "label": "high"}], "regression")
    assert rows_of(tmp_path, [{"text": "a", "label": "0.25"}], "regression")[0].label == 0.25


def test_bad_rows_can_be_skipped(tmp_path):
    rows = rows_of(tmp_path, [{"text": "a", "label": "x"}, {"text": "b"}, {"text": "c", "label": "y"}], skip_bad_rows=True)
    assert [r.text for r in rows] == ["a", "c"]


def test_multi_label_lists_and_csv_cells(tmp_path):
    rows = rows_of(tmp_path, [{"text": "a", "label": ["sport", "news"]}, {"text": "b", "label": []}], "multi-label")
    assert rows[0].label == ["news", "sport"] and rows[1].label == []
    assert discover_labels(rows, "multi-label").names == ("news", "sport")
    (tmp_path / "m.csv").write_text('text,label\nx,"a, b"\n', encoding="utf-8")
    cfg = DataConfig(train_files=[str(tmp_path / "m.csv")])
    assert read_labelled_rows(cfg, cfg.train_files, "train_files", "multi-label")[0].label == ["a", "b"]


def test_label_only_in_validation_is_refused(tmp_path):
    train = rows_of(tmp_path, [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    labels = discover_labels(train, "single-label")
    validation = rows_of(tmp_path, [{"text": "c", "label": "neutral"}])
    with pytest.raises(DataError, match="validation label 'neutral' does not occur in the training data"):
        check_validation_labels(validation, labels)


def test_the_label_set_decides_num_labels(tmp_path):
    data = DataConfig(train_files=[write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"},
                                                                      {"text": "b", "label": "y"},
                                                                      {"text": "c", "label": "z"}])])
    assert label_set_for(ModelConfig(), data).num_labels == 3
    assert label_set_for(ModelConfig(problem_type="regression"), DataConfig(
        train_files=[write_jsonl(tmp_path / "r.jsonl", [{"text": "a", "label": 1.5}])])).num_labels == 1


def test_label_file_round_trip(tmp_path):
    labels = LabelSet("single-label", ("neg", "pos"), {"neg": 3, "pos": 5})
    write_label_file(tmp_path, labels)
    assert read_label_file(tmp_path) == labels
    assert read_label_file(tmp_path / "missing") is None


def test_single_label_metrics_against_hand_counts():
    # truth 0 0 1 1 2, predicted 0 1 1 1 0: per class (tp, fp, fn) = (1,1,1) (2,1,0) (0,0,1)
    metrics = ClassificationMetrics(LabelSet("single-label", ("a", "b", "c")))
    logits = np.eye(3)[[0, 1, 1, 1, 0]]
    out = metrics(SimpleNamespace(predictions=logits, label_ids=np.array([0, 0, 1, 1, 2])))
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["f1"] == pytest.approx((2 / 4 + 4 / 5 + 0) / 3)
    assert metrics.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert "confusion matrix" in metrics.confusion_text()


def test_regression_and_multi_label_metrics():
    regression = ClassificationMetrics(LabelSet("regression", ()))
    out = regression(SimpleNamespace(predictions=np.array([[1.0], [3.0]]), label_ids=np.array([2.0, 2.0])))
    assert out == {"mse": pytest.approx(1.0), "mae": pytest.approx(1.0)}
    multi = ClassificationMetrics(LabelSet("multi-label", ("a", "b")))
    out = multi(SimpleNamespace(predictions=np.array([[2.0, -1.0], [1.0, 1.0]]),
                                label_ids=np.array([[1.0, 0.0], [1.0, 0.0]])))
    assert out["exact_match"] == pytest.approx(0.5)
    assert out["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))  # tp 2, fp 1, fn 0
