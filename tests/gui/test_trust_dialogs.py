"""The window asks before unpickling a model's weights or running its code, shows what it would trust, applies
the choice to that model only, and stays usable when the answer is no."""

import json
import shutil

from tiny import pickled_copy


def test_pickle_weights_open_after_the_user_trusts_them(window, qtbot, tiny_model_dir, tmp_path):
    folder = pickled_copy(tiny_model_dir("llama"), tmp_path / "pickled")
    window.open_model(str(folder))
    qtbot.waitUntil(lambda: window.consent_box is not None, timeout=60_000)
    box = window.consent_box
    assert "pytorch_model.bin" in box.informativeText() and "model.allow_pickle" in box.informativeText()
    assert window.error_box is None, "a question, not an error"
    with qtbot.waitSignal(window.model_opened, timeout=60_000):
        box.allow_button.click()
    assert window.store.config.model.allow_pickle is True

    # Trust was given to that model only: the next one starts untrusted again.
    with qtbot.waitSignal(window.model_opened, timeout=60_000):
        window.open_model(str(tiny_model_dir("llama")))
    assert window.store.config.model.allow_pickle is False


def test_remote_code_is_shown_and_declining_leaves_the_window_usable(window, qtbot, tiny_model_dir, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir("llama"), folder)
    (folder / "modeling_my.py").write_text("import os\nos.system('echo this would run')\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="my_custom_arch", auto_map={"AutoModelForCausalLM": "modeling_my.MyModel"})
    (folder / "config.json").write_text(json.dumps(config))

    with qtbot.waitSignal(window.model_failed, timeout=60_000):
        window.open_model(str(folder))
        qtbot.waitUntil(lambda: window.consent_box is not None, timeout=60_000)
        box = window.consent_box
        assert str(folder / "modeling_my.py") in box.informativeText()
        assert "os.system('echo this would run')" in box.detailedText(), "the code itself is shown"
        box.reject()
    assert window.store.config.model.trust_remote_code is False
    assert "needs model.trust_remote_code" in window.picker.info.text()
    with qtbot.waitSignal(window.model_opened, timeout=60_000):
        window.open_model(str(tiny_model_dir("llama")))
