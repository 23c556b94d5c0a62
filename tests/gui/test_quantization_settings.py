"""The Settings tab's quantized-base group on the real window: the choices reach the run configuration, the layer
tree marks the quantized modules with their stored size, the memory estimate follows, the initialisation and LoRA+
edits go through the schema, and without bitsandbytes the choice is disabled with the reason."""

import pytest

from workbench.core.quantization import stored_bytes
from workbench.gui.widgets import quantization_settings
from workbench.gui.widgets.layer_tree_model import COL_TYPE
from workbench.gui.widgets.summary_bar import human_bytes


def _choose(combo, value) -> None:
    """As a user picks an entry: the index changes, then ``activated`` (what the form listens to)."""
    index = combo.findData(value)
    assert index >= 0, value
    combo.setCurrentIndex(index)
    combo.activated.emit(index)


def _memory_parts(window) -> str:
    return window.layers.summary.memory.toolTip()


def test_choosing_nf4_marks_the_tree_and_the_estimate_follows(opened, qtbot):
    window = opened
    box = window.form.quantization
    assert box.isEnabled() and box.quantization.isEnabled(), "bitsandbytes is installed in the test set-up"
    tree_model = window.layers.model
    q_proj = "model.layers.0.self_attn.q_proj"
    index = tree_model.index_of(q_proj, COL_TYPE)
    assert tree_model.data(index) == "Linear"
    before = window.layers.summary.memory.text()
    assert "dequantization" not in _memory_parts(window)

    _choose(box.quantization, "nf4")
    assert window.store.config.model.quantization == "nf4"
    assert box.double_quant.isEnabled() and box.double_quant.isChecked()
    assert "NormalFloat" in box.quantization_note.text()
    assert tree_model.data(index) == "Linear · nf4"
    node = tree_model.tree.nodes[q_proj]
    expected = stored_bytes(node.in_features, node.out_features, "nf4", True)
    assert node.stored_bytes == expected
    assert human_bytes(expected) in tree_model.data(index, 3)  # ToolTipRole
    head = tree_model.index_of("lm_head", COL_TYPE)
    assert "·" not in tree_model.data(head), "the output head stays in full precision"
    qtbot.waitUntil(lambda: "dequantization buffers" in _memory_parts(window))
    assert window.layers.summary.memory.text() != before, "the estimate counts the quantized weights"

    box.double_quant.click()  # off: the absmax constants in float32, a larger stored size
    assert window.store.config.model.double_quant is False
    assert node.stored_bytes == stored_bytes(node.in_features, node.out_features, "nf4", False) > expected

    _choose(box.quantization, "int8")
    assert not box.double_quant.isEnabled(), "double quantization is for 4-bit bases only"
    assert tree_model.data(index) == "Linear · int8"

    _choose(box.quantization, "none")
    assert tree_model.data(index) == "Linear" and node.stored_bytes == 0
    qtbot.waitUntil(lambda: "dequantization" not in _memory_parts(window))
    assert window.layers.summary.memory.text() == before


def test_compute_dtype_is_the_base_weights_dtype(window):
    box = window.form.quantization
    _choose(box.compute_dtype, "bfloat16")
    assert window.store.config.model.dtype == "bfloat16"
    assert window.form.editors["model.dtype"].widget.currentText() == "bfloat16", "the Hardware field shows it too"


def test_initialisation_and_loraplus_go_through_the_schema(window, qtbot):
    box = window.form.quantization
    assert "lora.init" not in window.form.editors, "one editor for the initialisation: this group's"
    _choose(box.init, "loftq")
    assert window.store.config.lora.init == "loftq"
    assert "4-bit NF4" in box.init_note.text(), "LoftQ without an nf4 base is explained before a run is refused"
    _choose(box.quantization, "nf4")
    assert "Needs a 4-bit NF4 base" not in box.init_note.text()

    box.init.lineEdit().setText("pissa_niter_16")  # a family: typed, not listed
    box.init.lineEdit().editingFinished.emit()
    assert window.store.config.lora.init == "pissa_niter_16"
    assert "randomised SVD" in box.init_note.text()

    box.init.lineEdit().setText("pissa_fast")
    box.init.lineEdit().editingFinished.emit()
    assert window.store.config.lora.init == "pissa_niter_16", "a refused name leaves the configuration alone"
    assert not box.problem.isHidden() and "unknown initialisation" in box.problem.text()
    assert not window.form.valid and any("initialisation" in p for p in window.form.problems())

    qtbot.keyClicks(box.loraplus, "16")
    box.loraplus.editingFinished.emit()
    assert window.store.config.training.loraplus_lr_ratio == 16
    assert box.problem.isHidden(), "a good edit clears the mark"
    box.loraplus.setText("fast")
    box.loraplus.editingFinished.emit()
    assert "not a number" in box.problem.text() and window.store.config.training.loraplus_lr_ratio == 16
    box.loraplus.setText("")
    box.loraplus.editingFinished.emit()
    assert window.store.config.training.loraplus_lr_ratio is None


