"""core/lean_attention.py: training attention without grouped-query copies and per-layer float masks — the same
outputs and gradients as transformers' "sdpa" on packed and padded batches, less kept for the backward pass."""

from __future__ import annotations

import pytest
import tiny
import torch
from peft import LoraConfig, get_peft_model

from workbench.core.lean_attention import ATTENTION_NAME, additive_mask, install_lean_attention, remove_lean_attention


def lora_model(arch: str):
    model = tiny.make_model(arch)
    model.config.use_cache = False
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    return peft_model.train()


def packed_batch(vocab: int) -> dict:
    torch.manual_seed(2)
    ids = torch.randint(3, vocab, (2, 30))
    positions = torch.cat([torch.arange(11), torch.arange(19)]).repeat(2, 1)  # two examples a row
    return {"input_ids": ids, "position_ids": positions, "labels": ids}


def padded_batch(vocab: int) -> dict:
    torch.manual_seed(2)
    ids = torch.randint(3, vocab, (2, 30))
    mask = torch.ones_like(ids)
    mask[1, 21:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_grads_saved(model, batch):
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, sum(saved.values())


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("make_batch", [packed_batch, padded_batch])
def test_outputs_and_gradients_equal_sdpa_with_less_kept(arch, make_batch):
    model = lora_model(arch)
    batch = make_batch(model.config.vocab_size)
    assert model.get_base_model().config._attn_implementation == "sdpa"
    sdpa_loss, sdpa_grads, sdpa_saved = loss_grads_saved(model, batch)
    assert install_lean_attention(model)
    assert model.get_base_model().config._attn_implementation == ATTENTION_NAME
    lean_loss, lean_grads, lean_saved = loss_grads_saved(model, batch)
    torch.testing.assert_close(lean_loss, sdpa_loss, rtol=1e-6, atol=1e-6)
    for name in sdpa_grads:
        torch.testing.assert_close(lean_grads[name], sdpa_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    assert lean_saved < sdpa_saved  # k and v kept un-repeated (4 query heads, 2 key/value heads); one float mask
    remove_lean_attention(model)
    assert model.get_base_model().config._attn_implementation == "sdpa"
    again_loss, _, again_saved = loss_grads_saved(model, batch)
    assert float(again_loss) == float(sdpa_loss) and again_saved == sdpa_saved


def test_under_autocast_it_is_transformers_sdpa_to_the_bit():
    # Its own path under CPU bf16 autocast gave gradients up to 0.7 % apart from "sdpa"'s, so autocast falls back.
    model = lora_model("llama")
    batch = padded_batch(model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sdpa_loss, sdpa_grads, _ = loss_grads_saved(model, batch)
        assert install_lean_attention(model)
        lean_loss, lean_grads, _ = loss_grads_saved(model, batch)
    remove_lean_attention(model)
    assert torch.equal(lean_loss, sdpa_loss)
    for name in sdpa_grads:
        assert torch.equal(lean_grads[name], sdpa_grads[name]), name


def test_without_a_mask_and_when_decoding_it_is_transformers_sdpa():
    model = tiny.make_model("llama").eval()
    ids = torch.randint(3, model.config.vocab_size, (1, 12))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        generated = model.generate(ids, max_new_tokens=4, do_sample=False)
        assert install_lean_attention(model)
        torch.testing.assert_close(model(input_ids=ids).logits, plain, rtol=0, atol=0)  # is_causal, no mask
        assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False), generated)  # one-token steps


def test_float_mask_made_once_per_mask_and_equal_to_torchs_conversion():
    mask = torch.rand(2, 1, 6, 6) > 0.3
    mask[..., 0] = True
    first = additive_mask(mask, torch.float32)
    assert additive_mask(mask, torch.float32) is first  # every layer gets the same tensor: kept once
    assert torch.equal(first, torch.where(mask, 0.0, float("-inf")))
    q, k, v = (torch.randn(2, 2, 6, 8) for _ in range(3))
    torch.testing.assert_close(torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=first),
                               torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask), rtol=0, atol=0)
    assert additive_mask(None, torch.float32) is None
    other = torch.zeros(1, 1, 2, 2)
    assert additive_mask(other, torch.float32) is other


def test_other_attention_implementations_are_left_alone():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny.make_config("llama"), attn_implementation="eager")
    assert not install_lean_attention(model)
    assert model.config._attn_implementation == "eager"
