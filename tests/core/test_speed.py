"""core/speed.py: the fused AdamW the engine runs for training.optimizer = "adamw_torch" is the same optimizer."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments

from workbench.core.speed import optimizer_for_device


def test_plain_adamw_becomes_the_fused_one_where_the_device_has_it_and_other_choices_stay():
    assert optimizer_for_device("adamw_torch", "cpu") == "adamw_torch_fused"
    assert optimizer_for_device("adamw_torch", "cuda") == "adamw_torch_fused"
    assert optimizer_for_device("adamw_torch", "mps") == "adamw_torch"
    for other in ("adamw_torch_fused", "sgd", "adafactor", "adamw_bnb_8bit", "paged_adamw_8bit"):
        assert optimizer_for_device(other, "cuda") == other


def trainer_optimizer(name: str, tmp_path, params):
    args = TrainingArguments(output_dir=str(tmp_path), optim=name, learning_rate=1e-2, weight_decay=0.1, use_cpu=True,
                             report_to="none")
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    return cls(params, **kwargs), kwargs


@pytest.mark.parametrize("device", ["cpu"])
def test_the_fused_adamw_takes_the_same_steps_as_the_plain_one(tmp_path, device):
    torch.manual_seed(0)
    start = [torch.randn(16, 64), torch.randn(96, 16), torch.randn(7)]
    plain = [torch.nn.Parameter(t.clone()) for t in start]
    fused = [torch.nn.Parameter(t.clone()) for t in start]
    plain_opt, plain_kwargs = trainer_optimizer("adamw_torch", tmp_path, plain)
    fused_opt, fused_kwargs = trainer_optimizer(optimizer_for_device("adamw_torch", device), tmp_path, fused)
    assert fused_kwargs.get("fused") is True and not plain_kwargs.get("fused")
    for step in range(5):
        grads = [torch.randn_like(t) * (step + 1) for t in start]
        for params, opt in ((plain, plain_opt), (fused, fused_opt)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for p, q in zip(plain, fused):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    assert not torch.equal(plain[0], start[0])  # it moved
