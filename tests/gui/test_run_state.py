"""The window's state as a newcomer meets it: the title names the run, New run / Demo ask before discarding
edits and leave nothing of the previous model on screen, and the first seconds say what is happening."""

import json

from PySide6.QtWidgets import QMessageBox

from workbench.core.config import RunConfig


def test_new_run_and_demo_ask_before_discarding_unsaved_edits(window, qtbot, tmp_path):
    window.store.update("lora", r=4)
    assert window.store.dirty

    window.request_new_run()
    assert window.discard_prompt is not None, "asked, not discarded"
    assert "Save them before you start a new run?" in window.discard_prompt.text()
    window.discard_prompt.button(QMessageBox.StandardButton.Cancel).click()
    qtbot.waitUntil(lambda: window.discard_prompt is None)
    assert window.store.config.lora.r == 4 and window.store.dirty

    window.request_demo()
    assert "open the demo run" in window.discard_prompt.text()
    window.discard_prompt.button(QMessageBox.StandardButton.Cancel).click()
    qtbot.waitUntil(lambda: window.discard_prompt is None)
    assert window.store.config.model.source == "" and window.store.config.lora.r == 4

    window.request_new_run()
    window.discard_prompt.button(QMessageBox.StandardButton.Discard).click()
    qtbot.waitUntil(lambda: window.discard_prompt is None)
    assert window.store.config == RunConfig() and not window.store.dirty

    window.request_new_run()  # nothing unsaved now: no question
    assert window.discard_prompt is None


def test_new_run_leaves_nothing_of_the_previous_model_and_data(opened, qtbot, tmp_path, facts_file):
    window = opened
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "only a prompt"}) + "\n{not json\n")
    with qtbot.waitSignal(window.data_failed, timeout=60_000):
        window.data.add_files([str(bad)])
    if window.error_box is not None:
        window.error_box.close()
    assert "bad.jsonl" in window.data.shown_problems()["train_files"], "the data error is on screen"
    window.layers.blocks_edit.setText("0-1")
    window.layers.filter_edit.setText("q_proj")
    qtbot.waitUntil(lambda: "Memory estimate" in window.layers.summary.memory.text())
    assert window.layers.summary.verdict.text()

    window.new_run()
    layers = window.layers
    assert layers.model is None and layers.stack.currentIndex() == 0, "no tree of the previous model"
    assert "Open a model" in layers.placeholder_label.text()
    assert layers.summary.trainable.text() == "No model open"
    assert layers.summary.memory.text() == "" and layers.summary.verdict.text() == "", "no memory verdict"
    assert layers.filter_edit.text() == "" and layers.blocks_edit.text() == "", "no stale filter or block range"
    assert window.data.detected_label.text() == "No data chosen." and window.data.files.count() == 0
    assert window.data.shown_problems() == {}, "no error of the previous run's data"
    assert window.overview is None
    assert window.windowTitle() == "untitled run — LoRA Workbench"


def test_the_title_names_the_run_and_the_demo_says_what_to_do_next(smollm2_in_window_cache, window, qtbot, tmp_path):
    # The model is converted already (the session's conversion): what the window shows while it opens is the point,
    # not the first-use conversion, which is test_demo_window.py's.
    assert window.windowTitle().startswith("untitled run")
    window.ask_before_discarding = False
    assert window.open_demo()
    assert window.windowTitle() == "demo.toml (the demo run, not saved) — LoRA Workbench"
    assert window.layers.stack.currentIndex() == 0 and window.layers.placeholder_busy.isVisible(), \
        "the tree's place shows progress while the model opens"
    assert "Opening builtin:" in window.layers.placeholder_label.text()
    with qtbot.waitSignal(window.model_opened, timeout=180_000):
        pass
    assert window.layers.stack.currentWidget() is window.layers.tree_page  # the block map above the tree
    assert "press Start on the Train tab" in window.statusBar().currentMessage()
    window.store.update("training", learning_rate=1e-3)
    assert "press Start" in window.statusBar().currentMessage(), "a setting changed: still the demo's data and model"
    window.store.update("model", task="sequence-classification")
    assert window.statusBar().currentMessage() == "", "no longer the demo as it opened: the hint would mislead"

    path = tmp_path / "mine.toml"
    assert window._save_to(path)
    assert window.windowTitle() == "mine.toml — LoRA Workbench"
