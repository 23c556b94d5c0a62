"""PEFT's LoRA linear forward without its full-width elementwise passes; PEFT's modules and adapters unchanged.

PEFT computes ``result = base(x) + lora_B(lora_A(dropout(x))) * scaling``: after the B product, one multiply
and one add run over the full ``[tokens, out_features]`` output, and the backward pass multiplies the full-width
gradient by the scale once more. (In one step's op profile on the CPU, such ``mul`` / ``add`` ops were 27 % of
self time.) Here the scale is applied to the rank-wide tensor ``lora_A(dropout(x))`` (``r`` columns, not
``out_features``) and the B product is added into the base output by one ``addmm``, whose GEMM accumulates
into its input (``beta = 1``): ``addmm(base(x), scaling · lora_A(dropout(x)), lora_Bᵀ)``. Measured for one
SmolLM2-135M MLP projection (2,048 tokens, 576 → 1,536, r = 16) forward + backward on one CPU thread,
interleaved medians of 9: 698 ms against PEFT's 772 ms (min 591 / 627 ms).

For a frozen base layer without autocast, base product, dropout and LoRA are one autograd node
(``_LoraLinear``) that keeps for the backward pass only the input, the rank-wide product and the dropout's keep
mask as booleans; PEFT keeps ``dropout(x)`` and a float mask per adapted module, both as wide as the input (with
dropout 0.05 on SmolLM2-135M, all-linear: 0.69× PEFT's saved activations, ``bench/step_memory.py``). On a CPU
the mask is drawn exactly as the dropout kernel draws it, so it is PEFT's mask for the same seed.

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
    lora_a, lora_b, dropout = self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
    base = self.base_layer
    if _one_function_fits(x, base, dropout):
        keep = None
        if type(dropout) is nn.Dropout and dropout.training and dropout.p > 0:
            # The keep mask drawn as booleans (1 byte an element) by the same random draw as the CPU dropout
            # kernel's (``bernoulli_(1 - p)``): the same mask as PEFT's dropout(x) on a CPU. The dropout's scale
            # 1 / (1 - p) goes into the rank-wide tensor with the LoRA scale.
            keep = torch.empty(x.shape, dtype=torch.bool, device=x.device).bernoulli_(1 - dropout.p)
            keep = keep.reshape(-1, x.shape[-1])
        scaling = float(self.scaling[name]) * (_keep_scale(dropout, x.dtype) if keep is not None else 1.0)
        shape = x.shape[:-1] + (base.out_features,)
        out = _LoraLinear.apply(x.reshape(-1, x.shape[-1]), base.weight, base.bias, lora_a.weight, lora_b.weight,
                                scaling, keep)
        return out.view(shape)
    result = base(x)
    narrow = lora_a(dropout(x)) * self.scaling[name]  # [..., r]: the scale costs r columns here
    if narrow.dtype != result.dtype:  # autocast made the base output narrower than the adapter's: PEFT's rounding
        return getattr(self, _PEFT_FORWARD)(x, *args, **kwargs)
    out = torch.addmm(result.reshape(-1, result.shape[-1]), narrow.reshape(-1, narrow.shape[-1]),
                      lora_b.weight.t().to(result.dtype))
    return out.view(result.shape)


def _one_function_fits(x: torch.Tensor, base: nn.Linear, dropout: nn.Module) -> bool:
    """Whether ``_LoraLinear`` computes this call: a frozen base (its weight and bias get no gradient), no
    autocast (which would change the rounding of each product), and a dropout that is plain ``nn.Dropout`` or
    none at all."""
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return False
    if torch.is_autocast_enabled(x.device.type):
        return False
    return type(dropout) is nn.Identity or (type(dropout) is nn.Dropout and dropout.p < 1)


def _keep_scale(dropout: nn.Dropout, dtype: torch.dtype) -> float:
    """The value dropout gives a kept element, ``1 / (1 - p)`` rounded as the dropout kernel rounds it."""
    return float(torch.ones((), dtype=dtype).div_(1 - dropout.p))


class _LoraLinear(torch.autograd.Function):
    """``x @ Wᵀ + bias + (s · (x ⊙ keep) @ Aᵀ) @ Bᵀ`` for a frozen base ``W``, as one autograd node; ``s`` is the
    LoRA scale times the dropout's ``1 / (1 - p)``, ``keep`` the dropout's boolean keep mask (None: no dropout).

    What it keeps for the backward pass: the input ``x`` (the same tensor for the q, k and v projections, and
    often kept by the layer anyway), the rank-wide ``s · (x ⊙ keep) @ Aᵀ`` and the keep mask (1 byte an element).
    PEFT keeps, per adapted module, ``dropout(x)`` and the dropout's float mask, each as wide as ``x``: with
    dropout on, most of a LoRA model's saved activations. ``x ⊙ keep`` is recomputed in the backward pass (one
    elementwise product).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scaling: float, keep: torch.Tensor | None) -> torch.Tensor:
        narrow = torch.mm(x if keep is None else x * keep, lora_a.t()).mul_(scaling)  # [n, r]
        out = torch.nn.functional.linear(x, weight, bias)
        out.addmm_(narrow, lora_b.t())
        ctx.save_for_backward(x, weight, lora_a, lora_b, narrow, keep)
        ctx.scaling = scaling
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        x, weight, lora_a, lora_b, narrow, keep = ctx.saved_tensors
        wants_x, wants_a, wants_b = ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        grad = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_a = grad_b = None
        if wants_b:
            grad_b = torch.mm(grad.t(), narrow)
        if wants_x or wants_a:
            grad_narrow = torch.mm(grad, lora_b).mul_(ctx.scaling)  # d((x ⊙ keep) @ Aᵀ)
            if wants_a:
                grad_a = torch.mm(grad_narrow.t(), x if keep is None else x * keep)
            if wants_x:
                grad_x = torch.mm(grad_narrow, lora_a)
                if keep is not None:
                    grad_x.mul_(keep)
                grad_x.addmm_(grad, weight)
        return grad_x, None, None, grad_a, grad_b, None, None


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
