"""The framework facts the engine, the memory estimate and the checkpoint checks rely on beyond
their frameworks' documented API (workbench/core/compat.py, "transformers (models)", "transformers (training)"):
each test fails, naming what changed, when a release moves or changes one of them.

- ``Trainer._save_checkpoint(model, trial)`` and ``Trainer._get_output_dir(trial)``: the atomic checkpoints of
  ``training.trainer.AtomicCheckpointTrainer`` point the second at a staging folder and call the first.
- ``PretrainedConfig._attn_implementation`` (``compat.attention_implementation``): the attention activations.
- ``transformers.trainer_pt_utils.safe_globals`` (``compat.trainer_load_allowlist``): the checkpoint load check.
- the "sdpa" entries of ``AttentionInterface`` / ``AttentionMaskInterface`` (``compat.sdpa_attention_forward``,
  ``compat.sdpa_mask_function``): the training attention of core/lean_attention.py.
- ``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` and its ``_backward``
  (``compat.cpu_flash_attention``): lean_attention's per-example attention on packed rows.
"""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny
from workbench.core import compat


# ------------------------------------------------------------------------------------- Trainer checkpoints


def test_trainer_saves_a_checkpoint_into_the_folder_get_output_dir_names(tmp_path):
    from transformers import Trainer, TrainingArguments

    for name, params in (("_save_checkpoint", ["self", "model", "trial"]), ("_get_output_dir", ["self", "trial"])):
        assert hasattr(Trainer, name), f"transformers.Trainer.{name} is gone: rework training/trainer.py"
        assert list(inspect.signature(getattr(Trainer, name)).parameters) == params, \
            f"transformers.Trainer.{name} changed its parameters: check training/trainer.py"

    asked: list = []

    class Redirected(Trainer):
        def _get_output_dir(self, trial):
            asked.append(trial)
            return str(tmp_path / "staging")

    args = TrainingArguments(output_dir=str(tmp_path / "final"), use_cpu=True, report_to="none", save_strategy="steps",
                             save_steps=1, disable_tqdm=True)
    trainer = Redirected(model=tiny.make_model("llama"), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=3)  # a checkpoint holds their state too
    trainer.state.global_step = 3
    trainer._save_checkpoint(trainer.model, trial=None)

    assert asked, "Trainer._save_checkpoint no longer asks _get_output_dir where to save: checkpoints are not atomic"
    written = tmp_path / "staging" / "checkpoint-3"
    assert (written / "trainer_state.json").is_file() and (written / "model.safetensors").is_file(), \
        f"Trainer._save_checkpoint did not write checkpoint-3 into the folder _get_output_dir named: {written}"
    assert not (tmp_path / "final" / "checkpoint-3").exists(), "the checkpoint was (also) written to args.output_dir"


# ------------------------------------------------------------------------------------ attention kernel


def test_attention_implementation_is_the_one_the_model_was_built_with():
    from transformers import AutoModelForCausalLM

    cfg = tiny.make_config("llama")
    assert hasattr(cfg, "_attn_implementation"), "PretrainedConfig._attn_implementation is gone: rework compat"
    for kernel in ("eager", "sdpa"):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=kernel)
        assert compat.attention_implementation(model.config) == kernel


# ------------------------------------------------------------------------ attention while training


def test_sdpa_attention_function_and_mask_builder_are_transformers_sdpa():
    """core/lean_attention.py hands every case it does not compute to transformers' "sdpa" function (its
    signature and its [batch, length, heads, dim] output) and registers sdpa's mask builder (boolean masks)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    forward = compat.sdpa_attention_forward()
    assert forward is sdpa_attention_forward, "the 'sdpa' attention registry entry changed: check lean_attention"
    assert list(inspect.signature(forward).parameters)[:5] == ["module", "query", "key", "value", "attention_mask"]
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True
    q, k = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8)
    out, weights = forward(module, q, k, k, torch.ones(1, 1, 5, 5, dtype=torch.bool), scaling=None)
    assert out.shape == (1, 5, 4, 8) and weights is None
    assert compat.sdpa_mask_function() is sdpa_mask, "the 'sdpa' mask registry entry changed: check lean_attention"


def test_cpu_flash_attention_kernels_are_what_sdpa_computes_with_grouped_query_heads():
    """lean_attention's per-example attention calls the CPU flash kernel and its backward itself (causal, key/value
    heads fewer than query heads): the same output, logsumexp and gradients as ``scaled_dot_product_attention``'s
    own autograd."""
    kernels = compat.cpu_flash_attention()
    assert kernels is not None, "torch's CPU flash-attention ops moved: lean_attention's per-example path is off"
    forward, backward = kernels
    torch.manual_seed(0)
    q = torch.randn(1, 6, 9, 8, requires_grad=True)
    k, v = (torch.randn(1, 2, 9, 8, requires_grad=True) for _ in range(2))
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.4, enable_gqa=True)
    grad = torch.randn_like(reference)
    reference.backward(grad)
    with torch.no_grad():
        out, lse = forward(q, k, v, 0.0, True, scale=0.4)
        assert out.shape == (1, 6, 9, 8) and lse.shape == (1, 6, 9)
        torch.testing.assert_close(out, reference, rtol=0, atol=0)
        scores = (q @ k.repeat_interleave(3, 1).transpose(-1, -2) * 0.4).masked_fill(
            torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf"))
        torch.testing.assert_close(lse, scores.logsumexp(-1), rtol=1e-5, atol=1e-5)
        grads = backward(grad, q, k, v, out, lse, 0.0, True, scale=0.4)
    for mine, tensor in zip(grads, (q, k, v)):
        assert mine.shape == tensor.shape
        torch.testing.assert_close(mine, tensor.grad, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ checkpoint load allowlist


def test_trainer_load_allowlist_admits_the_numpy_rng_state_the_trainer_saves(tmp_path):
    path = tmp_path / "rng_state.pth"
    torch.save({"numpy": np.random.get_state(), "cpu": torch.get_rng_state()}, path)
    with pytest.raises(pickle.UnpicklingError):  # what the allowlist is for: plain weights_only refuses numpy
        torch.load(path, weights_only=True)
    with compat.trainer_load_allowlist():
        state = torch.load(path, weights_only=True)
    assert state["numpy"][0] == "MT19937"


def test_every_private_name_compat_reads_is_named_in_a_test_here():
    """A new entry in compat.py gets its test: every function there is either tested in this file or in
    test_compat_models.py / test_compat_data.py."""
    here = Path(__file__).parent
    tests = "".join((here / f).read_text() for f in ("test_compat_training.py", "test_compat_models.py",
                                                      "test_compat_data.py"))
    functions = [n for n, f in inspect.getmembers(compat, inspect.isfunction) if f.__module__ == compat.__name__]
    assert functions and all(f"{n}(" in tests for n in functions), \
        [n for n in functions if f"{n}(" not in tests]
