"""The layer tree's Qt model: Qt's own model checker, tristate propagation both ways, overrides."""

import pytest
from PySide6.QtCore import Qt

from workbench.core.config import LoraSettings
from workbench.core.layers import count_selection, resolve_selection
from workbench.core.models import open_overview
from workbench.gui.widgets.layer_tree_model import COL_ALPHA, COL_LORA, COL_NAME, COL_RANK, LayerTreeModel


@pytest.fixture(scope="module")
def tree(tiny_model_dir):
    return open_overview(str(tiny_model_dir("llama"))).tree


def test_passes_qt_model_tester(qtmodeltester, tree):
    model = LayerTreeModel(tree)
    model.replace_selection(tree.preset("attention-qv"))
    qtmodeltester.check(model, force_py=True)
    qtmodeltester.check(model)  # Qt's C++ QAbstractItemModelTester too


def test_checking_a_block_checks_all_its_modules_and_partial_shows(qtbot, tree):
    model = LayerTreeModel(tree)
    block = f"{tree.blocks_prefix}.1"
    block_index = model.index_of(block)
    adaptable = [n.name for n in tree.nodes[block].walk() if n.adaptable]
    assert model.data(block_index, Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Unchecked

    with qtbot.waitSignal(model.dataChanged):
        assert model.setData(block_index, Qt.CheckState.Checked.value, Qt.ItemDataRole.CheckStateRole)
    assert model.selected == set(adaptable)
    for name in adaptable:
        assert model.data(model.index_of(name), Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Checked

    # One module off: the block and every ancestor show the partial state; the other block stays unchecked.
    model.setData(model.index_of(adaptable[0]), Qt.CheckState.Unchecked.value, Qt.ItemDataRole.CheckStateRole)
    assert model.data(block_index, Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.PartiallyChecked
    assert model.data(model.index_of(tree.blocks_prefix), Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.PartiallyChecked
    other = model.index_of(f"{tree.blocks_prefix}.0")
    assert model.data(other, Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Unchecked

    # A click on a partly checked block (the view sends Checked) completes it.
    model.setData(block_index, Qt.CheckState.Checked.value, Qt.ItemDataRole.CheckStateRole)
    assert model.data(block_index, Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Checked


def test_non_adaptable_rows_have_no_check_box(tree):
    model = LayerTreeModel(tree)
    norm = next(n.name for n in tree.nodes.values() if n.name and not n.adaptable and not n.children)
    index = model.index_of(norm)
    assert not model.flags(index) & Qt.ItemFlag.ItemIsUserCheckable
    assert model.data(index, Qt.ItemDataRole.CheckStateRole) is None


def test_rank_and_alpha_overrides_edit_in_place_and_count_like_the_core(tree):
    model = LayerTreeModel(tree, rank=8, alpha=16)
    targets = tree.preset("attention-qv")
    model.replace_selection(targets)
    q = targets[0]
    assert model.setData(model.index_of(q, COL_RANK), "32")
    assert model.setData(model.index_of(q, COL_ALPHA), "64")
    assert not model.setData(model.index_of(q, COL_RANK), "0"), "a rank of 0 is refused"
    assert not model.setData(model.index_of(q, COL_RANK), "abc")
    assert model.rank_overrides == {q: 32} and model.alpha_overrides == {q: 64.0}

    lora = LoraSettings(r=8, alpha=16, target_modules=targets, rank_pattern={q: 32}, alpha_pattern={q: 64.0})
    sel = resolve_selection(tree, lora)
    expected = count_selection(tree, sel).lora_params
    root_row = model.index(0, COL_LORA)  # the single top-level module holds everything
    assert root_row.data() == _human(expected)
    assert model.index_of(q, COL_LORA).data() == _human(tree.nodes[q].lora_params(32))

    # Clearing the cell goes back to the global rank.
    assert model.setData(model.index_of(q, COL_RANK), "")
    assert model.rank_overrides == {}
    assert model.index_of(q, COL_RANK).data() == "8"


def test_deselecting_drops_overrides_and_editing_needs_a_selected_module(tree):
    model = LayerTreeModel(tree)
    q = tree.preset("attention-qv")[0]
    assert not model.flags(model.index_of(q, COL_RANK)) & Qt.ItemFlag.ItemIsEditable
    model.set_selected([q], True)
    assert model.flags(model.index_of(q, COL_RANK)) & Qt.ItemFlag.ItemIsEditable
    model.setData(model.index_of(q, COL_RANK), "4")
    model.set_selected([q], False)
    assert model.rank_overrides == {}
    assert model.index_of(q, COL_NAME).data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Unchecked


def _human(n: int) -> str:
    from workbench.gui.widgets.layer_tree_model import human_count

    return human_count(n)
