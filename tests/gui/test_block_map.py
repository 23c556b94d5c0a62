"""The block map: rows read from the tree, click / drag / row and column toggles, one selection shared with the
tree (both ways), and a choice made on the map that trains exactly as many parameters as PEFT reports."""

import re

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QColor

from workbench.core.layers import count_selection, lora_config_from_selection, resolve_selection
from workbench.core.models import open_overview
from workbench.gui.widgets.block_map import BlockMap
from workbench.gui.widgets.layer_tree_model import COL_NAME, COL_RANK, LayerTreeModel

LLAMA_KINDS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj"]


@pytest.fixture(scope="module")
def tree(tiny_model_dir):
    return open_overview(str(tiny_model_dir("llama"))).tree


def bound(qtbot, tree):
    model = LayerTreeModel(tree, rank=8, alpha=16)
    block_map = BlockMap()
    qtbot.addWidget(block_map)
    block_map.set_selection(model.selection)
    block_map.resize(600, block_map.sizeHint().height())
    block_map.show()
    qtbot.waitExposed(block_map)
    return model, block_map


def centre(block_map, row, column) -> QPoint:
    return block_map.cell_rect(row, column).center()


def colour_at(block_map, row, column) -> QColor:
    """The fill of a cell, beside the rank written in its middle."""
    return block_map.grab().toImage().pixelColor(block_map.cell_rect(row, column).topLeft() + QPoint(1, 1))


def test_rows_are_the_architectures_module_kinds(qtbot, tree, tiny_model_dir):
    model, block_map = bound(qtbot, tree)
    assert block_map.grid.kinds == LLAMA_KINDS
    assert block_map.grid.labels == ["q", "k", "v", "o", "gate", "up", "down"]
    assert block_map.grid.blocks == list(range(tree.num_blocks))
    gpt2 = open_overview(str(tiny_model_dir("gpt2"))).tree
    gpt2_model = LayerTreeModel(gpt2)  # kept: its selection is its child and goes with it
    block_map.set_selection(gpt2_model.selection)
    assert block_map.grid.kinds == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert block_map.grid.labels == ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]  # unique, short where possible


