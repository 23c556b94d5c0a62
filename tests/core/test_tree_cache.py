"""The module tree remembered between commands (core/tree_cache.py): the same tree, and the same `inspect`
output, as building it afresh; a changed config.json, task or label count is a new entry; a damaged entry is
rebuilt; a model with its own code is never cached; a cached inspect imports no modeling code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from workbench.core.layers import count_selection, resolve_selection
from workbench.core.config import LoraSettings
from workbench.core.models import open_overview
from workbench.core.tree_cache import open_overview_cached, tree_from_json, tree_to_json


def _nodes(tree):
    return [(n.name, n.type, n.shape, n.params, n.own_params, n.adaptable, n.kind, n.block, n.tied_to, n.in_features,
             n.out_features, n.bias_params) for n in tree.root.walk()]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_a_tree_survives_the_json_round_trip(tiny_model_dir, arch):
    task = "sequence-classification" if arch == "bert" else "causal-lm"
    tree = open_overview(str(tiny_model_dir(arch)), task=task).tree
    back = tree_from_json(json.loads(json.dumps(tree_to_json(tree))))
    assert _nodes(back) == _nodes(tree) and list(back.nodes) == list(tree.nodes)  # in the same order
    assert (back.total_params, back.blocks_prefix, back.num_blocks) == (tree.total_params, tree.blocks_prefix, tree.num_blocks)
    lora = LoraSettings(r=8, alpha=16, preset="all-linear")
    assert count_selection(back, resolve_selection(back, lora, task)) == count_selection(tree, resolve_selection(tree, lora, task))


def test_second_open_comes_from_the_cache_and_a_changed_config_does_not(tiny_model_dir, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama"), model)
    first, origin = open_overview_cached(str(model), cache_dir=tmp_path / "cache")
    assert origin == "built"
    second, origin = open_overview_cached(str(model), cache_dir=tmp_path / "cache")
    assert origin == "cache" and _nodes(second.tree) == _nodes(first.tree)
    assert (second.architecture, second.dtype) == (first.architecture, first.dtype)
    assert second.hf_config.hidden_size == first.hf_config.hidden_size == 64
    # Another task or label count is another tree (a classification head instead of lm_head).
    _, origin = open_overview_cached(str(model), task="sequence-classification", num_labels=3, cache_dir=tmp_path / "cache")
    assert origin == "built"

    config = json.loads((model / "config.json").read_text())
    config["num_hidden_layers"] = 1
    (model / "config.json").write_text(json.dumps(config))
    # (Not from the architecture's template either, here: that is tests/core/test_tree_template.py.)
    third, origin = open_overview_cached(str(model), cache_dir=tmp_path / "cache", use_templates=False)
    assert origin == "built" and third.tree.num_blocks == 1


def test_a_damaged_entry_is_rebuilt_and_remote_code_is_never_cached(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir("llama"))
    open_overview_cached(model, cache_dir=tmp_path / "cache")
    (entry,) = (tmp_path / "cache" / "trees").iterdir()
    entry.write_text('{"format": 1, "tree": {')
    overview, origin = open_overview_cached(model, cache_dir=tmp_path / "cache", use_templates=False)
    assert origin == "built" and overview.tree.num_blocks == 2
    assert json.loads(entry.read_text())["format"] == 1  # rewritten whole
    entry.unlink()
    open_overview_cached(model, trust_remote_code=True, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache" / "trees").iterdir())


@pytest.mark.subprocess
def test_inspect_from_the_cache_prints_the_same_and_imports_no_modeling_code(tiny_model_dir, tmp_path, monkeypatch,
                                                                              capsys):
    import os

    from workbench.cli import main

    env = {**os.environ, "LORA_WORKBENCH_CACHE": str(tmp_path / "cache")}
    code = ("import sys\nfrom workbench.cli import main\ncode = main(sys.argv[1:])\n"
            "print('MODULES', 'transformers' in sys.modules, 'torch._dynamo' in sys.modules, file=sys.stderr)\n"
            "raise SystemExit(code)")
    model = str(tiny_model_dir("qwen2"))
    argv = ["inspect", model, "--json", "--rank", "4"]
    # The first inspect only fills the cache: it runs in this process (another interpreter importing transformers
    # cost seconds). That a build imports the modeling code is checked on the --no-cache run below.
    monkeypatch.setenv("LORA_WORKBENCH_CACHE", str(tmp_path / "cache"))
    capsys.readouterr()
    assert main(argv) == 0
    fresh = json.loads(capsys.readouterr().out)
    assert len(list((tmp_path / "cache" / "trees").iterdir())) == 1, "the first inspect built the tree and remembered it"
    outs = []
    for extra in ([], ["--no-cache"]):
        done = subprocess.run([sys.executable, "-c", code, *argv, *extra], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        outs.append((json.loads(done.stdout), done.stderr.split("MODULES")[-1].split()))
    (cached, cached_mods), (uncached, uncached_mods) = outs
    assert uncached_mods == ["True", "True"]
    assert cached_mods == ["False", "False"]
    assert cached == fresh == uncached