def test_an_opened_run_file_shows_its_settings(window, tmp_path, tiny_model_dir):
    from workbench.core.config import RunConfig

    path = tmp_path / "q.toml"
    RunConfig.from_dict({"model": {"source": str(tiny_model_dir("llama")), "quantization": "fp4",
                                   "double_quant": False}, "lora": {"init": "olora"},
                         "training": {"loraplus_lr_ratio": 8}}).save(path)
    window.open_run(path)
    box = window.form.quantization
    assert box.quantization.currentData() == "fp4" and not box.double_quant.isChecked()
    assert box.init.currentText() == "olora" and box.loraplus.text() == "8"


def test_without_bitsandbytes_the_choice_is_disabled_with_the_reason(qtbot, monkeypatch):
    from workbench.gui.config_store import ConfigStore
    from workbench.gui.widgets.settings_form import SettingsForm

    monkeypatch.setattr(quantization_settings, "backend_available", lambda: False)
    form = SettingsForm(ConfigStore())
    qtbot.addWidget(form)
    form.show()
    box = form.quantization
    assert not box.quantization.isEnabled() and not box.double_quant.isEnabled()
    assert box.unavailable.isVisible()
    assert "bitsandbytes" in box.unavailable.text() and "pip install bitsandbytes==" in box.unavailable.text()
    assert box.init.isEnabled(), "the initialisations do not need bitsandbytes"
    optimizers = form.editors["training.optimizer"].widget
    items = {optimizers.itemText(i): optimizers.model().item(i) for i in range(optimizers.count())}
    assert not items["adamw_bnb_8bit"].isEnabled() and "Needs bitsandbytes" in items["adamw_bnb_8bit"].toolTip()
    assert not items["paged_adamw_8bit"].isEnabled() and items["adamw_torch"].isEnabled()


def test_with_bitsandbytes_its_optimizers_say_what_they_do(window):
    optimizers = window.form.editors["training.optimizer"].widget
    items = {optimizers.itemText(i): optimizers.model().item(i) for i in range(optimizers.count())}
    assert items["adamw_bnb_8bit"].isEnabled() and "8-bit optimizer state" in items["adamw_bnb_8bit"].toolTip()
    assert "CUDA only" in items["paged_adamw_32bit"].toolTip()


@pytest.mark.parametrize("value", [v for v, _ in quantization_settings.QUANT_CHOICES])
def test_every_choice_has_a_plain_description(value):
    from workbench.core.quantization import QUANTIZATIONS

    assert QUANTIZATIONS[value] and quantization_settings.QuantizationSettings._quantization_text(value)


def test_gradient_checkpointing_shows_automatic_until_the_user_chooses(window, tmp_path, tiny_model_dir):
    """Unset, the engine turns checkpointing on for a quantized base: the form says "automatic" (a check box showed
    "off" for what the run would do) and each choice reaches the run configuration, and back."""
    from workbench.core.config import RunConfig

    combo = window.form.editors["training.gradient_checkpointing"].widget
    assert window.store.config.training.gradient_checkpointing is None and combo.currentText() == "automatic"
    for text, value in (("on", True), ("off", False), ("automatic", None)):
        combo.setCurrentIndex(combo.findText(text))
        combo.activated.emit(combo.currentIndex())
        assert window.store.config.training.gradient_checkpointing is value
    path = tmp_path / "gc.toml"
    RunConfig.from_dict({"model": {"source": str(tiny_model_dir("llama"))},
                         "training": {"gradient_checkpointing": False}}).save(path)
    window.open_run(path)
    assert combo.currentText() == "off"
