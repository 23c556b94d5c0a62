"""Attention for training steps on a CPU without transformers' grouped-query copies and per-layer float masks.

transformers' SDPA attention (``integrations/sdpa_attention.py``) copies a grouped-query model's keys and values
to one per query head (``repeat_kv``) whenever it passes a mask — and packed rows always have one (the per-example
block mask derived from restarting position ids). The copies are what the attention node keeps for the backward
pass: on SmolLM2-135M (9 query heads, 3 key/value heads) k and v kept as 2 × 2.25 KiB a token a layer instead
of 2 × 0.75. And torch turns a boolean mask into an additive float mask inside every SDPA call, kept by every
layer's node: ``4 × width`` bytes a token a layer (2 KiB at rows of 512).

Here, for the same computation: the boolean mask becomes one additive float mask per forward pass (cached on the
mask tensor, which transformers builds once and hands every layer), and a grouped-query call goes to torch's SDPA
with ``enable_gqa=True`` (its CPU flash kernel maps each query head to its key/value head; no copies). Every
other call (no mask, one-token decoding, a position bias, softcap, autocast, another device) runs transformers'
own SDPA attention function with the mask exactly as transformers made it. tests/core/test_lean_attention.py compares outputs
and gradients with transformers' "sdpa".

Installed through transformers' public attention registry (``AttentionInterface.register``, with sdpa's mask
builder under the same name) and ``model.set_attn_implementation``; only for models whose attention is "sdpa".
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ATTENTION_NAME", "install_lean_attention", "remove_lean_attention"]

ATTENTION_NAME = "workbench_sdpa"
_ADDITIVE = "_workbench_additive_mask"  # the attribute on a boolean mask holding its float form


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
    own = (attention_mask is not None and isinstance(groups, int) and groups > 1 and query.device.type == "cpu"
           and not torch.is_autocast_enabled(query.device.type)
           and query.shape[2] > 1 and key.shape[-1] == value.shape[-1] and attention_mask.dim() == 4
           and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
           and not kwargs.get("output_attentions", False) and key.shape[1] * groups == query.shape[1])
    if not own:  # exactly transformers' call, with the mask as transformers made it
        return sdpa_attention_forward()(module, query, key, value, attention_mask, dropout=dropout,
                                        scaling=scaling, is_causal=is_causal, **kwargs)
    mask = additive_mask(attention_mask, query.dtype)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                                           scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


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
