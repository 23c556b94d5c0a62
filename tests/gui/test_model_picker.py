"""The model picker: recent models first, then Hub relatives of the open model (when online); picking one opens it."""


def test_suggestions_follow_recent_models_and_open_when_picked(qtbot):
    from workbench.gui.widgets.model_picker import ModelPicker

    picker = ModelPicker()
    qtbot.addWidget(picker)
    picker.set_recent(["/models/a", "HuggingFaceTB/SmolLM2-135M-Instruct"])
    picker.set_text("/models/a")
    picker.set_suggestions(["HuggingFaceTB/SmolLM2-360M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"])
    items = [picker.source.itemText(i) for i in range(picker.source.count())]
    assert items == ["/models/a", "HuggingFaceTB/SmolLM2-135M-Instruct", "", "HuggingFaceTB/SmolLM2-360M-Instruct"], \
        "a separator, and no repeat of a recent model"
    assert picker.text() == "/models/a", "what the user typed stays"
    picker.set_recent(["/models/b"])  # a newly opened model keeps the suggestions below
    assert picker.source.itemText(picker.source.count() - 1) == "HuggingFaceTB/SmolLM2-360M-Instruct"
    with qtbot.waitSignal(picker.openRequested) as opened:
        picker.source.setCurrentIndex(picker.source.count() - 1)
        picker.source.activated.emit(picker.source.count() - 1)
    assert opened.args == ["HuggingFaceTB/SmolLM2-360M-Instruct"]


def test_conversion_progress_then_a_busy_bar_for_a_wait_without_amount(qtbot):
    from workbench.gui.widgets.model_picker import ModelPicker

    picker = ModelPicker()
    qtbot.addWidget(picker)
    picker.show()
    picker.show_progress(2, 4, "model.gguf: de-quantising")
    assert picker.progress.isVisible() and picker.progress.value() == 2 and picker.progress.maximum() == 4
    picker.show_progress(0, 0, "waiting for another Workbench process")
    assert picker.progress.maximum() == 0, "busy indicator"
    picker.set_busy(False)
    assert not picker.progress.isVisible()



def test_a_source_without_weight_files_says_what_it_can_do(qtbot):
    """A config-only folder (the 70B skeleton of the README's block map) said "(none weights)"."""
    from pathlib import Path
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from workbench.core.layers import build_tree
    from workbench.core.models import ModelSource
    from workbench.gui.widgets.model_picker import ModelPicker

    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=64)
    with torch.device("meta"):
        tree = build_tree(AutoModelForCausalLM.from_config(config))
    picker = ModelPicker()
    qtbot.addWidget(picker)
    for kind, weights, wanted in (("local", "none", "(config only, no weight files: the tree and estimates, no training)"),
                                  ("hub", "none", "(weights not downloaded yet: they download when training starts)"),
                                  ("local", "safetensors", "(safetensors weights)")):
        source = ModelSource("/m", kind, Path("/m"), weights)
        overview = SimpleNamespace(tree=tree, architecture="LlamaForCausalLM", dtype="bfloat16", source=source)
        picker.show_overview(overview, "CPU")
        text = picker.info.text()
        assert wanted in text and "none weights" not in text, text
        assert "2 blocks (model.layers)" in text and f"· {kind} (" in text
