"""Architecture templates (core/tree_template.py): a config of an architecture seen before gets the tree a fresh
meta-device build gives, number for number, for real-shaped configs of llama (8B → 70B, GQA and not, biased and
tied), mistral (with and without head_dim), qwen2, qwen3 (tied and not), gemma and phi3; what a template cannot
explain is built afresh; a templated `workbench inspect` imports no modeling code and prints what --no-cache does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from template_configs import FAMILIES

from workbench.core.config import LoraSettings, RunConfig
from workbench.core.layers import count_selection, resolve_selection
from workbench.core.memory import estimate_for_config
from workbench.core.models import open_overview
from workbench.core.tree_cache import open_overview_cached
from workbench.core.tree_template import node_facts, split_config, template_key


def _folder(root: Path, name: str, config: dict) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _templates(cache: Path) -> list[Path]:
    return sorted((cache / "templates").glob("*.json")) if (cache / "templates").is_dir() else []


def _assert_same_overview(got, fresh) -> None:
    assert node_facts(got.tree) == node_facts(fresh.tree)
    assert list(got.tree.nodes) == list(fresh.tree.nodes)
    assert (got.architecture, got.dtype, got.source) == (fresh.architecture, fresh.dtype, fresh.source)
    text = fresh.hf_config.get_text_config()
    for field in ("hidden_size", "vocab_size", "num_attention_heads", "model_type", "_attn_implementation",
                  "_name_or_path"):
        assert getattr(got.hf_config, field) == getattr(text if field != "_name_or_path" else fresh.hf_config, field)
    # What inspect and the window compute from it: the selection's counts and the memory estimate.
    lora = LoraSettings(r=16, alpha=32, preset="all-linear")
    run = RunConfig.from_dict({"lora": lora.model_dump(mode="json")})
    sel_got, sel_fresh = resolve_selection(got.tree, lora), resolve_selection(fresh.tree, lora)
    assert sel_got.targets == sel_fresh.targets
    assert count_selection(got.tree, sel_got) == count_selection(fresh.tree, sel_fresh)
    assert estimate_for_config(got.tree, sel_got, got.hf_config, run, device="cuda").parts() == \
        estimate_for_config(fresh.tree, sel_fresh, fresh.hf_config, run, device="cuda").parts()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_template_gives_every_other_config_of_the_architecture_its_fresh_tree(family, tmp_path):
    cache = tmp_path / "cache"
    (first_name, first), *others = FAMILIES[family]
    overview, origin = open_overview_cached(str(_folder(tmp_path, first_name, first)), cache_dir=cache)
    assert origin == "built" and len(_templates(cache)) == 1  # learned from the first one
    for name, config in others:
        folder = _folder(tmp_path, name, config)
        got, origin = open_overview_cached(str(folder), cache_dir=cache)
        assert origin == "template", name
        _assert_same_overview(got, open_overview(str(folder)))
        assert got.tree.num_blocks == config["num_hidden_layers"]
    assert len(_templates(cache)) == 1


def test_the_70b_tree_from_the_template_of_an_8b(tmp_path):
    """The issue's case, spelled out: Llama-3-70B's numbers come from formulas learned on tiny probes."""
    cache = tmp_path / "cache"
    (_, small), (_, big) = FAMILIES["llama"][:2]
    open_overview_cached(str(_folder(tmp_path, "8b", small)), cache_dir=cache)
    got, origin = open_overview_cached(str(_folder(tmp_path, "70b", big)), cache_dir=cache)
    assert origin == "template" and got.tree.num_blocks == 80
    assert 70.5e9 < got.tree.total_params < 70.6e9  # 70,553,706,496: Llama-3-70B's published count
    assert got.tree["model.layers.79.self_attn.k_proj"].shape == (1024, 8192)  # 8 KV heads × 128
    assert got.tree["model.layers.0.mlp.gate_proj"].shape == (28672, 8192)


def test_a_structure_flag_the_template_did_not_see_is_another_template(tmp_path):
    cache = tmp_path / "cache"
    (_, plain), _ = FAMILIES["llama"][:2]
    open_overview_cached(str(_folder(tmp_path, "plain", plain)), cache_dir=cache)
    for i, change in enumerate(({"attention_bias": True}, {"tie_word_embeddings": True}, {"mlp_bias": True},
                                {"hidden_act": "gelu"})):
        folder = _folder(tmp_path, f"changed-{i}", {**plain, **change})
        got, origin = open_overview_cached(str(folder), cache_dir=cache)
        assert origin == "built", change
        assert node_facts(got.tree) == node_facts(open_overview(str(folder)).tree)
        assert len(_templates(cache)) == i + 2  # and learned for that flag in turn


def test_a_number_the_template_cannot_say_exactly_is_built_afresh(tmp_path):
    """Where a template's candidate formulas disagree for a config, or it could not be built, the fresh path has
    the say, refusals included: hidden_size not a multiple of the head count (heads × hidden // heads and
    hidden_size, one and the same number on every probe, differ here), or a padding id beyond the vocabulary."""
    from workbench.core.errors import ModelSourceError

    cache = tmp_path / "cache"
    for family, change, message in (("llama", {"hidden_size": 4100}, "not a multiple"),
                                    ("phi3", {"vocab_size": 1000}, "cannot be built")):
        (_, first), (_, second) = FAMILIES[family][:2]
        open_overview_cached(str(_folder(tmp_path, f"{family}-a", first)), cache_dir=cache)
        folder = str(_folder(tmp_path, f"{family}-b", {**second, **change}))
        with pytest.raises(ModelSourceError, match=message):
            open_overview(folder)
        with pytest.raises(ModelSourceError, match=message):
            open_overview_cached(folder, cache_dir=cache)
    # Where the fresh build does not refuse, the two agree (here: key/value heads that do not divide the heads).
    folder = str(_folder(tmp_path, "kv5", {**FAMILIES["llama"][1][1], "num_key_value_heads": 5}))
    got, origin = open_overview_cached(folder, cache_dir=cache)
    assert origin == "template" and node_facts(got.tree) == node_facts(open_overview(folder).tree)


@pytest.mark.parametrize("change", [
    {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": 8, "num_experts_per_tok": 2},
    {"layer_types": ["full_attention", "sliding_attention"] * 16},
    {"auto_map": {"AutoConfig": "configuration_x.XConfig"}},
    {"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}},
])
def test_what_a_template_cannot_stand_for_is_never_templated(change, tmp_path):
    (_, small), _ = FAMILIES["llama"][:2]
    assert split_config({**small, **change}) is None
    assert template_key({**small, **change}, "causal-lm", None) is None
    assert template_key({**small, "layer_types": ["full_attention"] * 32}, "causal-lm", None) is not None


def test_mixture_of_experts_is_built_every_time(tmp_path):
    cache = tmp_path / "cache"
    moe = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
           "num_local_experts": 4, "num_experts_per_tok": 2}
    open_overview_cached(str(_folder(tmp_path, "a", moe)), cache_dir=cache)
    _, origin = open_overview_cached(str(_folder(tmp_path, "b", {**moe, "hidden_size": 96})), cache_dir=cache)
    assert origin == "built" and not _templates(cache)


def test_the_key_changes_with_transformers_task_labels_and_exact_fields_not_with_sizes_or_floats(monkeypatch):
    import importlib.metadata

    (_, small), (_, big) = FAMILIES["llama"][:2]
    key = template_key(small, "causal-lm", None)
    assert key == template_key(big, "causal-lm", None) == template_key({**small, "rope_theta": 1e4}, "causal-lm", None)
    assert key != template_key(small, "sequence-classification", 2) != template_key(small, "sequence-classification", 3)
    assert key != template_key({**small, "rope_theta": "10000"}, "causal-lm", None)  # a type transformers may refuse
    assert key != template_key({**small, "sliding_window": 4096}, "causal-lm", None)
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0.0" if name == "transformers" else real(name))
    assert template_key(small, "causal-lm", None) != key


def test_switches_and_a_damaged_template(tmp_path):
    cache = tmp_path / "cache"
    (_, small), (_, big) = FAMILIES["llama"][:2]
    open_overview_cached(str(_folder(tmp_path, "8b", small)), cache_dir=cache)
    big_folder = str(_folder(tmp_path, "70b", big))
    assert open_overview_cached(big_folder, cache_dir=cache, use_cache=False)[1] == "built"
    assert open_overview_cached(big_folder, cache_dir=cache, use_templates=False)[1] == "built"
    assert open_overview_cached(big_folder, cache_dir=cache)[1] == "cache"  # the line above remembered its tree
    (entry,) = _templates(cache)
    entry.write_text('{"format": 1, "formulas": [')
    other = str(_folder(tmp_path, "other", {**big, "num_hidden_layers": 40}))
    got, origin = open_overview_cached(other, cache_dir=cache)
    assert origin == "built" and got.tree.num_blocks == 40
    assert json.loads(entry.read_text())["format"] == 1  # learned again, written whole
    got, origin = open_overview_cached(str(_folder(tmp_path, "third", {**big, "num_hidden_layers": 20})), cache_dir=cache)
    assert origin == "template" and got.tree.num_blocks == 20


def test_a_sequence_classifier_gets_its_head_from_the_template(tmp_path):
    cache = tmp_path / "cache"
    for name, config in FAMILIES["qwen3-tied"]:
        folder = _folder(tmp_path, name, config)
        got, origin = open_overview_cached(str(folder), task="sequence-classification", num_labels=3, cache_dir=cache)
        fresh = open_overview(str(folder), task="sequence-classification", num_labels=3)
        assert node_facts(got.tree) == node_facts(fresh.tree) and got.tree["score"].shape == (3, config["hidden_size"])
    assert origin == "template"


@pytest.mark.subprocess
def test_a_templated_inspect_prints_what_no_cache_does_and_imports_no_modeling_code(tmp_path, monkeypatch, capsys):
    from workbench.cli import main

    env = {**os.environ, "LORA_WORKBENCH_CACHE": str(tmp_path / "cache")}
    code = ("import sys\nfrom workbench.cli import main\ncode = main(sys.argv[1:])\n"
            "print('MODULES', 'transformers' in sys.modules, 'torch._dynamo' in sys.modules, 'torch' in sys.modules,"
            " file=sys.stderr)\n"
            "raise SystemExit(code)")
    (_, small), (_, big) = FAMILIES["llama"][:2]
    options = ["--json", "--rank", "8", "--device", "cpu"]
    # The 8B inspect only teaches the cache the architecture: it runs in this process (another interpreter
    # importing transformers cost seconds). That a build imports the modeling code is checked on --no-cache below.
    monkeypatch.setenv("LORA_WORKBENCH_CACHE", str(tmp_path / "cache"))
    assert main(["inspect", str(_folder(tmp_path, "8b", small)), *options]) == 0
    capsys.readouterr()
    assert len(_templates(tmp_path / "cache")) == 1, "the 8B inspect built its tree and learned the template"
    runs = []
    for folder, extra in ((_folder(tmp_path, "70b", big), []), (tmp_path / "70b", ["--no-cache"])):
        done = subprocess.run([sys.executable, "-c", code, "inspect", str(folder), *options, *extra],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        runs.append((json.loads(done.stdout), done.stderr.split("MODULES")[-1].split()))
    from workbench.core.precision import torch_has_gpu_backend

    (templated, templated_mods), (fresh, fresh_mods) = runs
    assert fresh_mods == ["True", "True", "True"]
    # Where the installed torch is a CPU-only build, the templated inspect needs no torch at all.
    assert templated_mods == ["False", "False", "True" if torch_has_gpu_backend() is not False else "False"]
    assert templated == fresh


def test_the_window_and_inspect_share_the_entry_of_a_causal_lm(tmp_path):
    """The window passes the run file's num_labels (2 by default) for every task, inspect passes none: a causal
    LM's tree does not depend on it, so both find the same remembered tree."""
    cache = tmp_path / "cache"
    folder = str(_folder(tmp_path, "8b", FAMILIES["llama"][0][1]))
    open_overview_cached(folder, cache_dir=cache)
    assert open_overview_cached(folder, num_labels=2, cache_dir=cache, use_templates=False)[1] == "cache"
