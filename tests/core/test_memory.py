"""The memory estimate: its parts follow the formula in core/memory.py's docstring."""

import pytest
import tiny

from workbench.core.config import LoraSettings
from workbench.core.layers import build_tree, count_selection, resolve_selection
from workbench.core.memory import estimate_memory


@pytest.fixture(scope="module")
def setup():
    tree = build_tree(tiny.make_model("llama"))
    sel = resolve_selection(tree, LoraSettings(preset="all-linear", r=8))
    return tree, sel


def est(setup, **kw):
    tree, sel = setup
    base = dict(hidden_size=64, vocab_size=300, num_heads=4, weight_dtype="bfloat16", batch_size=2, seq_len=128)
    return estimate_memory(tree, sel, **{**base, **kw})


def test_parts_follow_the_formula(setup):
    tree, sel = setup
    e = est(setup)
    trainable = count_selection(tree, sel).trainable_params
    assert e.weights == tree.total_params * 2
    assert e.adapter == e.gradients == trainable * 4
    assert e.optimizer == trainable * 8
    assert e.logits == 2 * 2 * 128 * 300 * 4
    assert e.total == sum(v for _, v in e.parts())


def test_activations_scale_with_tokens_and_shrink_with_checkpointing(setup):
    small, double = est(setup, batch_size=2), est(setup, batch_size=4)
    assert double.activations == pytest.approx(2 * small.activations, rel=0.01)
    ckpt = est(setup, gradient_checkpointing=True)
    assert ckpt.activations < small.activations
    eager = est(setup, attn_implementation="eager")
    # 2 blocks × (scores + probabilities) × batch 2 × 4 heads × 128² × 2 bytes
    assert eager.activations - small.activations == 2 * (2 * 2 * 4 * 128 * 128 * 2)


def test_dtype_optimizer_and_verdict(setup):
    assert est(setup, weight_dtype="float32").weights == 2 * est(setup).weights
    assert est(setup, optimizer="sgd").optimizer == 0
    assert 0 < est(setup, optimizer="adafactor").optimizer < est(setup).optimizer
    e = est(setup)
    assert e.verdict(e.total * 2) == "fits"
    assert e.verdict(int(e.total * 1.05)) == "tight"
    assert e.verdict(e.total // 2) == "does not fit"
    assert e.verdict(None) == "unknown"
