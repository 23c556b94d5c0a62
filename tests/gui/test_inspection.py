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


def twelve_block_report():
    from workbench.core.adapter_report import AdapterReport, ModuleStats

    modules = [ModuleStats(name=f"model.layers.{b}.{kind}", stack="model.layers", block=b, kind=kind, rank=8,
                           scale=2.0, delta_norm=0.1 * (b + 1), weight_norm=10.0, singular_values=(0.1,),
                           effective_rank=1)
               for b in range(12) for kind in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")]
    return AdapterReport(adapter="/a", base="/b", method="LoRA", modules=modules)


def test_module_names_sort_naturally_and_every_kind_has_a_label(qtbot):
    from workbench.gui.widgets.inspection_panel import InspectionPanel

    panel = InspectionPanel()
    qtbot.addWidget(panel)
    panel.show_report(twelve_block_report())
    names = [panel.table.item(r, 0).text() for r in range(panel.table.rowCount())]
    blocks = [int(n.split(".")[2]) for n in names]
    assert blocks == sorted(blocks), "layers.10 sorts after layers.2, not after layers.1"
    assert names[:3] == ["model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj",
                         "model.layers.0.self_attn.v_proj"]
    panel.table.sortItems(0)  # a click on the header sorts the same way
    assert [panel.table.item(r, 0).text() for r in range(panel.table.rowCount())] == names
    ticks = panel.plot.getAxis("bottom")._tickLevels[0]
    assert [label for _x, label in ticks] == ["q", "v", "down"]
    assert panel.plot.getAxis("bottom").labelText == "module kind"
    assert [label for _x, label in panel.plot.getAxis("left")._tickLevels[0]] == [str(b) for b in range(12)]


def test_natural_key_and_short_labels():
    from workbench.gui.widgets.names import natural_key, short_kind_labels

    assert sorted(["layers.10.q", "layers.2.q", "layers.1.q"], key=natural_key) == \
        ["layers.1.q", "layers.2.q", "layers.10.q"]
    assert short_kind_labels(["self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"]) == ["q", "gate", "down"]
    assert short_kind_labels(["attn.c_attn", "attn.c_proj", "mlp.c_proj"]) == ["c_attn", "attn.c_proj", "mlp.c_proj"]
    assert short_kind_labels(["a.fc1", "b.fc2"]) == ["fc1", "fc2"]


def test_an_inspected_adapter_colours_the_block_map_of_its_model(opened, qtbot, tmp_path_factory, tiny_model_dir):
    runs = trained_runs(tmp_path_factory, tiny_model_dir)
    layers = opened.layers
    assert not layers.map_colour.isEnabled(), "nothing inspected yet"
    with qtbot.waitSignal(opened.inspected, timeout=60_000) as got:
        opened.inspect_from_runs(str(runs["done"] / "adapter"))
    report = got.args[0]
    assert layers.map_colour.isEnabled()
    layers.map_colour.setCurrentIndex(1)
    assert layers.block_map.colour_by_change
    expected = {m.name: m.relative_norm for m in report.modules}
    assert layers.block_map.change == expected and len(expected) == 14


def test_every_column_header_fits_and_the_colour_bar_reads_in_the_palette(qtbot):
    """At the window's width every column, the last ("Effective rank") too, is as wide as its header's text and
    all of them are in view; the colour bar's numbers are in the palette's text colour, not pyqtgraph's grey."""
    from PySide6.QtGui import QColor, QFontMetrics, QPalette

    from workbench.gui.widgets.inspection_panel import TABLE_COLUMNS, InspectionPanel

    panel = InspectionPanel()
    qtbot.addWidget(panel)
    panel.resize(1380, 800)
    panel.show()
    panel.show_report(twelve_block_report())
    header = panel.table.horizontalHeader()
    qtbot.waitUntil(lambda: header.sectionSize(0) > 0)
    metrics = QFontMetrics(header.font())
    for column, text in enumerate(TABLE_COLUMNS):
        assert header.sectionSize(column) >= metrics.horizontalAdvance(text), text
    assert header.length() <= panel.table.viewport().width(), "the last columns are scrolled out of view"
    assert not panel.table.horizontalScrollBar().isVisible()
    text = panel.plot_widget.palette().color(QPalette.ColorRole.Text)
    assert panel.colorbar.axis.textPen().color() == text and text != QColor(150, 150, 150)
