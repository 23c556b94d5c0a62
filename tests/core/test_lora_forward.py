"""core/lora_forward.py: the fused LoRA forward against PEFT's own — the same outputs and gradients (input and
adapter weights), the same state dict, and PEFT's forward wherever PEFT's flags ask for something else."""

from __future__ import annotations

import pytest
import tiny
import torch
from peft import LoraConfig, get_peft_model

from workbench.core.lora_forward import install_fused_lora_forward, remove_fused_lora_forward


def lora_model(arch: str, dropout: float = 0.0, **lora):
    model = tiny.make_model(arch)
    model.config.use_cache = False
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=dropout,
                                                  **lora))
    torch.manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)  # B = 0 at init: the LoRA path would add nothing
    return peft_model.train()


def loss_and_grads(model, ids):
    model.zero_grad()
    torch.manual_seed(3)  # the same dropout masks on both paths
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "phi3", "gpt_neox", "opt"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_outputs_and_gradients_equal_pefts_forward(arch, dropout):
    model = lora_model(arch, dropout)
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    peft_loss, peft_grads = loss_and_grads(model, ids)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert install_fused_lora_forward(model) > 0
    fused_loss, fused_grads = loss_and_grads(model, ids)
    torch.testing.assert_close(fused_loss, peft_loss, rtol=1e-6, atol=1e-6)
    assert fused_grads.keys() == peft_grads.keys()
    for name in peft_grads:
        torch.testing.assert_close(fused_grads[name], peft_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    assert any(g.abs().max() > 0 for n, g in peft_grads.items() if "lora_A" in n)
    new_state = model.state_dict()  # the same modules and tensors: still a PEFT model and a PEFT adapter
    assert new_state.keys() == state.keys() and all(torch.equal(new_state[k], state[k]) for k in state)
    remove_fused_lora_forward(model)
    again_loss, _ = loss_and_grads(model, ids)
    torch.testing.assert_close(again_loss, peft_loss, rtol=0, atol=0)


def test_input_gradient_of_one_layer_equals_pefts():
    from peft.tuners.lora.layer import Linear as LoraLinear

    model = lora_model("llama")
    layer = next(m for m in model.modules() if type(m) is LoraLinear)
    x = torch.randn(3, 5, layer.in_features, requires_grad=True)
    g = torch.randn(3, 5, layer.out_features)
    peft_out = layer(x)
    (peft_dx,) = torch.autograd.grad(peft_out, x, g)
    install_fused_lora_forward(model)
    fused_out = layer(x)
    (fused_dx,) = torch.autograd.grad(fused_out, x, g)
    torch.testing.assert_close(fused_out, peft_out)
    torch.testing.assert_close(fused_dx, peft_dx)


def test_pefts_flags_still_decide_disabled_merged_and_variants():
    model = lora_model("llama")
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    model.eval()
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        adapted = model(input_ids=ids).logits
        install_fused_lora_forward(model)
        with model.disable_adapter():
            torch.testing.assert_close(model(input_ids=ids).logits, base)
        torch.testing.assert_close(model(input_ids=ids).logits, adapted)
        model.merge_adapter()  # merged: the base layer alone, as PEFT does
        torch.testing.assert_close(model(input_ids=ids).logits, adapted, rtol=1e-5, atol=1e-5)
        model.unmerge_adapter()
    assert not torch.allclose(base, adapted)

    dora = lora_model("llama", use_dora=True)  # DoRA's forward is PEFT's variant: left to PEFT
    with torch.no_grad():
        expected = dora(input_ids=ids).logits
        install_fused_lora_forward(dora)
        torch.testing.assert_close(dora(input_ids=ids).logits, expected, rtol=0, atol=0)


def test_gpt2_conv1d_layers_keep_pefts_forward():
    assert install_fused_lora_forward(lora_model("gpt2")) == 0  # Conv1D base layers (stored in × out)


def test_one_autograd_node_keeps_no_mask_and_no_dropout_copies():
    """With dropout on, the fused path saves x and the rank-wide product per module — never a float copy of
    dropout(x), and on a CPU not even the boolean mask (redrawn from its generator state in the backward pass) —
    and is the node the output hangs from."""
    model = lora_model("llama", dropout=0.1)
    ids = torch.randint(0, model.config.vocab_size, (2, 24))

    def saved(m):
        params = {p.untyped_storage().data_ptr() for p in m.parameters()}
        storages: dict[int, tuple] = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                storages[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), t.dtype)
            return t

        torch.manual_seed(3)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(input_ids=ids, labels=ids)
        return storages

    peft_saved = saved(model)
    install_fused_lora_forward(model)
    fused_saved = saved(model)
    assert sum(n for n, _ in fused_saved.values()) < 0.8 * sum(n for n, _ in peft_saved.values())
    assert not any(dtype == torch.bool for _, dtype in fused_saved.values())
    from peft.tuners.lora.layer import Linear as LoraLinear

    layer = next(m for m in model.modules() if type(m) is LoraLinear)
    out = layer(torch.randn(2, 5, layer.in_features))
    assert type(out.grad_fn.next_functions[0][0]).__name__ == "_LoraLinearBackward"  # under the view back to 3-d