def test_click_drag_and_toggles_edit_the_selection_the_tree_shows(qtbot, tree):
    model, block_map = bound(qtbot, tree)
    grid = block_map.grid
    edits = []
    model.selection.edited.connect(lambda: edits.append(1))
    qtbot.mouseClick(block_map, Qt.MouseButton.LeftButton, pos=centre(block_map, 0, 1))
    q1 = grid.names[0][1]
    assert model.selected == {q1} and edits == [1]
    assert model.data(model.index_of(q1), Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Checked
    assert model.data(model.index_of(f"{tree.blocks_prefix}.1"), Qt.ItemDataRole.CheckStateRole) == \
        Qt.CheckState.PartiallyChecked

    # Drag down the first block's column from k to up: every cell crossed is painted on.
    qtbot.mousePress(block_map, Qt.MouseButton.LeftButton, pos=centre(block_map, 1, 0))
    for row in range(2, 6):
        qtbot.mouseMove(block_map, centre(block_map, row, 0))
    qtbot.mouseRelease(block_map, Qt.MouseButton.LeftButton, pos=centre(block_map, 5, 0))
    assert model.selected == {q1, *(grid.names[r][0] for r in range(1, 6))}

    qtbot.mouseClick(block_map, Qt.MouseButton.LeftButton, pos=QPoint(4, centre(block_map, 6, 0).y()))  # "down"
    assert set(grid.row(6)) <= model.selected
    qtbot.mouseClick(block_map, Qt.MouseButton.LeftButton, pos=QPoint(centre(block_map, 0, 1).x(), 5))  # block 1
    assert set(grid.column(1)) <= model.selected, "block 1 was partly on: the click turns it all on"
    qtbot.mouseClick(block_map, Qt.MouseButton.LeftButton, pos=QPoint(centre(block_map, 0, 1).x(), 5))
    assert not set(grid.column(1)) & model.selected, "… and a second click all off"


def test_the_tree_and_the_map_show_one_selection(qtbot, tree):
    model, block_map = bound(qtbot, tree)
    name = block_map.grid.names[2][1]  # v_proj of block 1
    off = colour_at(block_map, 2, 1)
    model.setData(model.index_of(name), Qt.CheckState.Checked.value, Qt.ItemDataRole.CheckStateRole)  # a tick
    on = colour_at(block_map, 2, 1)
    assert on != off and on.blue() > on.red(), "the map shows the tree's tick"
    model.setData(model.index_of(name, COL_RANK), "32", Qt.ItemDataRole.EditRole)
    assert model.selection.rank_of(name) == 32 and "rank 32" in block_map.card(name)
    model.setData(model.index_of(name, COL_NAME), Qt.CheckState.Unchecked.value, Qt.ItemDataRole.CheckStateRole)
    assert colour_at(block_map, 2, 1) == off


def test_a_load_is_not_an_edit(qtbot, tree):
    """What replaced the window's ``_syncing_selection`` flag: showing the configuration's choice (or new global
    defaults) changes the views but announces no edit, so nothing is written back."""
    model, _ = bound(qtbot, tree)
    edits, changes = [], []
    model.selection.edited.connect(lambda: edits.append(1))
    model.selection.changed.connect(lambda *a: changes.append(a))
    model.selection.load(tree.preset("attention-qv"), {tree.preset("attention-qv")[0]: 4}, {})
    model.set_defaults(32, 64)
    assert changes and not edits
    model.replace_selection([])
    assert edits == [1]


def test_the_map_and_the_window_agree_with_peft_on_trainable_parameters(opened, qtbot, tiny_model_dir):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    window = opened
    block_map = window.layers.block_map
    block_map.resize(800, block_map.sizeHint().height())
    window.show()
    qtbot.waitExposed(block_map)
    window.layers.model.replace_selection([])
    grid = block_map.grid
    qtbot.mouseClick(block_map, Qt.MouseButton.LeftButton, pos=QPoint(4, centre(block_map, 0, 0).y()))  # q, all
    qtbot.mouseClick(block_map, Qt.MouseButton.LeftButton, pos=centre(block_map, 6, 1))  # down of block 1
    qtbot.mouseClick(block_map, Qt.MouseButton.LeftButton, pos=centre(block_map, 4, 0))  # gate of block 0
    window.layers.model.setData(window.layers.model.index_of(grid.names[6][1], COL_RANK), "4",
                                Qt.ItemDataRole.EditRole)  # an override from the tree
    config = window.store.config
    expected = sorted([*grid.row(0), grid.names[6][1], grid.names[4][0]], key=window.overview.tree._order)
    assert config.lora.target_modules == expected and config.lora.rank_pattern == {grid.names[6][1]: 4}

    sel = resolve_selection(window.overview.tree, config.lora)
    counted = count_selection(window.overview.tree, sel).trainable_params
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    peft_model = get_peft_model(model, lora_config_from_selection(sel, config.lora))
    trainable, _total = peft_model.get_nb_trainable_parameters()
    assert counted == trainable
    assert sum(window.layers.model.selection.lora_params(n) for n in expected) == trainable
    qtbot.waitUntil(lambda: f"{trainable:,} trainable" in window.layers.summary.trainable.toolTip())
    caption = re.sub("<[^>]+>", "", window.layers.map_caption.text())
    assert f"{len(expected)} of {len(LLAMA_KINDS) * grid.blocks.__len__()} adapted" in caption


def test_the_map_shows_what_an_inspected_adapter_changed(qtbot, tree):
    from workbench.core.adapter_report import AdapterReport, ModuleStats

    model, block_map = bound(qtbot, tree)
    grid = block_map.grid
    small, large = grid.names[0][0], grid.names[2][1]
    model.replace_selection([small, large])

    def stats(name: str, delta: float) -> ModuleStats:
        block = int(name.split(".")[2])
        return ModuleStats(name=name, stack=tree.blocks_prefix, block=block, kind=name.split(".", 3)[3], rank=8,
                           scale=2.0, delta_norm=delta, weight_norm=10.0, singular_values=(delta,), effective_rank=1)

    report = AdapterReport(adapter="/a", base="/b", method="LoRA", modules=[stats(small, 0.1), stats(large, 2.0)])
    ranks = colour_at(block_map, 0, 0), colour_at(block_map, 2, 1)
    assert ranks[0] == ranks[1], "the same rank: the same shade"
    assert block_map.show_change(report) == 2
    block_map.set_colour_by_change(True)
    changed = colour_at(block_map, 0, 0), colour_at(block_map, 2, 1)
    assert changed[0] != changed[1] and changed[0] != ranks[0], "coloured by ‖ΔW‖/‖W‖ now"
    assert "‖ΔW‖ / ‖W‖ of the inspected adapter: 0.2" in block_map.card(large)
    other = AdapterReport(adapter="/a", base="/b", method="LoRA", modules=[
        ModuleStats(name="transformer.h.0.attn.c_attn", stack="transformer.h", block=0, kind="attn.c_attn", rank=8,
                    scale=2.0, delta_norm=1.0, weight_norm=1.0, singular_values=(1.0,), effective_rank=1)])
    assert block_map.show_change(other) == 0 and not block_map.colour_by_change, "another model's adapter"
    assert colour_at(block_map, 0, 0) == ranks[0]


def test_the_drawn_cells_are_kept_until_what_they_show_changes_and_then_agree_with_the_tree(qtbot, tree):
    model, block_map = bound(qtbot, tree)
    grid = block_map.grid
    colour_at(block_map, 0, 0)
    drawn = block_map._drawn
    assert drawn is not None
    colour_at(block_map, 1, 0)  # a repaint with nothing changed copies the cells drawn before
    assert block_map._drawn is drawn
    # A tick in the tree (the block map is told by the shared selection), then every cell against the tree.
    model.setData(model.index_of(tree.blocks_prefix + ".1"), Qt.CheckState.Checked.value, Qt.ItemDataRole.CheckStateRole)
    image = block_map.grab().toImage()
    assert block_map._drawn is not drawn
    for r, row in enumerate(grid.names):
        for c, name in enumerate(row):
            colour = image.pixelColor(block_map.cell_rect(r, c).topLeft() + QPoint(1, 1))
            ticked = model.check_state(name) == Qt.CheckState.Checked
            assert (colour.blue() > colour.red() + 60) == ticked, (name, colour.name(), ticked)
    # A rank override lightens the other cells (the shade is relative to the highest rank): drawn again.
    name = grid.names[0][1]
    before = colour_at(block_map, 1, 1)
    model.setData(model.index_of(name, COL_RANK), "64", Qt.ItemDataRole.EditRole)
    assert colour_at(block_map, 1, 1) != before
    # A new size: the cells are laid out and drawn again for it.
    drawn = block_map._drawn
    block_map.resize(900, block_map.height())
    colour_at(block_map, 0, 0)
    assert block_map._drawn is not drawn and block_map._drawn.width() >= 900
