"""The window opens a model the way `workbench inspect` does (core/tree_cache.py), in its open job: the tree of a
config.json seen before is the remembered one, another config of a known architecture gets its template's, and
the tree the layer panel shows is, module for module, the one a fresh build gives."""

import json
import shutil

from workbench.core.models import open_overview
from workbench.core.tree_template import node_facts
from workbench.gui import workers
from workbench.gui.config_store import ConfigStore
from workbench.gui.model_controller import ModelController


def test_the_window_uses_and_fills_the_tree_cache_and_the_templates(qtbot, tiny_model_dir, tmp_path):
    from PySide6.QtWidgets import QWidget

    owner = QWidget()
    qtbot.addWidget(owner)
    store = ConfigStore(owner)
    runner = workers.JobRunner(owner)
    models = ModelController(store, runner.start, owner)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama"), model)
    config = json.loads((model / "config.json").read_text())
    other = tmp_path / "other"  # the same architecture, other sizes: its own tree, from the template
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "hidden_size": 96, "intermediate_size": 200,
                                                   "num_hidden_layers": 5}))

    seen = []
    for folder in (model, model, other):
        with qtbot.waitSignal(models.opened, timeout=60_000) as opened:
            assert models.open(str(folder))
        fresh = open_overview(str(folder))
        assert opened.args[0].tree is models.overview.tree
        assert node_facts(models.overview.tree) == node_facts(fresh.tree)
        assert (models.overview.architecture, models.overview.dtype) == (fresh.architecture, fresh.dtype)
        seen.append(models.origin)
        qtbot.waitUntil(lambda: runner.count == 0, timeout=30_000)  # the Hub look-up job ends too
    assert seen == ["built", "cache", "template"]
    assert models.overview.tree.num_blocks == 5
