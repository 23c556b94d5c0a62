"""Attention for training steps on a CPU without transformers' grouped-query copies and per-layer float masks.

transformers' SDPA attention (``integrations/sdpa_attention.py``) copies a grouped-query model's keys and values
to one per query head (``repeat_kv``) whenever it passes a mask — and packed rows always have one (the per-example
block mask derived from restarting position ids). The copies are what the attention node keeps for the backward
pass: on SmolLM2-135M (9 query heads, 3 key/value heads) k and v kept as 2 × 2.25 KiB a token a layer instead
of 2 × 0.75. And torch turns a boolean mask into an additive float mask inside every SDPA call, kept by every
layer's node: ``4 × width`` bytes a token a layer (2 KiB at rows of 512).

Here, for the same computation: the boolean mask becomes one additive float mask per forward pass (cached on the
mask tensor, which transformers builds once and hands every layer), and a grouped-query call goes to torch's SDPA
with ``enable_gqa=True`` (its CPU flash kernel maps each query head to its key/value head; no copies).

Packed rows go further, GQA or not: when the mask is exactly the block-causal mask of consecutive segments of
each row (checked against the whole mask, once per forward, and the segments kept on the mask tensor), there is
no attention dropout and queries and keys are the same tokens, each example is one causal SDPA call of its own
(``is_causal=True``, no mask at all). The whole-row call computes every block across examples only to mask it
out: on SmolLM2's shapes, 3 rows of 512 with 3 examples each, one layer's forward + backward took 38 ms against
61 ms. A packed row's trailing padding (the packing collator gives it restarting positions, so transformers
masks it as one more example) is one more segment, computed as the mask computes it. Any other mask (padding
columns, a sliding window that bites, a bidirectional model, a query that sees nothing) keeps the paths below.
Every other call (no mask, one-token decoding, a model without grouped-query attention whose mask is not
block-causal, a position bias, softcap, autocast, another device) runs transformers' own SDPA attention function
with the mask exactly as transformers made it. tests/core/test_lean_attention.py compares outputs and gradients
with transformers' "sdpa".

Installed through transformers' public attention registry (``AttentionInterface.register``, with sdpa's mask
builder under the same name) and ``model.set_attn_implementation``; only for models whose attention is "sdpa".
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ATTENTION_NAME", "install_lean_attention", "remove_lean_attention"]

ATTENTION_NAME = "workbench_sdpa"
_ADDITIVE = "_workbench_additive_mask"  # the attribute on a boolean mask holding its float form
_SEGMENTS = "_workbench_segments"  # the attribute on a mask holding its rows' segments (() when not block-causal)


def install_lean_attention(model: Any) -> bool:
    """Switch ``model`` (a transformers model, or a PEFT model around one) from "sdpa" to Workbench's attention;
    True when it was switched. Models with another attention, or that cannot switch, keep theirs."""
    base = _transformers_model(model)
    if base is None or getattr(base.config, "_attn_implementation", None) != "sdpa":
        return False
    if not getattr(base, "_supports_sdpa", False) or not callable(getattr(base, "set_attn_implementation", None)):
        return False
    _register()
    try:
        base.set_attn_implementation(ATTENTION_NAME)
    except Exception:  # noqa: BLE001 — whatever a model's own switch raises, it keeps transformers' "sdpa"
        return False
    return getattr(base.config, "_attn_implementation", None) == ATTENTION_NAME


def remove_lean_attention(model: Any) -> None:
    """Put transformers' "sdpa" back on a model ``install_lean_attention`` switched."""
    base = _transformers_model(model)
    if base is not None and getattr(base.config, "_attn_implementation", None) == ATTENTION_NAME:
        base.set_attn_implementation("sdpa")


def _transformers_model(model: Any) -> Any:
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return model
    get_base = getattr(model, "get_base_model", None)  # a PEFT model
    base = get_base() if callable(get_base) else None
    return base if isinstance(base, PreTrainedModel) else None


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface

    from .compat import sdpa_mask_function

    # Registering is idempotent (it sets one entry of the registry), so there is nothing to ask it first.
    AttentionInterface.register(ATTENTION_NAME, lean_sdpa_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask_function())


