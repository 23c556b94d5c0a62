"""The layer tree's filter box: which rows the view shows (the view hides rows itself, no proxy model)."""

import pytest

from workbench.core.models import open_overview
from workbench.gui.widgets.layer_panel import LayerPanel
from workbench.gui.widgets.layer_tree_model import LayerTreeModel


@pytest.fixture(scope="module")
def tree(tiny_model_dir):
    return open_overview(str(tiny_model_dir("llama"))).tree


@pytest.fixture
def panel(qtbot, tree):
    panel = LayerPanel()
    qtbot.addWidget(panel)
    panel.set_model(LayerTreeModel(tree))
    return panel


def shown(panel) -> set[str]:
    """Module names whose rows the view shows (a row under a hidden row counts as hidden)."""
    model, view = panel.model, panel.view
    out = set()
    for name in model.tree.nodes:
        if not name:
            continue
        index = model.index_of(name)
        visible = True
        while index.isValid():
            if view.isRowHidden(index.row(), index.parent()):
                visible = False
                break
            index = index.parent()
        if visible:
            out.add(name)
    return out


def with_ancestors(names) -> set[str]:
    out = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def test_text_shows_matches_and_their_ancestors_only(panel, tree):
    everything = {n for n in tree.nodes if n}
    assert shown(panel) == everything
    panel.filter_edit.setText("V_PROJ")  # case-insensitive substring
    matches = {n for n in everything if "v_proj" in n.lower()}
    assert matches and shown(panel) == with_ancestors(matches)
    panel.filter_edit.setText("")
    assert shown(panel) == everything


def test_regex_a_bad_regex_keeps_the_last_filter_and_says_why(panel, tree):
    panel.regex_box.setChecked(True)
    panel.filter_edit.setText(r"layers\.1\..*_proj$")
    expected = with_ancestors({n for n in tree.nodes if n.startswith("model.layers.1.") and n.endswith("_proj")})
    assert shown(panel) == expected
    panel.filter_edit.setText(r"layers\.1\.(")  # unbalanced: not a regex
    assert "not a valid regular expression" in panel.problem_label.text()
    assert shown(panel) == expected
    panel.filter_edit.setText(r"layers\.0\.mlp\.")
    assert panel.problem_label.text() == "" or panel.problem_label.isHidden()
    assert shown(panel) == with_ancestors({n for n in tree.nodes if n.startswith("model.layers.0.mlp.")})


def test_a_new_model_keeps_the_active_filter(panel, tree):
    panel.filter_edit.setText("q_proj")
    panel.set_model(LayerTreeModel(tree))
    assert shown(panel) == with_ancestors({n for n in tree.nodes if "q_proj" in n})
