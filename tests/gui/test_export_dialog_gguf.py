"""GGUF, GGUF adapter and Ollama export from the window's Export dialog, on the tiny llama's trained run: the files
load back with gguf's own reader with every tensor, the size shown first is the file's, a cancel leaves nothing,
and an architecture without a GGUF mapping disables the three choices with the reason."""

import json
import threading

from gguf import GGUFReader
from safetensors import safe_open

from trained_runs import trained_runs
from workbench.core.gguf_export.types import llama_cpp_available
from workbench.gui import workers


def _choose(dialog, qtbot, mode: str, type_name: str, out) -> str:
    """Pick the choice and type as a user would; returns the planned size text once it is shown."""
    dialog.mode_buttons[mode].click()
    dialog.type_combo.setCurrentIndex(dialog.type_combo.findData(type_name))
    qtbot.waitUntil(lambda: ".gguf:" in dialog.size_label.text() and
                    type_name.upper() in dialog.size_label.text(), timeout=60_000)
    dialog.out_edit.setText(str(out))
    return dialog.size_label.text()


def _export(dialog, qtbot) -> dict:
    with qtbot.waitSignal(dialog.done_ok, timeout=120_000) as blocker:
        dialog.start_button.click()
    qtbot.waitUntil(lambda: not dialog.running)
    return blocker.args[0]


def _safetensors_keys(folder) -> list[str]:
    keys = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            keys += list(f.keys())
    return keys


def test_gguf_merged_ollama_and_adapter_exports_from_the_dialog(window, qtbot, tmp_path, tmp_path_factory,
                                                                 tiny_model_dir):
    runs = trained_runs(tmp_path_factory, tiny_model_dir)
    adapter = runs["done"] / "adapter"
    dialog = window.open_export(str(adapter))

    # The type choice: the gguf package's four types always; llama.cpp's k-quants only with llama-cpp-python.
    dialog.mode_buttons["gguf"].click()
    assert dialog.out_edit.text() == str(runs["done"] / "gguf"), "the destination follows the choice"
    names = [dialog.type_combo.itemData(i) for i in range(dialog.type_combo.count())]
    assert names[:4] == ["f32", "f16", "bf16", "q8_0"] and "q4_k_m" in names
    q4 = dialog.type_combo.model().item(names.index("q4_k_m"))
    assert q4.isEnabled() == llama_cpp_available()
    if not llama_cpp_available():
        assert "llama-cpp-python" in dialog.type_note.text() and "not installed" in dialog.type_note.text()

    # Merged GGUF, F16: the size shown first is the file's size; every checkpoint tensor is in the file.
    planned = _choose(dialog, qtbot, "gguf", "f16", tmp_path / "gguf")
    result = _export(dialog, qtbot)
    gguf_file = tmp_path / "gguf" / "model-F16.gguf"
    assert result["file"] == gguf_file and gguf_file.is_file()
    # The GGUF file and its model card (README.md with the training curves, core/model_card.py).
    assert sorted(p.name for p in (tmp_path / "gguf").iterdir()) == ["README.md", "model-F16.gguf",
                                                                       "training_curves.png"]
    assert str(gguf_file) in dialog.status.text() and "GGUF model written to" in dialog.status.text()
    size = gguf_file.stat().st_size
    from workbench.gui.widgets.summary_bar import human_bytes
    assert f"model-F16.gguf: {human_bytes(size)}" in planned
    reader = GGUFReader(gguf_file)
    base_keys = _safetensors_keys(runs["model"])
    assert len(reader.tensors) == len(base_keys), "one GGUF tensor per weight of the base"
    assert {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2} == {"F16"}
    assert not dialog.next_box.isVisible(), "no command to copy for a plain GGUF"

    # Ollama: the merged GGUF with a Modelfile, and the command to copy names the Modelfile's full path.
    _choose(dialog, qtbot, "ollama", "q8_0", tmp_path / "for-ollama")
    _export(dialog, qtbot)
    folder = tmp_path / "for-ollama"
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "README.md", "model-Q8_0.gguf", "training_curves.png"]
    assert "FROM ./model-Q8_0.gguf" in (folder / "Modelfile").read_text()
    assert dialog.next_box.isVisible()
    assert dialog.next_steps.toPlainText().splitlines()[0] == f"ollama create for-ollama -f {folder / 'Modelfile'}"
    assert len(GGUFReader(folder / "model-Q8_0.gguf").tensors) == len(base_keys)

    # The adapter in llama.cpp's format: lora_a and lora_b for every adapted module, alpha in the metadata.
    _choose(dialog, qtbot, "gguf_adapter", "f32", tmp_path / "lora")
    assert [dialog.type_combo.itemData(i) for i in range(dialog.type_combo.count())] == ["f32", "f16", "bf16"]
    _export(dialog, qtbot)
    lora_file = tmp_path / "lora" / "adapter-F32.gguf"
    reader = GGUFReader(lora_file)
    adapted = [k for k in _safetensors_keys(adapter) if "lora_A" in k]
    assert len(reader.tensors) == 2 * len(adapted)
    assert sum(t.name.endswith(".lora_a") for t in reader.tensors) == len(adapted)
    field = reader.get_field("general.type")
    assert bytes(field.parts[field.data[0]]).decode() == "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["lora_alpha"] == 16


def test_a_cancelled_gguf_export_leaves_nothing_not_even_its_temporary_folder(window, qtbot, tmp_path,
                                                                             tmp_path_factory, tiny_model_dir,
                                                                             monkeypatch):
    runs = trained_runs(tmp_path_factory, tiny_model_dir)
    # Hold the worker after its first progress report until Cancel has arrived (a condition, not a sleep), so
    # the stop comes while the file is half-written inside the core's temporary folder.
    cancelled, seen_partial = threading.Event(), []
    original = workers.ExportWorker.emit
    out = tmp_path / "out" / "model"

    def held_emit(self, event):
        original(self, event)
        if getattr(event, "task", "") == "gguf" and 0 < event.done < event.total and not cancelled.is_set():
            seen_partial.extend(p.name for p in out.parent.iterdir())
            cancelled.wait(30)

    monkeypatch.setattr(workers.ExportWorker, "emit", held_emit)
    dialog = window.open_export(str(runs["done"] / "adapter"))
    out.parent.mkdir()
    _choose(dialog, qtbot, "gguf", "f32", out)
    dialog.start_button.click()
    qtbot.waitUntil(lambda: "elapsed" in dialog.status.text(), timeout=60_000)
    dialog.cancel_button.click()
    cancelled.set()
    with qtbot.waitSignal(dialog.ended, timeout=60_000):
        pass
    assert seen_partial == [".tmp-model.partial"], "the core writes into a temporary folder"
    assert "Cancelled" in dialog.status.text()
    assert list(out.parent.iterdir()) == [], "no output and no partial folder"


def test_an_architecture_without_a_gguf_mapping_disables_the_gguf_choices(window, qtbot, tmp_path, tiny_model_dir):
    dialog = window.open_export(str(tmp_path / "some-run" / "adapter"))
    dialog.base_edit.setText(str(tiny_model_dir("gpt2")))
    dialog.mode_buttons["gguf"].click()
    qtbot.waitUntil(lambda: not dialog.mode_buttons["gguf"].isEnabled(), timeout=60_000)
    for key in ("gguf", "gguf_adapter", "ollama"):
        assert not dialog.mode_buttons[key].isEnabled()
        assert "'gpt2' has no GGUF mapping" in dialog.mode_buttons[key].toolTip()
    assert dialog.mode() == "merge"
    assert "not available for this base model" in dialog.status.text()
