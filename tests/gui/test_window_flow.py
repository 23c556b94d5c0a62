"""The whole flow in the real window on a tiny model: open → preset → rank → data → train → pause/resume →
stop → the adapter is in the run folder and loads in PEFT. Every wait is on a signal or a condition."""

from pathlib import Path

from PySide6.QtCore import Qt

from workbench.core.layers import count_selection, resolve_selection
from workbench.core.memory import estimate_for_config
from workbench.gui.widgets.layer_tree_model import human_count
from workbench.gui.widgets.summary_bar import human_bytes


def type_into(qtbot, form, key: str, text: str) -> None:
    editor = form.editors[key].widget
    editor.clear()
    qtbot.keyClicks(editor, text)


def test_model_preset_rank_and_summary_match_the_core(opened, qtbot):
    win = opened
    tree = win.overview.tree
    assert "LlamaForCausalLM" in win.picker.info.text()
    assert "CPU" in win.picker.info.text()

    win.layers.preset_combo.setCurrentText("attention-qv")
    qtbot.mouseClick(win.layers.preset_button, Qt.MouseButton.LeftButton)
    assert win.layers.model.selected == set(tree.preset("attention-qv"))
    assert win.store.config.lora.target_modules == tree.preset("attention-qv")

    type_into(qtbot, win.form, "lora.r", "4")
    assert win.store.config.lora.r == 4
    qtbot.waitUntil(lambda: "Trainable" in win.layers.summary.trainable.text())
    win.update_summary()

    sel = resolve_selection(tree, win.store.config.lora)
    counts = count_selection(tree, sel)
    estimate = estimate_for_config(tree, sel, win.overview.hf_config, win.store.config, device="cpu")
    summary = win.layers.summary
    assert f"<b>{human_count(counts.trainable_params)}</b>" in summary.trainable.text()
    assert f"{counts.trainable_share:.3%}" in summary.trainable.text()
    assert f"{counts.trainable_params:,} trainable" in summary.trainable.toolTip()
    assert human_bytes(counts.adapter_bytes) in summary.adapter.text()
    assert human_bytes(estimate.total) in summary.memory.text()
    assert summary.verdict.text() == estimate.verdict(win.available_memory)


def test_block_range_and_every_block_tools(opened, qtbot):
    win = opened
    tree = win.overview.tree
    win.layers.preset_combo.setCurrentText("all-linear")
    win.layers.apply_preset()
    win.layers.blocks_edit.setText("1")
    win.layers.keep_blocks()
    assert win.layers.model.selected == set(tree.in_blocks(tree.preset("all-linear"), [1]))
    win.layers.blocks_edit.setText("5-7")
    win.layers.keep_blocks()
    assert "blocks 0–1 only" in win.layers.problem_label.text()

    q0 = f"{tree.blocks_prefix}.0.self_attn.q_proj"
    win.layers.model.replace_selection([])
    win.layers.model.set_selected(tree.same_in_every_block(q0), True)
    assert win.store.config.lora.target_modules == tree.same_in_every_block(q0)

    win.layers.filter_edit.setText("v_proj")
    win.layers.check_matching.click()
    assert {n for n in win.layers.model.selected if n.endswith("v_proj")} == set(tree.match("v_proj"))


def test_train_pause_resume_stop_and_adapter_loads_in_peft(opened, qtbot, facts_file):
    win = opened
    win.layers.preset_combo.setCurrentText("attention-qv")
    win.layers.apply_preset()
    type_into(qtbot, win.form, "lora.r", "4")
    for key, text in (("training.max_steps", "400"), ("training.learning_rate", "1e-2"),
                      ("training.batch_size", "2"), ("data.max_length", "64"), ("training.warmup_ratio", "0")):
        type_into(qtbot, win.form, key, text)
    assert win.form.valid, win.form.problems()

    with qtbot.waitSignal(win.data_inspected, timeout=60_000):
        win.data.add_files([str(facts_file)])
    assert "prompt-completion" in win.data.detected_label.text()
    assert "Paris" in win.data.preview.toPlainText()
    assert "rgba(46,157,78" in win.data.preview.toHtml() or "background-color" in win.data.preview.toHtml()
    assert sum(win.data.bars.opts["height"]) == len(open(facts_file).read().splitlines())

    win.training.start_button.click()
    assert win.training.running
    qtbot.waitUntil(lambda: win.training.plots.points("loss") >= 3, timeout=120_000)

    win.training.pause_button.click()
    qtbot.waitUntil(lambda: win.training.paused, timeout=60_000)
    assert win.training.pause_button.text() == "Resume"
    paused_at = win.training.plots.points("loss")
    win.training.pause_button.click()
    qtbot.waitUntil(lambda: not win.training.paused and win.training.plots.points("loss") > paused_at + 1,
                    timeout=60_000)

    with qtbot.waitSignal(win.training_done, timeout=120_000) as done:
        win.training.stop_button.click()
    result = done.args[0]
    qtbot.waitUntil(lambda: not win.training.running)
    assert result.status == "stopped"
    assert win.training.start_button.isEnabled()
    adapter = Path(result.adapter_dir)
    assert (adapter / "adapter_model.safetensors").is_file()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(win.store.config.model.source)
    peft_model = PeftModel.from_pretrained(base, str(adapter))
    peft_config = peft_model.peft_config["default"]
    assert peft_config.r == 4
    assert sorted(peft_config.target_modules) == sorted(win.store.config.lora.target_modules)
    lora_a = [n for n, _ in peft_model.named_parameters() if "lora_A" in n]
    assert len(lora_a) == len(win.store.config.lora.target_modules)
