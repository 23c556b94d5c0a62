"""core/lean_attention.py: training attention without grouped-query copies and per-layer float masks — the same
outputs and gradients as transformers' "sdpa" on packed and padded batches, less kept for the backward pass."""

from __future__ import annotations

import pytest
import tiny
import torch
from peft import LoraConfig, get_peft_model

from workbench.core.lean_attention import (ATTENTION_NAME, additive_mask, install_lean_attention, lean_sdpa_attention,
                                          remove_lean_attention)


def lora_model(arch: str, **overrides):
    model = tiny.make_model(arch, **overrides)
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


# Per-example attention on packed rows: one causal SDPA call per example instead of the whole row under a mask.

def collated_packed_rows(vocab: int, padded: bool) -> dict:
    """Rows of several examples each, batched by the engine's own PackedCollator; with ``padded`` the first row is
    shorter, so it ends in padding (its own restarting positions, labels -100) up to the longest row."""
    from workbench.core.data.collators import PackedCollator

    torch.manual_seed(3)
    lengths = [[7, 12, 5], [9, 4, 10, 7]] if padded else [[7, 12, 11], [9, 4, 10, 7]]
    rows = []
    for examples in lengths:
        ids = torch.randint(3, vocab, (sum(examples),)).tolist()
        rows.append({"input_ids": ids, "labels": ids,
                     "position_ids": torch.cat([torch.arange(n) for n in examples]).tolist()})
    batch = PackedCollator(0)(rows)
    assert batch["input_ids"].shape == (2, 30) and (batch["labels"][0, 24:] == -100).all() == padded
    return batch


@pytest.mark.parametrize("arch, kv_heads", [("llama", 2), ("qwen2", 2), ("llama", 4), ("phi3", 4)])
@pytest.mark.parametrize("padded", [False, True])
def test_packed_rows_run_per_example_with_sdpas_outputs_and_gradients(arch, kv_heads, padded, monkeypatch):
    import workbench.core.lean_attention as lean

    model = lora_model(arch, num_key_value_heads=kv_heads)
    batch = collated_packed_rows(model.config.vocab_size, padded)
    sdpa_loss, sdpa_grads, sdpa_saved = loss_grads_saved(model, batch)
    sdpa_logits = model(**batch).logits.detach()
    calls: list[tuple[tuple[int, ...], ...]] = []
    original = lean.per_example_attention

    def counted(query, key, value, segments, scaling):
        calls.append(segments)
        return original(query, key, value, segments, scaling)

    monkeypatch.setattr(lean, "per_example_attention", counted)
    assert install_lean_attention(model)
    lean_loss, lean_grads, lean_saved = loss_grads_saved(model, batch)
    torch.testing.assert_close(model(**batch).logits.detach(), sdpa_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lean_loss, sdpa_loss, rtol=1e-6, atol=1e-6)
    for name in sdpa_grads:
        torch.testing.assert_close(lean_grads[name], sdpa_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    first = (0, 7, 19, 24, 30) if padded else (0, 7, 19, 30)  # padding: a segment of its own
    assert calls and all(c == (first, (0, 9, 13, 23, 30)) for c in calls)  # every layer, every forward
    assert lean_saved < sdpa_saved  # no mask kept at all (nor, with GQA, repeated keys and values)


def block_causal(bounds_per_row: list[list[int]], length: int) -> torch.Tensor:
    mask = torch.zeros(len(bounds_per_row), 1, length, length, dtype=torch.bool)
    for b, bounds in enumerate(bounds_per_row):
        for s, e in zip(bounds, bounds[1:]):
            mask[b, 0, s:e, s:e] = torch.ones(e - s, e - s, dtype=torch.bool).tril()
    return mask


def test_segments_found_only_in_exactly_block_causal_masks():
    from workbench.core.lean_attention import block_causal_segments

    mask = block_causal([[0, 3, 8, 10], [0, 10]], 10)
    assert block_causal_segments(mask, 2, 10) == ((0, 3, 8, 10), (0, 10))
    assert block_causal_segments(mask, 2, 10) is mask._workbench_segments  # found once per mask
    leaky = block_causal([[0, 3, 8, 10], [0, 10]], 10)
    leaky[0, 0, 9, 1] = True  # a query of the third example sees the first: the sub-diagonal is unchanged
    assert block_causal_segments(leaky, 2, 10) is None
    padding = block_causal([[0, 10], [0, 10]], 10)
    padding[1, 0, :, 7:] = False  # padding columns, as transformers masks a padded row
    assert block_causal_segments(padding, 2, 10) is None
    window = block_causal([[0, 10]], 10) & torch.ones(10, 10, dtype=torch.bool).triu(-3)  # a sliding window
    assert block_causal_segments(window, 1, 10) is None
    bidirectional = block_causal([[0, 4, 10]], 10) | block_causal([[0, 4, 10]], 10).transpose(-1, -2)
    assert block_causal_segments(bidirectional, 1, 10) is None
    assert block_causal_segments(mask, 2, 9) is None  # the shape is checked before the kept segments are read
    other_shape = block_causal([[0, 3, 8, 10], [0, 10]], 10)
    assert block_causal_segments(other_shape[:, :, 2:], 2, 8) is None  # query length ≠ key length
    assert block_causal_segments(torch.where(other_shape, 0.0, float("-inf")), 2, 10) is None  # a float mask


class _Attention(torch.nn.Module):
    num_key_value_groups = 2


def test_a_mask_across_examples_keeps_the_whole_row_computation():
    # Every query also sees the row's first token (an attention sink, say): block-causal but for one column, and the
    # sub-diagonal the same as the packed mask's; per-example calls would drop that column.
    torch.manual_seed(4)
    q, k, v = torch.randn(2, 4, 12, 8), torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8)
    mask = block_causal([[0, 5, 12], [0, 7, 12]], 12)
    mask[:, 0, :, 0] = True
    out, _ = lean_sdpa_attention(_Attention(), q, k, v, mask, dropout=0.0, scaling=0.3)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1),
                                                                 v.repeat_interleave(2, 1), attn_mask=mask, scale=0.3)
    torch.testing.assert_close(out, reference.transpose(1, 2), rtol=1e-6, atol=1e-6)
    packed = block_causal([[0, 5, 12], [0, 7, 12]], 12)
    out, _ = lean_sdpa_attention(_Attention(), q, k, v, packed, dropout=0.0, scaling=0.3)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1),
                                                                 v.repeat_interleave(2, 1), attn_mask=packed, scale=0.3)
    torch.testing.assert_close(out, reference.transpose(1, 2), rtol=1e-6, atol=1e-6)
    assert packed._workbench_segments == ((0, 5, 12), (0, 7, 12))


def test_attention_dropout_keeps_one_call_over_the_row():
    # Per-example calls would draw other dropout masks than one call: with dropout the row is one masked call.
    torch.manual_seed(5)
    q, k, v = torch.randn(1, 4, 12, 8), torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 8)
    mask = block_causal([[0, 5, 12]], 12)
    torch.manual_seed(6)
    out, _ = lean_sdpa_attention(_Attention(), q, k, v, mask, dropout=0.5)
    torch.manual_seed(6)
    whole = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask(mask, q.dtype),
                                                             dropout_p=0.5, enable_gqa=True)
    assert torch.equal(out, whole.transpose(1, 2))
    assert getattr(mask, "_workbench_segments", None) is None  # not even looked for
