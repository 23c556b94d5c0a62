"""The Data tab as a newcomer meets it: validation files visible and editable, problems shown beside the control
they concern in the window's words, the format detected again when the files change, plain text's split and
train-on choices, and the formats other tools write shown with the right tokens trained."""

from __future__ import annotations

import json

from PySide6.QtCore import Qt

from conftest import FACTS, write_facts


def trained_text_on_screen(panel) -> list[str]:
    """The highlighted (trained) runs of text in the preview, as drawn (a run open at the end of a line takes
    its line break)."""
    runs, current = [], ""
    block = panel.preview.document().begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            if fragment.charFormat().background().style() != Qt.BrushStyle.NoBrush:
                current += fragment.text()
            elif current:
                runs.append(current)
                current = ""
            it += 1
        block = block.next()
        if current and block.isValid():  # the line break between blocks belongs to a run that reaches it
            current += "\n"
    return runs + ([current] if current else [])


def inspect(window, qtbot, action) -> None:
    with qtbot.waitSignal(window.data_inspected, timeout=60_000):
        action()


def test_validation_files_are_shown_added_and_removed(opened, qtbot, tmp_path):
    panel = opened.data
    train = write_facts(tmp_path)
    held = write_facts(tmp_path, "held.jsonl")
    inspect(opened, qtbot, lambda: panel.add_files([str(train)]))
    assert panel.hold_out.isEnabled()
    inspect(opened, qtbot, lambda: panel.add_validation_files([str(held)]))
    assert opened.store.config.data.validation_files == [str(held)]
    assert panel.validation_box.paths() == [str(held)]
    assert "6 validation rows" in panel.detected_label.text()
    assert not panel.hold_out.isEnabled(), "a hold-out fraction means nothing beside validation files"

    panel.validation_box.files.item(0).setSelected(True)
    inspect(opened, qtbot, panel.validation_box.remove_button.click)
    assert opened.store.config.data.validation_files == [] and panel.validation_box.paths() == []
    assert "validation rows" not in panel.detected_label.text() and panel.hold_out.isEnabled()


def test_a_bad_validation_file_is_named_beside_its_list_with_the_checkbox_to_skip(opened, qtbot, tmp_path):
    panel = opened.data
    bad = tmp_path / "validation.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 3, "completion": "b"}\n')
    inspect(opened, qtbot, lambda: panel.add_files([str(write_facts(tmp_path))]))
    with qtbot.waitSignal(opened.data_failed, timeout=60_000):
        panel.add_validation_files([str(bad)])
    shown = panel.shown_problems()
    assert list(shown) == ["validation_files"]
    assert "validation.jsonl: line 2: field 'prompt'" in shown["validation_files"]
    assert "Skip bad rows" in shown["validation_files"] and "data.skip_bad_rows" not in shown["validation_files"]
    assert opened.error_box is None, "no message box that returns after every edit"

    inspect(opened, qtbot, lambda: panel.skip_bad_rows.setChecked(True))
    assert opened.store.config.data.skip_bad_rows and panel.shown_problems() == {}
    assert "1 validation rows" in panel.detected_label.text() or "validation rows" in panel.detected_label.text()


def test_new_files_are_detected_again_and_re_detect_forgets_a_chosen_format(opened, qtbot, tmp_path):
    panel = opened.data
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    opened.store.update("data", train_files=[str(chat)], format="chat")  # as a previous run left it
    facts = write_facts(tmp_path)
    inspect(opened, qtbot, lambda: panel.set_files([str(facts)]))
    assert opened.store.config.data.format == "auto"
    assert "prompt-completion" in panel.detected_label.text()
    assert panel.format_combo.currentText() == "auto (detected: prompt-completion)"

    with qtbot.waitSignal(opened.data_failed, timeout=60_000):
        panel.format_combo.setCurrentIndex(panel.format_combo.findData("alpaca"))
        panel.format_combo.activated.emit(panel.format_combo.currentIndex())
    assert "train_files" in panel.shown_problems()
    inspect(opened, qtbot, panel.redetect_button.click)
    assert opened.store.config.data.format == "auto" and panel.shown_problems() == {}


def test_plain_text_says_how_it_is_split_and_greys_completion_only(opened, qtbot, tmp_path):
    panel = opened.data
    text = tmp_path / "play.txt"
    text.write_text("First speech,\nstill the first.\n\nSecond speech.\n\nThird.\n")
    inspect(opened, qtbot, lambda: panel.add_files([str(text)]))
    assert "each of the 3 paragraphs" in panel.detected_label.text()
    assert not panel.train_on_combo.isEnabled() and "every token is trained" in panel.train_on_combo.toolTip()
    assert panel._settings_form.isRowVisible(panel.split_combo)
    assert not panel._settings_form.isRowVisible(panel.alpaca_combo)

    panel.split_combo.setCurrentIndex(panel.split_combo.findData("whole"))
    inspect(opened, qtbot, lambda: panel.split_combo.activated.emit(panel.split_combo.currentIndex()))
    assert opened.store.config.data.text_split == "whole"
    assert "each file is one example" in panel.detected_label.text()
    assert trained_text_on_screen(panel)[0].startswith("irst speech,\nstill the first.\n\nSecond speech.")

    inspect(opened, qtbot, lambda: panel.set_files([str(write_facts(tmp_path))]))
    assert panel.train_on_combo.isEnabled() and not panel._settings_form.isRowVisible(panel.split_combo)


