"""The memory estimate against what the engine keeps: its lean layer nodes' saved activations counted exactly
(autograd's saved tensors, distinct storages, parameters left out), the chunked loss's bounded logits, and the
constants memory.py mirrors from modules that import torch."""

import pytest
import tiny
import torch
from peft import LoraConfig, get_peft_model

from workbench.core import loss, lora_forward, memory
from workbench.core.config import LoraSettings
from workbench.core.layers import build_tree, resolve_selection
from workbench.core.lean_attention import install_lean_attention
from workbench.core.loss import HeadlessCausalLM, chunked_loss_head
from workbench.core.lora_forward import install_fused_lora_forward


def test_the_mirrored_constants_are_the_engines():
    assert memory.LOSS_CHUNK_BYTES == loss.CHUNK_BYTES
    assert memory.CHUNKED_LOSS_TYPES == loss.CHUNKED_LOSS_MODEL_TYPES
    for model_type in memory.LEAN_LAYER_MODEL_TYPES:
        cls = type(tiny.make_model(model_type).model.layers[0].mlp).__name__
        assert cls in lora_forward.GATED_SILU_MLPS
        assert cls.replace("MLP", "RMSNorm") in lora_forward.RMS_NORMS


def _saved_bytes_a_token(layers: int, rows: int = 2, width: int = 96) -> float:
    model = tiny.make_model("llama", num_hidden_layers=layers).train()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    install_fused_lora_forward(model)
    install_lean_attention(model)
    ids = torch.randint(3, model.config.vocab_size, (rows, width), generator=torch.Generator().manual_seed(0))
    positions = torch.cat([torch.arange(width // 2), torch.arange(width - width // 2)]).repeat(rows, 1)  # packed
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = HeadlessCausalLM(model, *chunked_loss_head(model))(input_ids=ids, position_ids=positions, labels=ids)
    out["loss"].backward()
    return sum(seen.values()) / (rows * width)


def test_a_lean_blocks_estimate_is_what_autograd_keeps_for_it():
    tree = build_tree(tiny.make_model("llama"))
    sel = resolve_selection(tree, LoraSettings(preset="all-linear", r=8, dropout=0.05))
    hidden = tiny.make_model("llama").config.hidden_size
    estimated = 4 * memory._lean_block_activation_elements(tree, sel, hidden, 0.05, 4, "cpu")
    kept = _saved_bytes_a_token(3) - _saved_bytes_a_token(2)  # one block's share, a token
    assert estimated == pytest.approx(kept, rel=0.1)
    plain = 4 * memory._block_activation_elements(tree, sel, hidden, 0.05)
    assert plain > 1.5 * kept, "the plain count is PEFT's forward's: it would overstate the engine's"


def test_the_chunked_loss_holds_one_chunk_of_logits_not_the_batchs():
    tree = build_tree(tiny.make_model("llama"))
    sel = resolve_selection(tree, LoraSettings(preset="all-linear", r=8))
    sizes = dict(hidden_size=64, vocab_size=49152, num_heads=4, weight_dtype="float32", batch_size=4, seq_len=1024,
                 device="cpu")
    full = memory.estimate_memory(tree, sel, **sizes)
    chunked = memory.estimate_memory(tree, sel, chunked_loss=True, **sizes)
    assert full.logits == 2 * 4 * 1024 * 49152 * 4
    assert chunked.logits == 2 * memory.LOSS_CHUNK_BYTES + 2 * 4 * 1024 * 64 * 4
    assert memory.estimate_memory(tree, sel, chunked_loss=True, **{**sizes, "batch_size": 8}).logits < 1.1 * chunked.logits
