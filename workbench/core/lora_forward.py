"""PEFT's LoRA linear forward without its full-width elementwise passes; PEFT's modules and adapters unchanged.

PEFT computes ``result = base(x) + lora_B(lora_A(dropout(x))) * scaling``: after the B product, one multiply
and one add run over the full ``[tokens, out_features]`` output, and the backward pass multiplies the full-width
gradient by the scale once more. (In one step's op profile on the CPU, such ``mul`` / ``add`` ops were 27 % of
self time.) Here the scale is applied to the rank-wide tensor ``lora_A(dropout(x))`` (``r`` columns, not
``out_features``) and the B product is added into the base output by one ``addmm``, whose GEMM accumulates
into its input (``beta = 1``): ``addmm(base(x), scaling · lora_A(dropout(x)), lora_Bᵀ)``. Measured for one
SmolLM2-135M MLP projection (2,048 tokens, 576 → 1,536, r = 16) forward + backward on one CPU thread,
interleaved medians of 9: 698 ms against PEFT's 772 ms (min 591 / 627 ms).

Only the ``forward`` of each plain ``peft.tuners.lora.Linear`` instance is replaced, so the model is still a
PEFT model: the same modules, parameters, state dict and saved adapter. The faster path is taken only where
it is the same computation (to fp32 rounding: tests/core/test_lora_forward.py compares outputs and gradients
with PEFT's forward): one active plain-LoRA adapter (no DoRA or other variant, no LoRA bias), not merged, not
disabled, an ``nn.Linear`` base layer, no extra forward arguments, and one dtype for input, base output and
adapter weights. Anything else — and every call PEFT's flags change later (``disable_adapter()``,
``merge``, ``set_adapter``) — runs PEFT's own forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

__all__ = ["install_fused_lora_forward", "remove_fused_lora_forward"]

_PEFT_FORWARD = "_workbench_peft_forward"  # the instance attribute keeping PEFT's bound forward


def install_fused_lora_forward(model: nn.Module) -> int:
    """Give every plain LoRA ``Linear`` of ``model`` the fused forward; returns how many modules got it."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and type(module.base_layer) is nn.Linear and not getattr(module, _PEFT_FORWARD, None):
            setattr(module, _PEFT_FORWARD, module.forward)
            module.forward = types.MethodType(_fused_forward, module)  # type: ignore[method-assign]
            count += 1
    return count


def remove_fused_lora_forward(model: nn.Module) -> None:
    """Put PEFT's own forward back on every module ``install_fused_lora_forward`` changed."""
    for module in model.modules():
        if getattr(module, _PEFT_FORWARD, None) is not None:
            del module.forward  # the class's forward shows through again
            delattr(module, _PEFT_FORWARD)


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    name = _fast_adapter(self, x, args, kwargs)
    if name is None:
        return getattr(self, _PEFT_FORWARD)(x, *args, **kwargs)
    result = self.base_layer(x)
    lora_a, lora_b = self.lora_A[name], self.lora_B[name]
    narrow = lora_a(self.lora_dropout[name](x)) * self.scaling[name]  # [..., r]: the scale costs r columns here
    if narrow.dtype != result.dtype:  # autocast made the base output narrower than the adapter's: PEFT's rounding
        return getattr(self, _PEFT_FORWARD)(x, *args, **kwargs)
    out = torch.addmm(result.reshape(-1, result.shape[-1]), narrow.reshape(-1, narrow.shape[-1]),
                      lora_b.weight.t().to(result.dtype))
    return out.view(result.shape)


def _fast_adapter(self: Any, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
    """The one active adapter when the fused path computes what PEFT's forward would, else None."""
    if args or kwargs or self.disable_adapters or self.merged:
        return None
    active = [a for a in self.active_adapters if a in self.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in self.lora_variant or self.lora_B[name].bias is not None:  # DoRA and other variants; LoRA bias
        return None
    weight = self.lora_A[name].weight
    if x.dtype != weight.dtype or self.base_layer.weight.dtype != weight.dtype or self.lora_B[name].weight.dtype != weight.dtype:
        return None  # PEFT casts the input to the adapter's dtype and the sum back: keep its rounding
    return name
