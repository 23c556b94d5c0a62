"""The memory estimate: its parts follow the formula in core/memory.py's docstring."""

import pytest
import tiny

from workbench.core.config import LoraSettings
from workbench.core.layers import build_tree, count_selection, resolve_selection
from workbench.core.memory import LOSS_CHUNK_BYTES, estimate_memory


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
    # float32 logits and their gradient, plus the bf16 logits the model returns before the loss upcasts them
    assert e.logits == 2.5 * (2 * 128 * 300 * 4)
    assert est(setup, weight_dtype="float32").logits == 2 * (2 * 128 * 300 * 4)
    assert e.total == sum(v for _, v in e.parts())


def test_half_precision_keeps_some_activations_in_float32(setup):
    fp32, bf16 = est(setup, weight_dtype="float32"), est(setup)
    embeddings = 2 * (2 * 128) * 64  # embedding output and final norm: 2·b·s·h elements
    assert (bf16.activations - embeddings * 2) == pytest.approx(0.5 * 1.15 * (fp32.activations - embeddings * 4), rel=1e-3)


def test_overhead_on_the_gpu_is_the_context_plus_the_allocators_slack(setup):
    from workbench.core.memory import CPU_ALLOCATOR_SLACK, CPU_FRAMEWORK_BYTES, CUDA_FRAMEWORK_BYTES

    float_logits = 2 * 128 * 300 * 4
    gpu = est(setup, device="cuda")
    assert gpu.overhead == CUDA_FRAMEWORK_BYTES + int(0.8 * float_logits + 0.05 * gpu.activations)
    ckpt = est(setup, device="cuda", gradient_checkpointing=True)
    assert ckpt.overhead == CUDA_FRAMEWORK_BYTES + int(1.1 * float_logits + 0.05 * ckpt.activations)
    fp32 = est(setup, device="cuda", weight_dtype="float32")
    assert fp32.overhead == CUDA_FRAMEWORK_BYTES + int(0.4 * float_logits + 0.05 * fp32.activations)
    cpu = est(setup, device="cpu")
    assert cpu.overhead == CPU_FRAMEWORK_BYTES + int(CPU_ALLOCATOR_SLACK * cpu.activations)


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


def test_the_compute_precision_not_the_weights_decides_half_precision(setup, tiny_model_dir):
    """float32 weights trained with bf16 autocast hold bf16 activations and logits: estimated as such."""
    from workbench.core.config import RunConfig
    from workbench.core.memory import estimate_for_config
    from workbench.core.models import open_overview

    tree, sel = setup
    ov = open_overview(str(tiny_model_dir("llama")))

    def estimate(**training):
        cfg = RunConfig.from_dict({"model": {"dtype": "float32"}, "training": training, "data": {"max_length": 128}})
        return estimate_for_config(tree, sel, ov.hf_config, cfg, device="cuda")

    autocast, fp32 = estimate(precision="bf16"), estimate(precision="fp32")
    assert autocast.weights == fp32.weights == tree.total_params * 4
    # a llama: the chunked loss (core/loss.py), whose bf16 product adds half a chunk before the fp32 upcast
    assert autocast.logits == fp32.logits + LOSS_CHUNK_BYTES // 2
    # Under autocast PEFT's forward runs (the engine's own layer nodes need one dtype): its count, in bf16, is
    # below the same count in fp32.
    c = ov.hf_config
    peft_fp32 = estimate_memory(tree, sel, hidden_size=c.hidden_size, vocab_size=c.vocab_size, num_heads=c.num_attention_heads,
                                weight_dtype="float32", batch_size=4, seq_len=128, device="cuda", chunked_loss=True)
    assert autocast.activations < peft_fp32.activations
    assert fp32.activations < peft_fp32.activations  # fp32 without autocast: the engine's lean blocks
    assert estimate(precision="auto").logits == autocast.logits  # 'auto' on a GPU is half precision
