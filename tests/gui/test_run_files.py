"""New / open / save run files, the copied command line, recents and the window title."""

import shlex

from PySide6.QtGui import QGuiApplication

from workbench.core.config import RunConfig


def test_save_open_and_new(window, qtbot, tmp_path, tiny_model_dir):
    path = tmp_path / "run.toml"
    window.store.update("lora", r=8, alpha=16.0)
    assert "•" in window.windowTitle()
    assert window._save_to(path)
    assert "run.toml" in window.windowTitle() and "•" not in window.windowTitle()
    assert RunConfig.from_toml(path) == window.store.config

    window.new_run()
    assert window.store.config.lora.r == RunConfig().lora.r
    assert window.form.editors["lora.r"].widget.text() == str(RunConfig().lora.r)

    saved = RunConfig.from_toml(path).copy_with(model={"source": str(tiny_model_dir("llama"))},
                                                lora={"preset": "mlp"})
    saved.save(path)
    with qtbot.waitSignal(window.model_opened, timeout=60_000):
        assert window.open_run(path)
    assert window.form.editors["lora.r"].widget.text() == "8"
    tree = window.overview.tree
    assert window.layers.model.selected == set(tree.preset("mlp")), "the run file's preset shows as ticks"
    assert window._recent("recent/runs") == [str(path)]
    assert window._recent("recent/models") == [str(tiny_model_dir("llama"))]
    assert window.recent_menu.actions()[0].text() == str(path)


def test_bad_run_file_shows_a_message(window, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[lora]\nr = 0\nrank = 3\n')
    assert not window.open_run(path)
    text = window.error_box.text()
    assert "lora.r" in text and "lora.rank" in text
    window.error_box.close()


def test_copied_command_line_reproduces_the_configuration(window, tmp_path):
    path = tmp_path / "run.toml"
    window._save_to(path)
    window.store.update("training", learning_rate=1e-4, sample_prompts=["Say \"hi\"", "it's"])
    window.store.update("lora", rank_pattern={"model.layers.0.self_attn.q_proj": 4}, target_modules=["model.layers.0.self_attn.q_proj"])
    text = window.copy_command_line()
    assert QGuiApplication.clipboard().text() == text
    argv = shlex.split(text)
    assert argv[:3] == ["workbench", "train", str(path)]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert len(sets) == 4
    assert RunConfig.from_toml(path).with_overrides(sets) == window.store.config


def test_dropping_a_model_folder_and_a_data_file(window, qtbot, tiny_model_dir, facts_file):
    from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PySide6.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tiny_model_dir("llama"))), QUrl.fromLocalFile(str(facts_file))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.model_opened, timeout=60_000):
        window.dropEvent(event)
    assert window.store.config.data.train_files == [str(facts_file)]
    qtbot.waitSignal(window.data_inspected, timeout=60_000).wait()
    assert window._recent("recent/data") == [str(facts_file)]
    assert window.recent_data_menu.actions()[0].text() == str(facts_file)


def test_opening_a_run_file_for_another_model_keeps_its_layer_choice(opened, qtbot, tmp_path, tiny_model_dir):
    gpt2 = str(tiny_model_dir("gpt2"))
    path = tmp_path / "gpt2.toml"
    RunConfig.from_dict({"model": {"source": gpt2}, "lora": {"target_modules": ["transformer.h.1.attn.c_attn"]}}).save(path)
    with qtbot.waitSignal(opened.model_opened, timeout=60_000):
        opened.open_run(path)
    assert opened.layers.model.selected == {"transformer.h.1.attn.c_attn"}
    assert opened.store.config.lora.target_modules == ["transformer.h.1.attn.c_attn"]
    assert not opened.store.dirty


def test_opening_a_run_file_never_takes_the_open_trees_ticks(opened, qtbot, tmp_path, tiny_model_dir):
    """The open tree's module names also exist in the file's model (both llama) and the file's alpha differs:
    updating the tree's default alpha once wrote the tree's ticks back into the file's configuration."""
    opened.layers.preset_combo.setCurrentText("attention")
    opened.layers.apply_preset()
    opened.store.update("lora", alpha=8.0)
    other = str(tiny_model_dir("llama", num_hidden_layers=3))
    path = tmp_path / "other.toml"
    RunConfig.from_dict({"model": {"source": other}, "lora": {"preset": "mlp", "alpha": 64.0}}).save(path)
    with qtbot.waitSignal(opened.model_opened, timeout=60_000):
        opened.open_run(path)
    lora = opened.store.config.lora
    assert (lora.preset, lora.alpha, lora.target_modules, lora.rank_pattern) == ("mlp", 64.0, [], {})
    assert all(".mlp." in name for name in opened.layers.model.selected)
    assert opened.layers.preset_combo.currentData() == "mlp"
    assert not opened.store.dirty


def test_closing_with_unsaved_settings_asks_save_discard_or_cancel(window, qtbot, tmp_path):
    from PySide6.QtWidgets import QMessageBox

    path = tmp_path / "mine.toml"
    window.store.update("training", learning_rate=1e-4)
    window._save_to(path)
    window.store.update("training", learning_rate=3e-4)
    assert window.store.dirty and "•" in window.windowTitle()

    window.close()
    assert window.isVisible() and window.save_prompt is not None, "asked, not closed"
    window.save_prompt.button(QMessageBox.StandardButton.Cancel).click()
    qtbot.waitUntil(lambda: window.save_prompt is None)
    assert window.isVisible() and window.store.dirty

    window.close()
    window.save_prompt.button(QMessageBox.StandardButton.Save).click()
    qtbot.waitUntil(lambda: not window.isVisible())
    from workbench.core.config import RunConfig

    assert RunConfig.from_toml(path).training.learning_rate == 3e-4, "saved to its file, then closed"


def test_discarding_unsaved_settings_closes_without_writing(window, qtbot, tmp_path):
    from PySide6.QtWidgets import QMessageBox

    path = tmp_path / "mine.toml"
    window._save_to(path)
    before = path.read_bytes()
    window.store.update("lora", r=32)
    window.close()
    window.save_prompt.button(QMessageBox.StandardButton.Discard).click()
    qtbot.waitUntil(lambda: not window.isVisible())
    assert path.read_bytes() == before

    window.show()  # reopened (as after a close that something else cancelled): a new edit is asked about again
    window.store.update("lora", r=8)
    window.close()
    assert window.isVisible() and window.save_prompt is not None
    window.save_prompt.button(QMessageBox.StandardButton.Discard).click()
    qtbot.waitUntil(lambda: not window.isVisible())