def test_dropout_mask_is_pefts_for_the_same_seed_and_keeps_its_rate():
    from peft.tuners.lora.layer import Linear as LoraLinear

    model = lora_model("llama", dropout=0.25)
    layer = next(m for m in model.modules() if type(m) is LoraLinear)
    x = torch.randn(64, 40, layer.in_features)
    torch.manual_seed(5)
    peft_out = layer(x)
    install_fused_lora_forward(model)
    torch.manual_seed(5)
    fused_out = layer(x)
    torch.testing.assert_close(fused_out, peft_out, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the LoRA part alone: zero where the mask drops an input column's contribution
        layer.base_layer.weight.zero_()
        lora_b = layer.lora_B["default"].weight
        lora_b.copy_(torch.eye(*lora_b.shape))
        layer.lora_A["default"].weight.copy_(torch.eye(*layer.lora_A["default"].weight.shape))
        xs = torch.ones(200, 50, layer.in_features)
        kept = (layer(xs)[..., :4] != 0).float().mean()  # output column j = scale · x_j · keep_j for j < r
    assert abs(float(kept) - 0.75) < 0.01


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_gated_mlp_recomputes_its_product_and_matches_pefts(arch):
    """silu(gate) * up is one node with the down projection (kept: gate and up only); an MLP's output and its
    input gradient equal PEFT's with dropout on."""
    model = lora_model(arch, dropout=0.2)
    mlp = next(m for m in model.modules() if type(m).__name__.endswith("MLP"))
    x = torch.randn(2, 7, model.config.hidden_size, requires_grad=True)
    g = torch.randn(2, 7, model.config.hidden_size)
    torch.manual_seed(9)
    peft_out = mlp(x)
    (peft_dx,) = torch.autograd.grad(peft_out, x, g)
    install_fused_lora_forward(model)
    torch.manual_seed(9)
    fused_out = mlp(x)
    assert type(fused_out.grad_fn.next_functions[0][0]).__name__ == "_GatedLoraLinearBackward"
    (fused_dx,) = torch.autograd.grad(fused_out, x, g)
    torch.testing.assert_close(fused_out, peft_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_dx, peft_dx, rtol=1e-5, atol=1e-6)
    with model.disable_adapter():  # PEFT's flags still decide: the base MLP alone
        base = mlp(x)
    remove_fused_lora_forward(model)
    with model.disable_adapter():
        torch.testing.assert_close(mlp(x), base, rtol=0, atol=0)


def test_redrawn_mask_survives_other_draws_and_leaves_the_generator_where_pefts_does():
    """The backward pass draws the forward's mask again from a private generator: reseeding or drawing from the
    default generator between forward and backward changes nothing, and after the forward the default
    generator stands where PEFT's forward leaves it (every later draw the same)."""
    model = lora_model("llama", dropout=0.3)
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    torch.manual_seed(4)
    loss = model(input_ids=ids, labels=ids).loss
    peft_next = torch.rand(3)
    loss.backward()
    peft_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    install_fused_lora_forward(model)
    model.zero_grad()
    torch.manual_seed(4)
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.equal(torch.rand(3), peft_next)
    torch.manual_seed(123)
    torch.rand(1000)
    loss.backward()
    for name, grad in peft_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-5, atol=1e-7, msg=name)
