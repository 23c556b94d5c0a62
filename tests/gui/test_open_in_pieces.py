"""Opening a model shows its result in pieces, one per event-loop turn (model_controller.py): the tree's top rows,
its rows down to the first block, the block map, the summary. Each piece leaves the window consistent, the pieces
of an earlier model never land after a newer one, and the tools work once the last piece is in."""

import json

import pytest
from PySide6.QtCore import QPoint, Qt, QTimer

from workbench.core.layers import resolve_selection

# A config-only Llama (a skeleton: no weights) with more blocks than the tiny one, so the two trees differ.
SKELETON = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 12, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
    "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
}


@pytest.fixture
def skeleton_dir(tmp_path):
    folder = tmp_path / "llama-skeleton"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SKELETON))
    return folder


def open_and_settle(qtbot, window, source) -> None:
    with qtbot.waitSignal(window.model_opened, timeout=60_000):  # the controller's ``settled``: the last piece
        window.open_model(str(source))
    qtbot.waitUntil(lambda: window._jobs == 0, timeout=20_000)


def assert_shows(window, tree_model) -> None:
    """The tree, the block map, the ticks and the summary all show ``tree_model`` and the configuration's choice."""
    ctl, panel = window.model_ctl, window.layers
    config = window.store.config
    expected = set(resolve_selection(tree_model.tree, config.lora, config.model.task).targets)
    assert ctl.tree_model is tree_model and panel.model is tree_model and panel.view.model() is tree_model
    assert tree_model.selection.selected == expected
    assert panel.block_map.selection is tree_model.selection and panel.block_map.grid.tree is tree_model.tree
    tree = tree_model.tree
    assert panel.view.isExpanded(tree_model.index_of(tree.blocks_prefix)), "the tree is open down to the blocks"
    assert panel.view.isExpanded(tree_model.index_of(f"{tree.blocks_prefix}.0"))
    assert f"in {len(expected)} modules" in panel.summary.trainable.text()
    in_map = len(expected - panel.block_map.grid.outside_set)
    assert f"{in_map} of {panel.block_map.grid.cells} adapted" in panel.map_caption.text()


def test_an_opened_model_ends_with_tree_map_selection_and_summary_consistent(qtbot, window, tiny_model_dir):
    pieces = []
    window.model_ctl.viewsDue.connect(lambda model, piece: pieces.append(piece))
    open_and_settle(qtbot, window, tiny_model_dir("llama"))
    assert pieces == ["rows", "map"]
    assert_shows(window, window.model_ctl.tree_model)
    assert window.layers.preset_button.isEnabled() and window.layers.filter_edit.isEnabled()


def test_the_first_piece_is_consistent_before_the_map_has_its_selection(qtbot, window, tiny_model_dir):
    """In the turn the tree appears, the map has its grid (its size) but no selection yet: a click or a hover
    there edits nothing and fails nowhere, and the ticks already are the configuration's."""
    seen = []

    def first_piece(tree_model):
        panel = window.layers
        block_map = panel.block_map
        seen.append((panel.model is tree_model, block_map.selection, block_map.grid.tree is tree_model.tree,
                     panel.preset_button.isEnabled()))
        before = set(tree_model.selection.selected)
        centre = block_map.cell_rect(0, 0).center()
        qtbot.mousePress(block_map, Qt.MouseButton.LeftButton, pos=centre)
        qtbot.mouseMove(block_map, centre + QPoint(block_map.cell_rect(0, 1).x() - centre.x() + 2, 0))
        qtbot.mouseRelease(block_map, Qt.MouseButton.LeftButton, pos=centre)
        seen.append(tree_model.selection.selected == before)

    window.model_ctl.opened.connect(first_piece)  # after the window's own slot: the tree is set
    open_and_settle(qtbot, window, tiny_model_dir("llama"))
    assert seen == [(True, None, True, True), True]
    assert_shows(window, window.model_ctl.tree_model)


def test_a_second_result_stops_the_first_ones_pieces(qtbot, window, tiny_model_dir, skeleton_dir):
    """A model's result arriving while an earlier one's pieces are still landing: only the newer one's land."""
    ctl = window.model_ctl
    results = {}
    for name, source in (("tiny", tiny_model_dir("llama")), ("skeleton", skeleton_dir)):
        open_and_settle(qtbot, window, source)
        results[name] = {"overview": ctl.overview, "origin": ctl.origin, "device_text": ctl.device_text,
                         "available": ctl.available_memory, "device_kind": ctl.device_kind}
    window.store.update("model", source=str(tiny_model_dir("llama")))
    landed, settled, between = [], [], []

    def second_result():  # in the turn after the first one's first later piece, as the open job would deliver it
        between.append(list(landed))
        window.store.update("model", source=str(skeleton_dir))
        ctl._ready(results["skeleton"])

    def piece_landed(model, piece):
        landed.append((model, piece))
        if len(landed) == 1:
            QTimer.singleShot(0, second_result)  # started before the next piece's turn is asked for

    ctl.viewsDue.connect(piece_landed)
    ctl.settled.connect(lambda: settled.append(ctl.tree_model))
    ctl._ready(results["tiny"])  # as the open job delivers it
    first = ctl.tree_model
    qtbot.waitUntil(lambda: bool(settled), timeout=10_000)
    second = ctl.tree_model
    assert between == [[(first, "rows")]], "the second result came while the first one's map was still due"
    qtbot.wait(200)  # room for a stale piece to land, were one still due
    assert landed == [(first, "rows"), (second, "rows"), (second, "map")] and settled == [second]
    assert second.tree.num_blocks == SKELETON["num_hidden_layers"] != first.tree.num_blocks
    assert_shows(window, second)
    window.layers.show_piece(first, "map")  # a piece for a model no longer shown is dropped
    assert window.layers.block_map.selection is second.selection


def test_the_tools_work_once_the_model_has_settled(qtbot, window, skeleton_dir):
    open_and_settle(qtbot, window, skeleton_dir)
    panel, config = window.layers, window.store
    model = window.model_ctl.tree_model
    # A block-map cell: the selection, the configuration and the caption follow.
    name = panel.block_map.grid.names[0][0]
    was_selected = name in model.selection.selected
    qtbot.mouseClick(panel.block_map, Qt.MouseButton.LeftButton, pos=panel.block_map.cell_rect(0, 0).center())
    assert (name in model.selection.selected) != was_selected
    assert (name in config.config.lora.target_modules) != was_selected
    # A preset from the box.
    panel.preset_combo.setCurrentIndex(panel.preset_combo.findData("attention-qv"))
    panel.preset_button.click()
    assert model.selection.selected == set(model.tree.preset("attention-qv"))
    assert config.config.lora.preset == "attention-qv"
    qtbot.waitUntil(lambda: f"in {len(model.selection.selected)} modules" in panel.summary.trainable.text(),
                    timeout=5_000)