def test_llamafactory_v1_rows_show_only_the_weighted_assistant_turn_trained(opened, qtbot, tmp_path):
    def message(role, text, weight):
        return {"role": role, "content": [{"type": "text", "value": text}], "loss_weight": weight}

    rows = [{"messages": [message("user", "hi", 0.0), message("assistant", "Hello there.", 0.0),
                          message("user", "Who are you?", 0.0), message("assistant", "An assistant.", 1.0)]}]
    file = tmp_path / "v1_sft_demo.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    inspect(opened, qtbot, lambda: opened.data.add_files([str(file)]))
    assert "chat" in opened.data.detected_label.text()
    assert trained_text_on_screen(opened.data) == ["An assistant.<|im_end|>\n"]


def test_openai_parts_and_a_dataset_info_mapping_load_in_the_window(opened, qtbot, tmp_path):
    rows = [{"dialog": [{"speaker": "client", "text": [{"type": "text", "text": "Two plus two?"}]},
                        {"speaker": "agent", "text": [{"type": "text", "text": "Four."}]}]}]
    file = tmp_path / "support.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"support": {
        "file_name": "support.jsonl", "formatting": "sharegpt", "columns": {"messages": "dialog"},
        "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "client", "assistant_tag": "agent"}}}))
    inspect(opened, qtbot, lambda: opened.data.add_files([str(file)]))
    assert "from dataset_info.json (LLaMA-Factory)" in opened.data.detected_label.text()
    assert opened.data.column_combos["conversations"].currentText() == "dialog"
    assert not opened.data.column_combos["conversations"].isEnabled(), "the list's columns and tags go together"
    assert trained_text_on_screen(opened.data) == ["Four.<|im_end|>\n"]


def test_alpaca_offers_both_prompts_and_starts_with_the_models_chat_template(opened, qtbot, tmp_path):
    panel = opened.data
    file = tmp_path / "alpaca.jsonl"
    file.write_text(json.dumps({"instruction": "Name the capital of France.", "input": "", "output": "Paris"}) + "\n")
    inspect(opened, qtbot, lambda: panel.add_files([str(file)]))
    assert panel._settings_form.isRowVisible(panel.alpaca_combo) and panel.alpaca_combo.currentData() == "auto"
    assert "<|im_start|>assistant" in panel.preview.toPlainText()
    assert trained_text_on_screen(panel) == ["Paris<|im_end|>\n"]
    panel.alpaca_combo.setCurrentIndex(panel.alpaca_combo.findData("classic"))
    inspect(opened, qtbot, lambda: panel.alpaca_combo.activated.emit(panel.alpaca_combo.currentIndex()))
    assert "### Instruction:" in panel.preview.toPlainText()


def test_long_file_names_are_elided_in_the_middle_and_whole_in_the_tooltip(window, tmp_path):
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 6)
    deep.mkdir(parents=True)
    file = write_facts(deep, "the-file-name-that-matters.jsonl")
    window.store.update("data", train_files=[str(file)])
    item = window.data.files.item(0)
    assert window.data.files.textElideMode() == Qt.TextElideMode.ElideMiddle
    assert item.toolTip().startswith(str(file))


def test_removing_the_last_file_leaves_nothing_of_it_on_screen(opened, qtbot, tmp_path):
    panel = opened.data
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "unterminated\n')
    with qtbot.waitSignal(opened.data_failed, timeout=60_000):
        panel.add_files([str(bad)])
    assert "train_files" in panel.shown_problems()
    panel.files.item(0).setSelected(True)
    panel.remove_button.click()
    assert opened.store.config.data.train_files == []
    assert panel.shown_problems() == {} and panel.detected_label.text() == "No data chosen."


def test_show_tokens_shades_every_token_and_keeps_the_text(opened, qtbot, tmp_path):
    panel = opened.data
    inspect(opened, qtbot, lambda: panel.add_files([str(write_facts(tmp_path))]))
    text = panel.preview.toPlainText()
    merged_runs = panel.preview.toHtml().count("background-color")
    panel.show_tokens.setChecked(True)
    assert panel.preview.toPlainText() == text
    assert panel.preview.toHtml().count("background-color") > 3 * merged_runs, "one shaded span per token"
    panel.show_tokens.setChecked(False)
    assert panel.preview.toHtml().count("background-color") == merged_runs


def test_before_any_data_the_histogram_is_an_empty_state_not_an_empty_plot(opened, qtbot, tmp_path):
    """An empty plot showed only the max-length line, on a 1023.6–1024.4 axis; no mapping shows no Columns box."""
    panel = opened.data
    opened.tabs.setCurrentWidget(panel)
    qtbot.waitExposed(panel)
    assert not panel.histogram.isVisible() and panel.histogram_empty.isVisible()
    assert "once it is read" in panel.histogram_empty.text()
    assert not panel.columns_box.isVisible()
    inspect(opened, qtbot, lambda: panel.add_files([str(write_facts(tmp_path))]))
    assert panel.histogram.isVisible() and not panel.histogram_empty.isVisible()
    assert sum(panel.bars.opts["height"]) == len(FACTS)  # every example, drawn
    panel.files.item(0).setSelected(True)
    panel.remove_button.click()  # no data again: the empty state, not the last data's bars
    assert not panel.histogram.isVisible() and panel.histogram_empty.isVisible()
    assert len(panel.bars.opts["height"]) == 0


def test_the_image_classification_task_shows_no_empty_columns_box(window, qtbot):
    window.store.update("model", task="image-classification")
    window.tabs.setCurrentWidget(window.data)
    qtbot.waitExposed(window.data)
    assert not window.data.columns_box.isVisible()
    assert window.data.columns_form.rowCount() == 0
