"""The window's demo: the built-in SmolLM2, converted on first use with progress shown, and the demo run loaded."""

from pathlib import Path

from PySide6.QtWidgets import QMessageBox

from workbench.core import cache


def test_demo_converts_the_builtin_model_with_progress_and_loads_the_demo_run(window, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "fresh-cache"))  # nothing converted yet: the first start
    runs_root = window.store.config.output.runs_root
    shown = []
    original = window.picker.show_progress
    monkeypatch.setattr(window.picker, "show_progress",
                        lambda done, total, detail: (shown.append((done, total, detail)), original(done, total, detail)))
    readings = []  # every reading of the data the Data tab shows
    show_result = window.data.show_result
    monkeypatch.setattr(window.data, "show_result", lambda result: (readings.append(result), show_result(result)))
    with qtbot.waitSignal(window.model_opened, timeout=180_000):
        window.picker.demo_button.click()
        # The window's settings were edited (the runs folder): the Demo button asks before discarding them.
        assert window.discard_prompt is not None
        window.discard_prompt.button(QMessageBox.StandardButton.Discard).click()
    assert not window.picker.progress.isVisible(), "the progress bar goes once the model is open"
    assert [total for _, total, _ in shown if total > 0], f"measurable conversion steps were shown: {shown}"
    assert shown[-1][0] == shown[-1][1], "the conversion reported its last step"

    config = window.store.config
    assert config.model.source == "builtin:smollm2-135m-instruct"
    assert Path(config.data.train_files[0]).is_file() and Path(config.data.validation_files[0]).is_file()
    assert config.output.runs_root == runs_root, "demo runs go where the window's runs go"
    assert window.store.path is None and not window.store.dirty, "an unsaved run, nothing to save yet"
    assert window.overview.tree.num_blocks == 30
    assert "LlamaForCausalLM" in window.picker.info.text()
    # The demo data is read with the model's tokenizer once the model is open. A reading before the model opened
    # (the demo run's data, at once) has no tokenized preview; the one after has, rendered by SmolLM2's chat template.
    qtbot.waitUntil(lambda: any(r["previews"] for r in readings), timeout=120_000)
    tokenized = next(r for r in readings if r["previews"])
    first = tokenized["previews"][0]
    text = "".join(piece for piece, _ in first.segments)
    assert "<|im_start|>" in text, f"not SmolLM2's chat template: {text[:200]!r}"
    assert any(trained for _, trained in first.segments) and first.trained_tokens > 0
    assert tokenized["stats"] is not None  # lengths in the model's tokens
    assert "chat" in window.data.detected_label.text()

    # The second time (and every later start) the converted folder is reused: no conversion step.
    shown.clear()
    with qtbot.waitSignal(window.model_opened, timeout=60_000):
        window.open_demo()
    assert shown == []
