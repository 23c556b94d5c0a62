"""The layer tree and selections, checked against what PEFT itself builds on each architecture."""

import pytest
import tiny
import torch
from peft import get_peft_model

from workbench.core.config import LoraSettings
from workbench.core.errors import SelectionError
from workbench.core.layers import build_tree, count_selection, lora_config_from_selection, resolve_selection

TASK = {a: ("sequence-classification" if a == "bert" else "causal-lm") for a in tiny.ARCH_CONFIGS}

# What each preset must pick in block 0, by leaf path inside the block (the LoRA paper's q,v; fused qkv where fused).
EXPECTED_QV = {
    "llama": {"self_attn.q_proj", "self_attn.v_proj"},
    "mistral": {"self_attn.q_proj", "self_attn.v_proj"},
    "qwen2": {"self_attn.q_proj", "self_attn.v_proj"},
    "gemma": {"self_attn.q_proj", "self_attn.v_proj"},
    "phi3": {"self_attn.qkv_proj"},
    "gpt2": {"attn.c_attn"},
    "gpt_neox": {"attention.query_key_value"},
    "opt": {"self_attn.q_proj", "self_attn.v_proj"},
    "bert": {"attention.self.query", "attention.self.value"},
}
EXPECTED_MLP = {
    "llama": {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
    "phi3": {"mlp.gate_up_proj", "mlp.down_proj"},
    "gpt2": {"mlp.c_fc", "mlp.c_proj"},
    "gpt_neox": {"mlp.dense_h_to_4h", "mlp.dense_4h_to_h"},
    "opt": {"fc1", "fc2"},
    "bert": {"intermediate.dense", "output.dense"},
}


def block0(tree, names):
    prefix = f"{tree.blocks_prefix}.0."
    return {n[len(prefix):] for n in names if n.startswith(prefix)}


@pytest.mark.parametrize("arch", list(tiny.ARCH_CONFIGS))
def test_tree_structure(arch):
    model = tiny.make_model(arch)
    tree = build_tree(model)
    assert tree.total_params == sum(p.numel() for p in model.parameters())
    assert tree.num_blocks == 2
    names = dict(model.named_modules())
    for node in tree.root.walk():
        assert node.name in names and node.type == type(names[node.name]).__name__
        if node.adaptable:
            w = names[node.name].weight
            assert node.shape == tuple(w.shape)
            assert node.in_features * node.out_features == w.numel()
    # every block holds the same adaptable modules
    b0 = block0(tree, [n.name for n in tree.adaptable()])
    assert b0 and all(f"{tree.blocks_prefix}.1.{s}" in tree.nodes for s in b0)


@pytest.mark.parametrize("arch", list(tiny.ARCH_CONFIGS))
def test_presets_pick_the_right_modules(arch):
    tree = build_tree(tiny.make_model(arch))
    assert block0(tree, tree.preset("attention-qv")) == EXPECTED_QV[arch]
    if arch in EXPECTED_MLP:
        assert block0(tree, tree.preset("mlp")) == EXPECTED_MLP[arch]
    all_linear = tree.preset("all-linear")
    assert set(tree.preset("attention")) | set(tree.preset("mlp")) == set(all_linear)
    assert not set(tree.preset("attention")) & set(tree.preset("mlp"))
    assert not any(tree.nodes[n].kind == "head" for n in all_linear), "the output head is not part of all-linear"
    assert len(all_linear) == 2 * len(block0(tree, all_linear))


@pytest.mark.parametrize("arch", list(tiny.ARCH_CONFIGS))
@pytest.mark.parametrize("preset", ["attention-qv", "attention", "mlp", "all-linear"])
def test_counts_equal_peft(arch, preset):
    task = TASK[arch]
    tree = build_tree(tiny.make_model(arch))
    lora = LoraSettings(preset=preset, r=4, alpha=8)
    sel = resolve_selection(tree, lora, task)
    counts = count_selection(tree, sel)
    peft_model = get_peft_model(tiny.make_model(arch), lora_config_from_selection(sel, lora, task))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert counts.trainable_params == trainable
    adapted = {n for n, m in peft_model.base_model.model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(sel.targets)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("extra", [{"use_dora": True}, {"bias": "all"}, {"bias": "lora_only"},
                                   {"modules_to_save": ["lm_head"]}])
def test_counts_equal_peft_with_dora_bias_and_saved_modules(arch, extra):
    if arch == "bert" and "modules_to_save" in extra:
        extra = {"modules_to_save": ["bert.pooler.dense"]}
    task = TASK[arch]
    tree = build_tree(tiny.make_model(arch))
    lora = LoraSettings(preset="all-linear", r=3, **extra)
    sel = resolve_selection(tree, lora, task)
    peft_model = get_peft_model(tiny.make_model(arch), lora_config_from_selection(sel, lora, task))
    assert count_selection(tree, sel).trainable_params == peft_model.get_nb_trainable_parameters()[0]


def test_rank_and_alpha_overrides_land_in_peft():
    # 12 blocks, so that block 1 and block 11 must not be confused by PEFT's suffix/regex matching
    model = tiny.make_model("llama", num_hidden_layers=12)
    tree = build_tree(model)
    lora = LoraSettings(preset="attention-qv", r=4, alpha=8,
                        rank_pattern={"model.layers.1.self_attn.q_proj": 12, "*.layers.5.*v_proj": 2},
                        alpha_pattern={"model.layers.1.self_attn.q_proj": 3.0})
    sel = resolve_selection(tree, lora)
    assert sel.rank_overrides == {"model.layers.1.self_attn.q_proj": 12, "model.layers.5.self_attn.v_proj": 2}
    peft_model = get_peft_model(model, lora_config_from_selection(sel, lora))
    mods = dict(peft_model.base_model.model.named_modules())
    for name in sel.targets:
        layer = mods[name]
        assert layer.r["default"] == sel.rank_of(name), name
        assert layer.scaling["default"] == pytest.approx(sel.scale_of(name)), name
        assert layer.lora_A["default"].weight.shape == (sel.rank_of(name), layer.in_features)
    assert mods["model.layers.11.self_attn.q_proj"].r["default"] == 4
    assert count_selection(tree, sel).trainable_params == peft_model.get_nb_trainable_parameters()[0]


def test_rslora_scale_matches_peft():
    model = tiny.make_model("llama")
    tree = build_tree(model)
    lora = LoraSettings(preset="attention", r=16, alpha=8, use_rslora=True)
    sel = resolve_selection(tree, lora)
    peft_model = get_peft_model(model, lora_config_from_selection(sel, lora))
    layer = dict(peft_model.base_model.model.named_modules())[sel.targets[0]]
    assert layer.scaling["default"] == pytest.approx(8 / 4) == pytest.approx(sel.scale_of(sel.targets[0]))


@pytest.mark.parametrize("arch, extra", [("llama", {}), ("gpt2", {"use_dora": True}), ("llama", {"bias": "all"})])
def test_adapter_size_matches_saved_file(tmp_path, arch, extra):
    tree = build_tree(tiny.make_model(arch))
    lora = LoraSettings(preset="all-linear", r=8, **extra)
    sel = resolve_selection(tree, lora)
    peft_model = get_peft_model(tiny.make_model(arch), lora_config_from_selection(sel, lora))
    peft_model.save_pretrained(tmp_path)
    actual = (tmp_path / "adapter_model.safetensors").stat().st_size
    predicted = count_selection(tree, sel).adapter_bytes
    assert abs(predicted - actual) / actual < 0.02, (predicted, actual)


def test_patterns_blocks_and_same_in_every_block():
    tree = build_tree(tiny.make_model("llama", num_hidden_layers=6))
    assert tree.match("q_proj") == [f"model.layers.{i}.self_attn.q_proj" for i in range(6)]
    assert tree.match("self_attn.q_proj") == tree.match("q_proj")
    assert tree.match("*.layers.[12].mlp.*_proj") == [f"model.layers.{b}.mlp.{p}" for b in (1, 2) for p in ("gate_proj", "up_proj", "down_proj")]
    assert tree.match(r"re:model\.layers\.(4|5)\.self_attn\.o_proj") == ["model.layers.4.self_attn.o_proj", "model.layers.5.self_attn.o_proj"]
    assert tree.same_in_every_block("model.layers.3.mlp.up_proj") == [f"model.layers.{i}.mlp.up_proj" for i in range(6)]
    sel = resolve_selection(tree, LoraSettings(preset="attention-qv", blocks="2-3", include=["down_proj"]))
    assert {tree.nodes[n].block for n in sel.targets} == {2, 3}
    assert len(sel.targets) == 6
    sel = resolve_selection(tree, LoraSettings(target_modules=["model.layers.0.mlp.up_proj", "lm_head"]))
    assert sel.targets == ["model.layers.0.mlp.up_proj", "lm_head"]


@pytest.mark.parametrize("lora, words", [
    (LoraSettings(preset="none", include=["nothing_here"]), "'nothing_here' matches no adaptable module"),
    (LoraSettings(target_modules=["model.layers.0.self_attn.x_proj"]), "matches no module"),
    (LoraSettings(target_modules=["model.embed_tokens"]), "LoRA cannot adapt"),
    (LoraSettings(preset="attention", blocks="5-7"), "blocks 0–1 only"),
    (LoraSettings(preset="none"), "selection is empty"),
    (LoraSettings(rank_pattern={"lm_head": 4}), "rank_pattern key 'lm_head' matches no selected module"),
])
def test_bad_selections_are_explained(lora, words):
    tree = build_tree(tiny.make_model("llama"))
    with pytest.raises(SelectionError) as exc:
        resolve_selection(tree, lora)
    assert words in str(exc.value)


def test_rank_above_full_rank_is_allowed_with_a_warning():
    tree = build_tree(tiny.make_model("llama"))
    sel = resolve_selection(tree, LoraSettings(preset="attention", r=48))
    assert sel.r == 48
    assert any("k_proj" in w and "smaller dimension 32" in w for w in sel.warnings)


def test_tied_head_is_shown_but_counted_once():
    model = tiny.make_model("gpt2")
    tree = build_tree(model)
    assert tree.nodes["lm_head"].tied_to == "transformer.wte"
    assert tree.total_params == sum(p.numel() for p in model.parameters())
    assert torch.equal(torch.tensor(tree.nodes["lm_head"].shape), torch.tensor(model.lm_head.weight.shape))
