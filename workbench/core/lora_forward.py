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

__all__ = ["install_fused_lora_forward", "remove_fused_lora_forward", "fused_forward_modules"]

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
    for module in model.modules():
        if _is_gated_silu_mlp(module) and not getattr(module, _PEFT_FORWARD, None):
            setattr(module, _PEFT_FORWARD, module.forward)
            module.forward = types.MethodType(_gated_mlp_forward, module)
        elif type(module).__name__ in RMS_NORMS and not getattr(module, _PEFT_FORWARD, None):
            setattr(module, _PEFT_FORWARD, module.forward)
            module.forward = types.MethodType(_rms_norm_forward, module)
    return count


def remove_fused_lora_forward(model: nn.Module) -> None:
    """Put PEFT's own forward back on every module ``install_fused_lora_forward`` changed."""
    for module in model.modules():
        if getattr(module, _PEFT_FORWARD, None) is not None:
            del module.forward  # the class's forward shows through again
            delattr(module, _PEFT_FORWARD)


def fused_forward_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` whose forward ``install_fused_lora_forward`` replaced."""
    return [module for module in model.modules() if getattr(module, _PEFT_FORWARD, None) is not None]


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    name = _fast_adapter(self, x, args, kwargs)
    if name is None:
        return getattr(self, _PEFT_FORWARD)(x, *args, **kwargs)
    lora_a, lora_b, dropout = self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
    base = self.base_layer
    if _one_function_fits(x, base, dropout):
        norm = getattr(x, _NORM_SOURCE, None)  # x is an RMSNorm's output: keep the norm's input instead
        keep, redraw = _keep_mask(dropout, x)  # booleans; the dropout's 1 / (1 - p) goes into the rank-wide tensor
        scaling = float(self.scaling[name]) * (_keep_scale(dropout, x.dtype) if keep is not None else 1.0)
        shape = x.shape[:-1] + (base.out_features,)
        out = _LoraLinear.apply(x.reshape(-1, x.shape[-1]), base.weight, base.bias, lora_a.weight, lora_b.weight,
                                scaling, keep, redraw, norm)
        return out.view(shape)
    result = base(x)
    narrow = lora_a(dropout(x)) * self.scaling[name]  # [..., r]: the scale costs r columns here
    if narrow.dtype != result.dtype:  # autocast made the base output narrower than the adapter's: PEFT's rounding
        return getattr(self, _PEFT_FORWARD)(x, *args, **kwargs)
    out = torch.addmm(result.reshape(-1, result.shape[-1]), narrow.reshape(-1, narrow.shape[-1]),
                      lora_b.weight.t().to(result.dtype))
    return out.view(result.shape)


# MLPs computing ``down_proj(silu(gate_proj(x)) * up_proj(x))`` (transformers' own forward, checked by the tests
# for each): the gated product is recomputed in the backward pass instead of kept (with its SiLU: 2 of the 4
# intermediate-wide tensors a LoRA MLP keeps per token).
GATED_SILU_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP"})


def _is_gated_silu_mlp(module: nn.Module) -> bool:
    if type(module).__name__ not in GATED_SILU_MLPS:
        return False
    act = getattr(module, "act_fn", None)
    return type(act) is nn.SiLU or type(act).__name__ == "SiLUActivation"


def _gated_mlp_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    down = self.down_proj
    name = _fast_adapter(down, x, args, kwargs) if getattr(down, _PEFT_FORWARD, None) is not None else None
    if name is None or not _one_function_fits(x, down.base_layer, down.lora_dropout[name]):
        return getattr(self, _PEFT_FORWARD)(x, *args, **kwargs)
    gate, up = self.gate_proj(x), self.up_proj(x)  # PEFT's order: gate's dropout mask is drawn before up's
    if gate.dtype != x.dtype or up.dtype != x.dtype:
        return down(self.act_fn(gate) * up)
    dropout = down.lora_dropout[name]
    keep, redraw = _keep_mask(dropout, gate)
    scaling = float(down.scaling[name]) * (_keep_scale(dropout, x.dtype) if keep is not None else 1.0)
    base = down.base_layer
    out = _GatedLoraLinear.apply(gate.reshape(-1, gate.shape[-1]), up.reshape(-1, up.shape[-1]), base.weight,
                                 base.bias, down.lora_A[name].weight, down.lora_B[name].weight, scaling, keep, redraw)
    return out.view(*x.shape[:-1], base.out_features)


def _keep_mask(dropout: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, _Redraw | None]:
    """The dropout's keep mask for ``x`` as booleans ``[tokens, features]`` (None without dropout), and on a CPU how
    to draw it again. Drawn as the CPU dropout kernel draws its mask (``bernoulli_(1 - p)``), so on a CPU it is
    PEFT's mask for the same seed.

    On a CPU the mask is drawn from a private generator started at the default generator's state, which is then
    moved on as the draw moved it (so every later draw is what it would have been). The nodes keep that state
    (5 KB) instead of the mask (1 byte an element: 4.9 KiB a token a SmolLM2 layer) and draw the same mask again
    in the backward pass. The mask itself is always right (it comes from the private generator), but reading and
    moving the default generator is not atomic: a draw by another thread in between (sampling in the playground
    while a run trains in the same process) would repeat this one's numbers and be undone by the ``set_state``."""
    if not (type(dropout) is nn.Dropout and dropout.training and dropout.p > 0):
        return None, None
    if x.device.type != "cpu":
        keep = torch.empty(x.shape, dtype=torch.bool, device=x.device).bernoulli_(1 - dropout.p)
        return keep.reshape(-1, x.shape[-1]), None
    generator = torch.Generator()
    state = torch.default_generator.get_state()
    generator.set_state(state)
    keep = torch.empty(x.shape, dtype=torch.bool).bernoulli_(1 - dropout.p, generator=generator)
    torch.default_generator.set_state(generator.get_state())
    return keep.reshape(-1, x.shape[-1]), _Redraw(state, tuple(x.shape), 1 - dropout.p)


class _Redraw:
    """A CPU dropout keep mask as the generator state it was drawn from: ``mask()`` draws it again."""

    __slots__ = ("state", "shape", "keep_p")

    def __init__(self, state: torch.Tensor, shape: tuple[int, ...], keep_p: float):
        self.state, self.shape, self.keep_p = state, shape, keep_p

    def mask(self) -> torch.Tensor:
        generator = torch.Generator()
        generator.set_state(self.state)
        keep = torch.empty(self.shape, dtype=torch.bool).bernoulli_(self.keep_p, generator=generator)
        return keep.reshape(-1, self.shape[-1])


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
                lora_b: torch.Tensor, scaling: float, keep: torch.Tensor | None, redraw: _Redraw | None,
                norm: _NormSource | None) -> torch.Tensor:
        narrow = torch.mm(x if keep is None else x * keep, lora_a.t()).mul_(scaling)  # [n, r]
        out = torch.nn.functional.linear(x, weight, bias)
        out.addmm_(narrow, lora_b.t())
        ctx.save_for_backward(x if norm is None else norm.hidden, weight, lora_a, lora_b, narrow,
                              None if redraw is not None else keep)
        ctx.scaling, ctx.redraw = scaling, redraw
        ctx.norm = None if norm is None else (norm.weight, norm.eps)  # the input itself goes through save_for_backward
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        x, weight, lora_a, lora_b, narrow, keep = ctx.saved_tensors
        if ctx.redraw is not None:
            keep = ctx.redraw.mask()
        if ctx.norm is not None:  # x was the norm's output: computed again from the norm's input (saved anyway)
            with torch.no_grad():
                x = _rms_norm(x, *ctx.norm).reshape(-1, lora_a.shape[1])
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
        return grad_x, None, None, grad_a, grad_b, None, None, None, None


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


class _GatedLoraLinear(torch.autograd.Function):
    """``_LoraLinear`` of ``h = silu(gate) * up`` (a gated MLP's down projection), keeping ``gate`` and ``up``
    (which the node needs anyway) and recomputing ``h`` in the backward pass, instead of keeping SiLU's output,
    ``h`` and ``gate`` beside ``up`` as the separate ops do."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, keep: torch.Tensor | None,
                redraw: _Redraw | None) -> torch.Tensor:
        h = torch.nn.functional.silu(gate).mul_(up)
        narrow = torch.mm(h if keep is None else h * keep, lora_a.t()).mul_(scaling)
        out = torch.nn.functional.linear(h, weight, bias)
        del h
        out.addmm_(narrow, lora_b.t())
        ctx.save_for_backward(gate, up, weight, lora_a, lora_b, narrow, None if redraw is not None else keep)
        ctx.scaling, ctx.redraw = scaling, redraw
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        gate, up, weight, lora_a, lora_b, narrow, keep = ctx.saved_tensors
        if ctx.redraw is not None:
            keep = ctx.redraw.mask()
        grad = grad.reshape(-1, grad.shape[-1])
        sig = torch.sigmoid(gate)
        act = gate * sig  # silu(gate)
        grad_b = torch.mm(grad.t(), narrow) if ctx.needs_input_grad[5] else None
        grad_narrow = torch.mm(grad, lora_b).mul_(ctx.scaling)
        grad_a = None
        if ctx.needs_input_grad[4]:
            h = act * up
            if keep is not None:
                h.mul_(keep)
            grad_a = torch.mm(grad_narrow.t(), h)
            del h
        grad_h = torch.mm(grad_narrow, lora_a)
        if keep is not None:
            grad_h.mul_(keep)
        grad_h.addmm_(grad, weight)
        grad_up = grad_h * act if ctx.needs_input_grad[1] else None
        grad_gate = None
        if ctx.needs_input_grad[0]:  # d silu(g) / dg = sig · (1 + g · (1 - sig))
            grad_gate = grad_h.mul_(up).mul_(sig.mul_(1 + gate - act))  # sig + g·sig − g·sig² = sig·(1 + g − act)
        return grad_gate, grad_up, None, None, grad_a, grad_b, None, None, None


# RMSNorms computing ``weight * (h * rsqrt(mean(h²) + eps))`` in fp32, cast back (transformers' own forward, the same
# in each; the tests compare with it). Their output feeds the q/k/v and gate/up projections, each of which keeps it
# for its LoRA A gradient: here the norm's output carries its input (which the norm keeps anyway), and the LoRA
# nodes keep that and compute the output again in the backward pass (2.25 KiB a token a norm on SmolLM2).
RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"})
_NORM_SOURCE = "_workbench_norm_source"  # the attribute on a norm's output naming its input


def _rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm forward, op for op (so that computing it again gives the same bits)."""
    input_dtype = hidden.dtype
    h = hidden.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(input_dtype)


class _NormSource:
    """An RMSNorm's input, weight and epsilon, carried by its output (as long as the output lives: the forward pass)
    to the LoRA nodes that take it, which keep the input (through ``save_for_backward``) instead of the output."""

    __slots__ = ("hidden", "weight", "eps")

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, eps: float):
        self.hidden, self.weight, self.eps = hidden, weight, eps


def _rms_norm_forward(self: Any, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if args or kwargs or not torch.is_grad_enabled() or torch.is_autocast_enabled(hidden.device.type) \
            or not hidden.requires_grad:
        return getattr(self, _PEFT_FORWARD)(hidden, *args, **kwargs)
    out = _RMSNorm.apply(hidden, self.weight, float(self.variance_epsilon))
    setattr(out, _NORM_SOURCE, _NormSource(hidden, self.weight, float(self.variance_epsilon)))
    return out


class _RMSNorm(torch.autograd.Function):
    """transformers' RMSNorm as one node keeping only its input (the separate ops keep the input and 1 / rms); the
    backward pass runs the same ops again under autograd, so the gradients are theirs."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(hidden, weight)
        ctx.eps = eps
        return _rms_norm(hidden, weight, eps)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        hidden, weight = ctx.saved_tensors
        wants_weight = ctx.needs_input_grad[1]
        with torch.enable_grad():
            h = hidden.detach().requires_grad_()
            w = weight.detach().requires_grad_(wants_weight)
            out = _rms_norm(h, w, ctx.eps)
            grads = torch.autograd.grad(out, (h, w) if wants_weight else (h,), grad)
        return grads[0], grads[1] if wants_weight else None, None
