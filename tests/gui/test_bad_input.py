"""Bad input never breaks the window: a message appears and everything stays usable."""

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from conftest import write_facts


def close_error(window) -> str:
    box = window.error_box
    assert box is not None and box.isVisible()
    text = box.text()
    box.close()
    return text


def test_missing_model_folder_shows_a_message_and_another_model_opens(window, qtbot, tmp_path, tiny_model_dir):
    with qtbot.waitSignal(window.model_failed, timeout=60_000) as failed:
        window.open_model(str(tmp_path / "no-such-model"))
    assert "does not exist" in failed.args[0]
    assert "does not exist" in close_error(window)
    assert window.picker.open_button.isEnabled()

    with qtbot.waitSignal(window.model_opened, timeout=60_000):
        window.open_model(str(tiny_model_dir("llama")))
    assert window.layers.model.selected


def test_broken_dataset_shows_a_message(opened, qtbot, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "unterminated\n')
    with qtbot.waitSignal(opened.data_failed, timeout=60_000) as failed:
        opened.data.add_files([str(broken)])
    assert "broken.jsonl" in failed.args[0]
    assert opened.error_box is None, "shown beside the files, not in a box that returns after every edit"
    assert "broken.jsonl" in opened.data.shown_problems()["train_files"]

    # Replacing the file with a good one works without restarting anything.
    good = write_facts(tmp_path)
    with qtbot.waitSignal(opened.data_inspected, timeout=60_000):
        opened.data.set_files([str(good)])
    assert "prompt-completion" in opened.data.detected_label.text()


def test_impossible_settings_are_marked_inline_and_block_the_start(opened, qtbot, facts_file):
    form = opened.form
    rank = form.editors["lora.r"]
    rank.widget.clear()
    qtbot.keyClicks(rank.widget, "0")
    assert "rank must be" in rank.error.text()
    assert opened.store.config.lora.r == 16, "a refused value does not reach the configuration"
    lr = form.editors["training.learning_rate"]
    lr.widget.clear()
    qtbot.keyClicks(lr.widget, "fast")
    assert "not a number" in lr.error.text()
    assert not form.valid

    assert form.problem_banner.isVisibleTo(form) and "2 settings not accepted" in form.problem_banner.text()
    assert "<a href='lora.r'>Rank</a>" in form.problem_banner.text()
    # The message under a field is given the height of all its lines (it was cut to one line).
    opened.tabs.setCurrentWidget(form)
    qtbot.waitUntil(lambda: lr.error.isVisible())
    QApplication.processEvents()
    long_text = " ".join(["much-too-fast"] * 12)
    lr.widget.setText(long_text)
    lr.widget.textEdited.emit(long_text)
    QApplication.processEvents()
    needed = lr.error.heightForWidth(lr.error.width())
    assert needed > 2 * lr.error.fontMetrics().height(), f"expected a message of several lines: {lr.error.text()!r}"
    assert lr.error.height() >= needed
    lr.widget.setText("fast")
    lr.widget.textEdited.emit("fast")

    opened.activateWindow()
    opened.training.start_button.click()
    assert opened.tabs.currentWidget() is form, "a refused start shows the field to fix"
    assert form.focusWidget() is rank.widget, "… with the cursor in the first refused one"
    text = close_error(opened)
    assert "Rank (lora.r)" in text and "Choose training data" in text
    assert not opened.training.running
    form.problem_banner.linkActivated.emit("training.learning_rate")  # what a click on the banner's link sends
    assert form.focusWidget() is lr.widget and lr.widget.selectedText() == "fast"

    rank.widget.clear()
    qtbot.keyClicks(rank.widget, "8")
    lr.widget.clear()
    qtbot.keyClicks(lr.widget, "2e-4")
    assert form.valid and rank.error.text() == ""
    assert opened.store.config.lora.r == 8 and opened.store.config.training.learning_rate == 2e-4
    assert lr.widget.text() == "2e-4", "the form keeps what the user typed"


def test_every_setting_has_a_tooltip_from_the_schema(window):
    from workbench.core.config import field_help

    help_texts = field_help()
    for key, editor in window.form.editors.items():
        assert help_texts[key] and help_texts[key] in editor.widget.toolTip(), key


def test_empty_selection_blocks_the_start(opened, qtbot, facts_file):
    with qtbot.waitSignal(opened.data_inspected, timeout=60_000):
        opened.data.add_files([str(facts_file)])
    opened.layers.model.replace_selection([])
    qtbot.waitUntil(lambda: "empty" in opened.layers.summary.trainable.text())
    opened.training.start_button.click()
    assert "empty" in close_error(opened)


def test_failure_during_training_shows_a_message_and_the_window_recovers(opened, qtbot, tmp_path):
    data = write_facts(tmp_path)
    with qtbot.waitSignal(opened.data_inspected, timeout=60_000):
        opened.data.add_files([str(data)])
    # The file goes bad after it was checked: the engine fails while preparing the run.
    data.write_text("not json at all\n")
    for key, text in (("training.max_steps", "2"), ("data.max_length", "64")):
        opened.form.editors[key].widget.clear()
        qtbot.keyClicks(opened.form.editors[key].widget, text)
    with qtbot.waitSignal(opened.training_failed, timeout=120_000) as failed:
        qtbot.mouseClick(opened.training.start_button, Qt.MouseButton.LeftButton)
    assert "facts.jsonl" in failed.args[0]
    qtbot.waitUntil(lambda: not opened.training.running)
    assert "facts.jsonl" in close_error(opened)
    assert "failed" in opened.training.status_label.text().lower(), (failed.args[0], opened.training.log.toPlainText())
    assert "FAILED" in opened.training.log.toPlainText()
    assert opened.training.start_button.isEnabled()
    assert opened.layers.preset_button.isEnabled()


def test_a_layer_choice_from_another_model_falls_back_to_the_preset(opened, qtbot, tiny_model_dir):
    tree = opened.overview.tree
    opened.layers.model.replace_selection(tree.match("q_proj"))
    assert opened.store.config.lora.target_modules == tree.match("q_proj")
    with qtbot.waitSignal(opened.model_opened, timeout=60_000):
        opened.open_model(str(tiny_model_dir("gpt2")))
    gpt2 = opened.overview.tree
    assert opened.layers.model.selected == set(gpt2.preset(opened.store.config.lora.preset))
    assert opened.store.config.lora.target_modules == []
    assert "did not fit" in opened.statusBar().currentMessage()
    qtbot.waitUntil(lambda: "Trainable" in opened.layers.summary.trainable.text())


def test_failure_in_the_middle_of_a_run_shows_a_message_and_the_window_recovers(opened, qtbot, tmp_path):
    import shutil

    data = write_facts(tmp_path)
    with qtbot.waitSignal(opened.data_inspected, timeout=60_000):
        opened.data.add_files([str(data)])
    for key, text in (("training.max_steps", "400"), ("data.max_length", "64"), ("training.batch_size", "2")):
        opened.form.editors[key].widget.clear()
        qtbot.keyClicks(opened.form.editors[key].widget, text)
    opened.start_training()
    qtbot.waitUntil(lambda: opened.training.plots.points("loss") >= 2, timeout=120_000)
    # The run folder turns into a file under the running engine (a disk gone bad looks much the same):
    # saving the checkpoint and adapter at the stop fails.
    run_dir = next((tmp_path / "runs").iterdir())
    shutil.rmtree(run_dir)
    run_dir.write_text("not a folder")
    failures = []
    opened.training_failed.connect(failures.append)
    with qtbot.waitSignal(opened.training_ended, timeout=120_000):
        opened.training.stop_button.click()
    assert failures, "the run ended without reporting the failure"
    assert failures[0] in close_error(opened)
    assert "failed" in opened.training.status_label.text().lower()
    assert opened.training.start_button.isEnabled() and opened.layers.preset_button.isEnabled()
    assert opened.training.plots.points("loss") >= 2, "what was drawn stays for the user to look at"
