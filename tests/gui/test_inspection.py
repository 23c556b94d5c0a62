"""Adapter inspection from the Runs tab: heatmap over blocks × module kinds and a table per module."""

import numpy as np

from trained_runs import trained_runs


def test_inspect_a_run_adapter(window, qtbot, tmp_path_factory, tiny_model_dir):
    runs = trained_runs(tmp_path_factory, tiny_model_dir)
    panel = window.inspection
    with qtbot.waitSignal(window.inspected, timeout=60_000) as got:
        window.inspect_from_runs(str(runs["done"] / "adapter"))
    report = got.args[0]
    assert window.tabs.currentWidget() is panel
    assert panel.base_edit.text() == str(runs["model"])
    assert panel.cells.shape == (2, 7)  # 2 blocks × 7 linear kinds (q k v o gate up down)
    assert np.all(np.isfinite(panel.cells)) and np.all(panel.cells > 0)
    expected = np.array(report.heatmap("relative_norm").values, dtype=float)
    assert np.allclose(panel.cells, expected)
    assert panel.table.rowCount() == 14
    panel.metric_combo.setCurrentIndex(2)  # effective rank
    assert panel.cells.max() <= 8


def test_inspect_without_base_and_a_bad_folder(window, qtbot, tmp_path, tmp_path_factory, tiny_model_dir):
    runs = trained_runs(tmp_path_factory, tiny_model_dir)
    panel = window.inspection
    panel.set_paths(str(runs["stopped"] / "adapter"))
    panel.base_edit.clear()
    with qtbot.waitSignal(window.inspected, timeout=60_000):
        panel.inspect_button.click()
    assert panel.metric_combo.currentData() == "delta_norm"
    assert np.all(panel.cells > 0)
    panel.set_paths(str(tmp_path))
    with qtbot.waitSignal(window.inspect_failed, timeout=60_000):
        panel.inspect_button.click()
    assert panel.inspect_button.isEnabled()
