"""The Export dialog's GGUF adapter for a chosen GGUF base (the Base GGUF field), the Ollama Modelfile for an adapter
(FROM the base GGUF, ADAPTER the exported file), and the note on merging an adapter trained on a quantized base,
with the merge itself checked against PEFT's merge into the unquantized base."""

from pathlib import Path

import torch
from gguf import GGUFReader
from safetensors import safe_open
from safetensors.torch import load_file

from trained_runs import qlora_run, trained_runs
from workbench.core.gguf_export import export_gguf


def _base_gguf(tmp_path_factory, model: Path) -> Path:
    """The tiny llama itself as a GGUF file: the base a user would run llama.cpp or Ollama on."""
    out = tmp_path_factory.mktemp("base-gguf") / "gguf"
    return export_gguf(model, None, out, type_name="f32").gguf


def _start(dialog, qtbot, mode: str, out: Path, **fields) -> dict:
    dialog.mode_buttons[mode].click()
    for edit, text in fields.items():
        getattr(dialog, edit).setText(str(text))
    dialog.out_edit.setText(str(out))
    qtbot.waitUntil(lambda: ".gguf:" in dialog.size_label.text(), timeout=60_000)
    with qtbot.waitSignal(dialog.ended, timeout=120_000):
        dialog.start_button.click()
    return dialog


def _lora_tensor_count(adapter: Path) -> int:
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        return sum("lora_A" in k for k in f.keys())


def test_ollama_modelfile_for_an_adapter_names_the_base_gguf(window, qtbot, tmp_path, tmp_path_factory, tiny_model_dir):
    runs = trained_runs(tmp_path_factory, tiny_model_dir)
    adapter = runs["done"] / "adapter"
    base_gguf = _base_gguf(tmp_path_factory, runs["model"])
    dialog = window.open_export(str(adapter))
    assert not dialog.form.isRowVisible(dialog.base_gguf_row), "only the adapter choices need a GGUF base"
    dialog.mode_buttons["ollama_adapter"].click()
    assert dialog.form.isRowVisible(dialog.base_gguf_row)
    assert dialog.out_edit.text() == str(runs["done"] / "ollama-adapter"), "the destination follows the choice"
    assert [dialog.type_combo.itemData(i) for i in range(dialog.type_combo.count())] == ["f32", "f16", "bf16"]

    _start(dialog, qtbot, "ollama_adapter", tmp_path / "ollama", base_gguf_edit=base_gguf)
    folder = tmp_path / "ollama"
    assert {"Modelfile", "adapter-F32.gguf"} <= {p.name for p in folder.iterdir()}
    modelfile = (folder / "Modelfile").read_text()
    assert f"FROM {base_gguf.resolve()}" in modelfile and "ADAPTER ./adapter-F32.gguf" in modelfile
    assert "TEMPLATE" in modelfile, "the chat template, translated for Ollama"
    reader = GGUFReader(folder / "adapter-F32.gguf")
    assert sum(t.name.endswith(".lora_b") for t in reader.tensors) == _lora_tensor_count(adapter)
    assert "GGUF adapter and Ollama Modelfile written to" in dialog.status.text()
    assert dialog.next_steps.toPlainText().splitlines()[0] == f"ollama create ollama -f {folder / 'Modelfile'}"

    # The adapter alone, checked against the same base GGUF: the llama.cpp command names both files.
    _start(dialog, qtbot, "gguf_adapter", tmp_path / "lora")
    assert dialog.next_steps.toPlainText() == f"llama-cli -m {base_gguf} --lora {tmp_path / 'lora' / 'adapter-F32.gguf'}"