def lean_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; ``[batch, length, heads, dim]`` out, as "sdpa" returns it."""
    from .compat import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    # Under autocast the gradients came out up to 0.7 % apart from "sdpa"'s (CPU bf16), so autocast keeps
    # transformers' path, as the fused LoRA forward does.
    usable = (attention_mask is not None and isinstance(groups, int) and groups >= 1 and query.device.type == "cpu"
              and not torch.is_autocast_enabled(query.device.type)
              and query.shape[2] > 1 and key.shape[-1] == value.shape[-1] and attention_mask.dim() == 4
              and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
              and not kwargs.get("output_attentions", False) and key.shape[1] * groups == query.shape[1])
    # One random draw per call: per-example calls would drop other weights than one call over the row does.
    segments = (block_causal_segments(attention_mask, query.shape[0], query.shape[2])
                if usable and dropout == 0.0 and key.shape[2] == query.shape[2] and _has_cpu_flash() else None)
    if segments is not None:
        return per_example_attention(query, key, value, segments, scaling), None
    if not (usable and groups > 1):  # exactly transformers' call, with the mask as transformers made it
        return sdpa_attention_forward()(module, query, key, value, attention_mask, dropout=dropout,
                                        scaling=scaling, is_causal=is_causal, **kwargs)
    mask = additive_mask(attention_mask, query.dtype)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                                           scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def per_example_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          segments: tuple[tuple[int, ...], ...], scaling: float | None) -> torch.Tensor:
    """Causal attention within each segment of each row (``segments[b]``: its boundaries, 0 first, length
    last) — what the block-causal mask of those segments computes, without the blocks' products across
    examples; ``[batch, length, heads, dim]`` out."""
    return _PerExampleAttention.apply(query, key, value, segments, scaling)


class _PerExampleAttention(torch.autograd.Function):
    """One CPU flash-attention call per segment, each written into one ``[batch, length, heads, dim]`` output
    (the layout the kernel returns and transformers' output projection takes without a copy), which is what
    the backward pass keeps with the segments' log-sum-exps — public ``scaled_dot_product_attention`` calls
    would keep their own outputs besides. Keys and values keep their own heads (the kernel maps query heads to
    them)."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,  # type: ignore[override]
                segments: tuple[tuple[int, ...], ...], scaling: float | None) -> torch.Tensor:
        kernel, _ = _cpu_flash()
        batch, heads, length, _dim = query.shape
        out = query.new_empty(batch, length, heads, value.shape[-1])
        lse = query.new_empty(batch, length, heads).transpose(1, 2)  # [batch, heads, length], as the kernel's
        for b, bounds in enumerate(segments):
            for s, e in zip(bounds, bounds[1:]):
                piece, piece_lse = kernel(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e],
                                          0.0, True, scale=scaling)
                out[b:b + 1, s:e].copy_(piece.transpose(1, 2))
                lse[b:b + 1, :, s:e].copy_(piece_lse)
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.segments, ctx.scaling = segments, scaling
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        _, kernel = _cpu_flash()
        query, key, value, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # [batch, length, heads, dim] as the output is
        grads = [torch.empty_like(t) for t in (query, key, value)]
        for b, bounds in enumerate(ctx.segments):
            for s, e in zip(bounds, bounds[1:]):
                span = (slice(b, b + 1), slice(None), slice(s, e))
                pieces = kernel(grad_out[b:b + 1, s:e].transpose(1, 2), query[span], key[span], value[span],
                                out[b:b + 1, s:e].transpose(1, 2), lse[span], 0.0, True, scale=ctx.scaling)
                for grad, piece in zip(grads, pieces):
                    grad[span].copy_(piece)
        return grads[0], grads[1], grads[2], None, None


def _has_cpu_flash() -> bool:
    from .compat import cpu_flash_attention

    return cpu_flash_attention() is not None


def _cpu_flash() -> tuple[Any, Any]:
    from .compat import cpu_flash_attention

    kernels = cpu_flash_attention()
    if kernels is None:  # lean_sdpa_attention asked _has_cpu_flash first
        raise RuntimeError("this torch has no CPU flash-attention kernel")
    return kernels


def block_causal_segments(mask: torch.Tensor, batch: int, length: int) -> tuple[tuple[int, ...], ...] | None:
    """Where ``mask`` (boolean, ``[batch, 1, length, length]``) is exactly causal within consecutive segments of
    each row and False across them — the mask transformers makes of packed rows' restarting positions — each
    row's segment boundaries (0, …, length); None for any other mask (padding columns, a sliding window that
    bites, bidirectional attention, a fully masked query). Found once per mask tensor (every layer gets the same
    one) and kept on it."""
    if mask.dtype != torch.bool or tuple(mask.shape) != (batch, 1, length, length):
        return None
    cached = getattr(mask, _SEGMENTS, None)
    if cached is not None:
        return cached or None
    rows = mask[:, 0]
    # A segment starts at 0 and wherever a query does not see the token just before it.
    starts = torch.ones(batch, length, dtype=torch.bool, device=mask.device)
    starts[:, 1:] = rows.diagonal(offset=-1, dim1=1, dim2=2).logical_not()
    segment = starts.cumsum(dim=1)
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril_()
    expected = (segment[:, :, None] == segment[:, None, :]) & causal
    segments: tuple[tuple[int, ...], ...] | None = None
    if torch.equal(rows, expected):  # the mask, not just its sub-diagonal: nothing seen across the segments
        segments = tuple(tuple(torch.nonzero(row).flatten().tolist()) + (length,) for row in starts)
    setattr(mask, _SEGMENTS, segments if segments is not None else ())
    return segments


def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean attention mask (True: attend) as the additive float mask torch's SDPA would make of it in each
    call (0 where True, −inf where False), made once per mask tensor and dtype; any other mask as it is."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    cached = getattr(mask, _ADDITIVE, None)
    if cached is not None and cached.dtype == dtype:
        return cached
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask.logical_not(), float("-inf"))
    setattr(mask, _ADDITIVE, additive)
    return additive
