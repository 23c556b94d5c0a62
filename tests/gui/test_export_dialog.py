"""Export and merge from the window: a merged model that transformers loads, with logits equal to base +
adapter; a portable adapter; a cancelled merge that leaves nothing behind."""

import threading

import torch

from trained_runs import trained_runs
from workbench.gui import workers


def test_merge_from_the_window_gives_base_plus_adapter(window, qtbot, tmp_path, tmp_path_factory, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    runs = trained_runs(tmp_path_factory, tiny_model_dir)
    adapter = runs["done"] / "adapter"
    dialog = window.open_export(str(adapter))
    assert dialog.base_edit.text() == str(runs["model"])  # from the run's run.toml
    assert dialog.mode() == "merge"
    dialog.out_edit.setText(str(tmp_path / "merged"))
    with qtbot.waitSignal(dialog.done_ok, timeout=60_000):
        dialog.start_button.click()
    qtbot.waitUntil(lambda: not dialog.running)
    assert "Merged model written to" in dialog.status.text()
    assert dialog.progress.value() == 1000

    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 120]])
    # Both forwards in float64 (the saved float32 weights convert exactly): what differs is then the merge's own
    # rounding, not the summation order of two float32 forwards, which moves logits of about 10 by up to 1.6e-5
    # (with one torch thread; 1.3e-5 with two) and put the comparison on the edge of its tolerance.
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").double().eval()
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(runs["model"]), adapter).double().eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, reference(ids).logits, atol=1e-5)

    dialog.mode_buttons["portable"].setChecked(True)
    assert not dialog.base_edit.isEnabled()
    dialog.out_edit.setText(str(tmp_path / "portable"))
    with qtbot.waitSignal(dialog.done_ok, timeout=60_000):
        dialog.start_button.click()
    assert (tmp_path / "portable" / "adapter_model.safetensors").is_file()
    qtbot.waitUntil(lambda: not dialog.running)

    dialog.out_edit.setText(str(tmp_path / "portable"))  # exists now: refused before any job starts
    dialog.start_button.click()
    assert "already exists" in dialog.status.text() and not dialog.running


def test_cancelled_merge_leaves_no_output(window, qtbot, tmp_path, tmp_path_factory, tiny_model_dir, monkeypatch):
    runs = trained_runs(tmp_path_factory, tiny_model_dir)
    # The tiny merge takes milliseconds; hold the worker after its first progress report until the user's
    # Cancel has arrived, so the test cancels mid-merge every time (a condition, not a sleep).
    cancelled = threading.Event()
    original = workers.ExportWorker.emit

    def held_emit(self, event):
        original(self, event)
        if getattr(event, "done", 0) > 0 and not cancelled.is_set():
            assert self._control is not None
            cancelled.wait(30)

    monkeypatch.setattr(workers.ExportWorker, "emit", held_emit)
    dialog = window.open_export(str(runs["done"] / "adapter"))
    out = tmp_path / "out" / "merged"
    out.parent.mkdir()
    dialog.out_edit.setText(str(out))
    dialog.start_button.click()
    qtbot.waitUntil(lambda: "elapsed" in dialog.status.text(), timeout=60_000)  # a progress report arrived
    assert dialog.cancel_button.isEnabled()
    dialog.cancel_button.click()
    cancelled.set()
    with qtbot.waitSignal(dialog.ended, timeout=60_000):
        pass
    assert "Cancelled" in dialog.status.text()
    assert list(out.parent.iterdir()) == [], "no output and no partial folder"


def test_progress_of_a_merge_over_2_gib_reaches_the_dialog(qtbot):
    """Byte counts of a model of several GB cross the thread boundary intact (a C++ int would overflow)."""
    from workbench.core.events import Progress
    from workbench.gui.widgets.export_dialog import ExportDialog

    dialog = ExportDialog()
    qtbot.addWidget(dialog)
    worker = workers.ExportWorker("merge", "a", "b")
    worker.progress.connect(dialog._progress)
    worker.emit(Progress("merge", 3 << 30, 4 << 30, detail="model-00002-of-00004.safetensors"))  # job thread's side
    worker.deliver()  # the GUI thread's side: emits what the job posted
    assert dialog.progress.value() == 750
    assert dialog.progress.format().startswith("3.00 GiB of 4.00 GiB")


def test_the_destination_follows_the_choice_until_the_user_picks_one(qtbot, tmp_path):
    from workbench.gui.widgets.export_dialog import ExportDialog

    dialog = ExportDialog()
    qtbot.addWidget(dialog)
    assert dialog.out_edit.text() == ""
    dialog.adapter_edit.setText(str(tmp_path / "run" / "adapter"))  # chosen after the dialog opened
    assert dialog.out_edit.text() == str(tmp_path / "run" / "merged")
    dialog.mode_buttons["portable"].setChecked(True)
    assert dialog.out_edit.text() == str(tmp_path / "run" / "portable"), "not …/merged for a portable adapter"
    dialog.mode_buttons["peft"].setChecked(True)
    assert dialog.out_edit.text() == str(tmp_path / "run" / "exported")
    dialog.out_edit.setText(str(tmp_path / "mine"))  # the user's own folder stays
    dialog.mode_buttons["merge"].setChecked(True)
    assert dialog.out_edit.text() == str(tmp_path / "mine")


def test_long_paths_are_elided_in_the_middle(qtbot):
    from workbench.gui.widgets.export_dialog import ExportDialog

    long_path = "/home/someone/projects/" + "very-long-folder-name/" * 12 + "run-0312/adapter"
    dialog = ExportDialog(adapter=long_path)
    qtbot.addWidget(dialog)
    dialog.resize(640, 400)
    dialog.show()
    qtbot.waitExposed(dialog)
    edit = dialog.out_edit
    shown = edit.displayed_text()
    assert shown != edit.text() and "…" in shown
    assert shown.startswith("/home/some") and shown.endswith("run-0312/merged"), shown
    assert edit.toolTip() == edit.text()
    edit.grab()  # paints the elided text without error
    edit.setFocus()
    qtbot.waitUntil(edit.hasFocus)
    assert edit.displayed_text() == edit.text(), "while editing, the whole path"