def test_ollama_for_an_adapter_without_a_gguf_base_is_refused_and_writes_nothing(window, qtbot, tmp_path,
                                                                                 tmp_path_factory, tiny_model_dir):
    runs = trained_runs(tmp_path_factory, tiny_model_dir)
    dialog = window.open_export(str(runs["done"] / "adapter"))
    dialog.mode_buttons["ollama_adapter"].click()
    dialog.out_edit.setText(str(tmp_path / "ollama"))
    qtbot.waitUntil(lambda: ".gguf:" in dialog.size_label.text(), timeout=60_000)  # the plan: no GGUF origin
    dialog.start_button.click()
    assert not dialog.running and "Choose the Base GGUF" in dialog.status.text(), "refused before any job starts"
    assert not (tmp_path / "ollama").exists()
    assert "the base model's .gguf file" in dialog.base_gguf_edit.placeholderText()

    # Should the plan not have answered yet, the core refuses it the same way, before writing.
    dialog._gguf_origin = None
    with qtbot.waitSignal(dialog.ended, timeout=120_000):
        dialog.start_button.click()
    assert "Failed" in dialog.status.text() and "needs the base model as a GGUF file" in dialog.status.text()
    assert "Traceback" not in dialog.status.text()
    assert not (tmp_path / "ollama").exists()

    dialog.base_gguf_edit.setText(str(tmp_path / "elsewhere" / "missing.gguf"))
    with qtbot.waitSignal(dialog.ended, timeout=120_000):
        dialog.start_button.click()
    assert "missing.gguf" in dialog.status.text() and not (tmp_path / "ollama").exists()


def test_merging_an_adapter_trained_on_nf4_says_so_and_merges_the_original_weights(window, qtbot, tmp_path,
                                                                                   tmp_path_factory, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = qlora_run(tmp_path_factory, tiny_model_dir)
    dialog = window.open_export(str(run["adapter"]))
    assert dialog.mode() == "merge"
    assert not dialog.quantized_note.isHidden()
    assert "trained on a base quantized to nf4" in dialog.quantized_note.text()
    assert "original, unquantized weights" in dialog.quantized_note.text()
    dialog.mode_buttons["gguf_adapter"].click()
    assert dialog.quantized_note.isHidden(), "nothing is merged into the base there"
    dialog.mode_buttons["merge"].click()

    dialog.out_edit.setText(str(tmp_path / "merged"))
    with qtbot.waitSignal(dialog.done_ok, timeout=120_000):
        dialog.start_button.click()
    ours = load_file(tmp_path / "merged" / "model.safetensors")
    original = AutoModelForCausalLM.from_pretrained(run["model"], dtype=torch.float32)
    expected = PeftModel.from_pretrained(original, str(run["adapter"])).merge_and_unload().state_dict()
    for key, tensor in ours.items():
        assert tensor.dtype == torch.float32, key
        torch.testing.assert_close(tensor, expected[key], rtol=0, atol=1e-6, msg=key)

    runs = trained_runs(tmp_path_factory, tiny_model_dir)
    dialog.adapter_edit.setText(str(runs["done"] / "adapter"))
    assert dialog.quantized_note.isHidden(), "an unquantized run: no note"


def test_the_default_base_gguf_of_a_base_converted_from_gguf_is_shown(window, qtbot, tmp_path, tmp_path_factory,
                                                                      tiny_model_dir):
    """A base opened from a GGUF file (converted by core.gguf_import, as the built-in model is): its GGUF is the
    adapter's default base, named in the field's placeholder and used by the export without typing it."""
    from workbench.core.gguf_export.planning import plan_gguf
    from workbench.core.gguf_import import convert_gguf

    runs = trained_runs(tmp_path_factory, tiny_model_dir)
    origin = _base_gguf(tmp_path_factory, runs["model"])
    converted = convert_gguf(origin, cache_dir=tmp_path / "cache")
    plan = plan_gguf("ollama_adapter", str(runs["done"] / "adapter"), str(converted), "f32")
    assert plan["gguf_origin"] == str(origin) and plan["file_name"] == "adapter-F32.gguf"

    dialog = window.open_export(str(runs["done"] / "adapter"))
    dialog.base_edit.setText(str(converted))
    _start(dialog, qtbot, "ollama_adapter", tmp_path / "ollama")
    assert f"default: {origin}" == dialog.base_gguf_edit.placeholderText()
    assert f"FROM {origin.resolve()}" in (tmp_path / "ollama" / "Modelfile").read_text()
