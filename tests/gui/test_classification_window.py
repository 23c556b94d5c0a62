"""The window with a classification task: the Data tab reads texts and labels (one bar per class), a bad label
is a message, and the Train button trains a classifier whose adapter carries its classes."""

import html
import json

from PySide6.QtCore import Qt


def write_labelled(path, rows):
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows), encoding="utf-8")
    return path


ROWS = [("Paris is the capital of France.", "travel"), ("the lazy dog", "animals"), ("capital of France", "travel"),
        ("a quick brown fox", "animals"), ("Translate to French: Paris", "travel")]


def test_data_tab_shows_classes_and_training_writes_labels(window, qtbot, tmp_path, tiny_model_dir):
    with qtbot.waitSignal(window.model_opened, timeout=60_000):
        window.open_model(str(tiny_model_dir("bert")))
    assert window.overview.tree.root.type == "BertLMHeadModel"
    with qtbot.waitSignal(window.model_opened, timeout=60_000):  # another task: the model opens again with its head
        window.store.update("model", task="sequence-classification")
    assert window.overview.tree.root.type == "BertForSequenceClassification" and "classifier" in window.overview.tree.nodes
    task = window.form.editors["model.task"]
    assert task.widget.currentText() == "sequence-classification"

    data = write_labelled(tmp_path / "labelled.jsonl", ROWS)
    with qtbot.waitSignal(window.data_inspected, timeout=60_000):
        window.data.add_files([str(data)])
    panel = window.data
    assert "5 training rows" in panel.detected_label.text()
    assert set(panel.column_combos) == {"text", "text_pair", "label"}
    heights = list(panel.bars.opts["height"])
    assert heights == [2.0, 3.0], "one bar per class, in id order (animals, travel)"
    assert "the commonest is 3 of 5 rows (60%)" in panel.stats_label.text()

    # a single class: the message names the problem, the window stays usable
    write_labelled(data, [(t, "travel") for t, _ in ROWS])
    with qtbot.waitSignal(window.data_failed, timeout=60_000) as failed:
        window.data.set_files([str(data)])
    assert "only the class 'travel'" in failed.args[0]
    assert window.error_box is None, "a bad label is said beside the data, not in a box"

    # other column names: the tab names what is missing and offers the file's columns to map
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text("".join(json.dumps({"review": t, "category": label}) + "\n" for t, label in ROWS))
    with qtbot.waitSignal(window.data_inspected, timeout=60_000):
        window.data.set_files([str(renamed)])
    assert "has no column 'text' for the text, nor 'label' for the label" in html.unescape(panel.detected_label.text())
    assert [panel.column_combos["label"].itemText(i) for i in range(panel.column_combos["label"].count())][1:] == [
        "review", "category"]

    write_labelled(data, ROWS)
    with qtbot.waitSignal(window.data_inspected, timeout=60_000):
        window.data.set_files([str(data)])
    for key, text in (("training.max_steps", "2"), ("data.max_length", "32")):
        window.form.editors[key].widget.clear()
        qtbot.keyClicks(window.form.editors[key].widget, text)
    window.store.update("training", device="cpu")
    with qtbot.waitSignal(window.training_done, timeout=120_000) as done:
        qtbot.mouseClick(window.training.start_button, Qt.MouseButton.LeftButton)
    result = done.args[0]
    labels = json.loads((result.adapter_dir / "labels.json").read_text())
    assert labels["id2label"] == {"0": "animals", "1": "travel"}
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"


def test_data_tab_shows_a_thumbnail_and_a_bar_per_image_class(window, qtbot, tmp_path):
    import tiny

    model = tiny.save_vision_model("resnet", tmp_path / "resnet")
    window.store.update("model", task="image-classification")  # the tree is built for the task's model class
    with qtbot.waitSignal(window.model_opened, timeout=60_000):
        window.open_model(str(model))
    assert any(n.type == "Conv2d" and n.adaptable for n in window.overview.tree.nodes.values())
    digits = tiny.save_digit_images(tmp_path / "digits", per_class=3, classes=4)
    with qtbot.waitSignal(window.data_inspected, timeout=60_000):
        window.data.set_files([str(digits)])
    panel = window.data
    assert "Images for" in panel.detected_label.text() and "12 training rows" in panel.detected_label.text()
    assert panel.preview.toHtml().count("<img") == 4
    assert list(panel.bars.opts["height"]) == [3.0, 3.0, 3.0, 3.0]
    assert not panel.columns_box.isVisible(), "an image folder has no columns to map"
