"""The Runs tab on real run folders: statuses (finished, stopped, crashed), a command-line run that appears
and whose plot grows live, overlay of two runs, configuration difference, resume, delete."""

import subprocess
import sys

from PySide6.QtWidgets import QMessageBox

from trained_runs import make_config, trained_runs


def test_statuses_and_a_live_command_line_run_that_crashes(window, qtbot, tmp_path, tmp_path_factory, tiny_model_dir):
    runs = trained_runs(tmp_path_factory, tiny_model_dir)
    panel = window.runs
    window.store.update("output", runs_root=str(runs["root"]))
    window.tabs.setCurrentWidget(panel)
    cfg = make_config(runs["model"], tmp_path, max_steps=5000, learning_rate=1e-3)
    cfg.save(tmp_path / "run.toml")
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "train", str(tmp_path / "run.toml"),
                             "--run-dir", str(runs["root"] / "cli"), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        qtbot.waitUntil(lambda: panel.status_of("cli") == "running", timeout=90_000)
        panel.select("cli")
        qtbot.waitUntil(lambda: panel.plots.points("loss") >= 2, timeout=60_000)
        seen = panel.plots.points("loss")
        qtbot.waitUntil(lambda: panel.plots.points("loss") >= seen + 3, timeout=60_000)  # it grows live
        assert panel.curve_points(runs["root"] / "cli") == panel.plots.points("loss")
        assert not panel.delete_button.isEnabled(), "a running run cannot be deleted"
    finally:
        proc.kill()  # SIGKILL: the process reports nothing
        proc.wait()
    qtbot.waitUntil(lambda: panel.status_of("cli") == "crashed", timeout=30_000)
    assert panel.status_of("done") == "finished"
    assert panel.status_of("stopped") == "stopped"
    row = panel.row_of("done")
    assert panel.table.item(row, 4).text() == "30/30"
    assert panel.table.item(row, 2).text()  # the model's short name

    # Delete the crashed run, after confirming.
    panel.select("cli")
    qtbot.waitUntil(panel.delete_button.isEnabled)
    panel.confirm_delete()
    panel.delete_box.button(QMessageBox.StandardButton.Yes).click()
    assert panel.row_of("cli") == -1
    assert not (runs["root"] / "cli").exists()


def test_overlay_difference_and_resume(window, qtbot, tmp_path_factory, tiny_model_dir):
    runs = trained_runs(tmp_path_factory, tiny_model_dir)
    panel = window.runs
    window.store.update("output", runs_root=str(runs["root"]))
    window.tabs.setCurrentWidget(panel)
    qtbot.waitUntil(lambda: panel.row_of("done") >= 0 and panel.row_of("stopped") >= 0)
    panel.select("done", "stopped")
    assert len(panel.overlay_curves) == 2
    assert panel.views.currentWidget() is panel.overlay
    lengths = {p.name: len(c.getData()[0]) for p, c in panel.overlay_curves.items()}
    assert lengths == {"done": 30, "stopped": 3}
    assert len([i for i in panel.overlay.getPlotItem().listDataItems() if len(i.getData()[0])]) == 2
    keys = [panel.diff.item(r, 0).text() for r in range(panel.diff.rowCount())]
    assert "training.learning_rate" in keys and "training.save_steps" in keys
    assert "model.source" not in keys  # the same in both
    legend = [label.text for _sample, label in panel.overlay.getPlotItem().legend.items]
    assert sorted(legend) == ["done (learning_rate 0.01, save_steps —)",
                              "stopped (learning_rate 0.003, save_steps 2)"], "the legend says what differs"
    left = panel.overlay.getPlotItem().getAxis("left")
    assert left.labelString().count("×") == 0 and "training loss" in left.labelString()

    panel.select("stopped")
    assert panel.resume_button.isEnabled()
    with qtbot.waitSignal(window.training_done, timeout=120_000) as done:
        panel.resume_button.click()
    assert done.args[0].status == "finished" and done.args[0].final_step == 30
    loss = window.training.plots.series["loss"]
    assert loss.x.tolist() == list(range(1, 31)), "the resumed run is drawn with the steps before its stop"
    assert window.tabs.currentWidget() is window.training  # the resumed run is watched in the Train tab
    window.tabs.setCurrentWidget(panel)  # back in Runs, the list is refreshed on showing
    qtbot.waitUntil(lambda: panel.status_of("stopped") == "finished", timeout=10_000)


def test_a_selected_run_is_followed_by_one_tailer(window, qtbot, tmp_path_factory, tiny_model_dir, monkeypatch):
    from PySide6.QtCore import QItemSelectionModel

    from workbench.core import runs as core_runs

    runs = trained_runs(tmp_path_factory, tiny_model_dir)
    built = []
    real = core_runs.MetricsTailer

    def counting(path, *args, **kwargs):
        built.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(core_runs, "MetricsTailer", counting)
    panel = window.runs
    window.store.update("output", runs_root=str(runs["root"]))
    window.tabs.setCurrentWidget(panel)
    qtbot.waitUntil(lambda: panel.row_of("done") >= 0 and panel.row_of("stopped") >= 0)
    panel.select("done")
    assert built == ["done"], "a newly selected run gets one tailer"
    assert panel.plots.points("loss") == 30
    panel.select("done", "stopped")  # clears the selection first: both are followed anew
    assert built == ["done", "done", "stopped"]
    # Deselecting one run of a comparison: the other one's plots replay its file from the start.
    index = panel.table.model().index(panel.row_of("stopped"), 0)
    panel.table.selectionModel().select(index, QItemSelectionModel.SelectionFlag.Deselect
                                        | QItemSelectionModel.SelectionFlag.Rows)
    assert [s.name for s in panel.selected()] == ["done"]
    assert built == ["done", "done", "stopped", "done"]
    assert panel.plots.points("loss") == 30


def test_legend_labels_say_what_differs():
    from workbench.gui.widgets.runs_panel import distinct_parts, legend_labels

    names = ["smollm2-20261203-084512-facts", "smollm2-20261203-091007-facts"]
    assert distinct_parts(names) == ["084512", "091007"]
    assert distinct_parts(["run-1", "run-2"]) == ["1", "2"] and distinct_parts(["x", "y"]) == ["x", "y"]
    difference = [("lora.alpha", [16, 32]), ("lora.r", [8, 16]), ("output.name", names),
                  ("training.eval_steps", [None, 2]), ("training.learning_rate", [0.001, 0.0002])]
    assert legend_labels(names, difference) == ["084512 (r 8, learning_rate 0.001)",
                                                "091007 (r 16, learning_rate 0.0002)"], "rank and rate first"
    assert legend_labels(names, difference[3:], settings=3) == ["084512 (learning_rate 0.001, eval_steps None)",
                                                                "091007 (learning_rate 0.0002, eval_steps 2)"]
    assert legend_labels(["only"], []) == ["only"]
