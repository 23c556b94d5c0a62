"""The summary bar with "Start from adapter" (model.init_adapter): its numbers are the adapter's — its rank and its
modules, which the run trains — not the LoRA form's; a form that contradicts the adapter shows why the run would be
refused."""

from pathlib import Path

from workbench.gui.widgets.summary_bar import human_bytes


def sft_adapter(base: Path, folder: Path) -> int:
    """A rank-2 adapter on q_proj alone, saved by PEFT; its trainable parameter count as PEFT reports it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], lora_dropout=0.0))
    model.save_pretrained(folder)
    return model.get_nb_trainable_parameters()[0]


def set_init_adapter(window, qtbot, text: str) -> None:
    editor = window.form.editors["model.init_adapter"].widget
    editor.clear()
    qtbot.keyClicks(editor, text)


def test_the_summary_counts_the_init_adapter_not_the_form(opened, qtbot, tiny_model_dir, tmp_path):
    from workbench.core.config import LoraSettings
    from workbench.core.layers import count_selection, resolve_selection
    from workbench.core.memory import estimate_for_config

    window, summary = opened, opened.layers.summary
    trainable = sft_adapter(tiny_model_dir("llama"), tmp_path / "sft")
    qtbot.waitUntil(lambda: "trainable of" in summary.trainable.toolTip())
    form_count = summary.trainable.toolTip()
    assert f"{trainable:,} trainable" not in form_count  # the form (rank 16, its preset) would train more

    set_init_adapter(window, qtbot, str(tmp_path / "sft"))
    qtbot.waitUntil(lambda: f"{trainable:,} trainable" in summary.trainable.toolTip(), timeout=10_000)
    assert "in 2 modules" in summary.trainable.text()  # q_proj of the tiny llama's 2 blocks
    tree = window.overview.tree
    adapter_lora = LoraSettings(r=2, alpha=4.0, dropout=0.0, target_modules=["q_proj"])  # its adapter_config.json
    selection = resolve_selection(tree, adapter_lora)
    assert human_bytes(count_selection(tree, selection).adapter_bytes) in summary.adapter.text()
    estimate = estimate_for_config(tree, selection, window.overview.hf_config,
                                   window.store.config.copy_with(lora=adapter_lora.model_dump()), device="cpu")
    assert human_bytes(estimate.total) in summary.memory.text()

    # a rank typed into the form that the adapter contradicts: the run would be refused, and the bar says why
    window.store.update("lora", r=4)
    qtbot.waitUntil(lambda: "lora.r = 4, but the adapter" in summary.trainable.text(), timeout=10_000)
    assert summary.adapter.text() == "" and summary.memory.text() == ""

    window.store.update("lora", r=16)
    set_init_adapter(window, qtbot, str(tmp_path / "no such adapter"))
    qtbot.waitUntil(lambda: "no such folder" in summary.trainable.text(), timeout=10_000)
