"""The chunked loss on supervised positions (core/loss.py) against the model's own loss: the same loss and the same
LoRA gradients to fp32 rounding, on padded and on packed batches the real preparation produces, and never a
``[batch, seq, vocab]`` logits tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny
import torch
from peft import LoraConfig, get_peft_model
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from workbench.core import data
from workbench.core import loss as loss_module
from workbench.core.config import DataConfig
from workbench.core.loss import HeadlessCausalLM, LossCounts, chunked_loss_head, count_supervised, supervised_token_loss

ARCHS = list(tiny.CAUSAL_ARCHS)


def prepared_batch(tmp_path: Path, tok, *, packing: bool, model_type: str) -> dict:
    rows = [{"prompt": "Question: what is two plus two? " * (i % 3 + 1), "completion": "Answer: four." * (i % 2 + 1)}
            for i in range(6)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(train_files=[str(path)], packing=packing, max_length=96)
    prepared = data.prepare(cfg, tok, cache_dir=tmp_path / "cache", model_type=model_type)
    collator = data.make_collator(tok, packing=prepared.packed, model_type=model_type)
    return collator(list(prepared.train))


def lora_model(arch: str):
    model = tiny.make_model(arch)
    model.config.use_cache = False
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    # B = 0 at init would make every LoRA A gradient zero: give B values so both gradients are compared.
    torch.manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    return peft_model.train()


def loss_and_grads(peft_model, batch: dict, *, chunked: bool, num_items=None):
    peft_model.zero_grad()
    torch.manual_seed(2)  # the same dropout masks for both paths (GPT-2 and OPT configs have dropout on)
    inputs = {**batch}
    if num_items is not None:
        inputs["num_items_in_batch"] = num_items
    if chunked:
        found = chunked_loss_head(peft_model)
        assert found is not None
        loss = HeadlessCausalLM(peft_model, *found)(**inputs)["loss"]
    else:
        loss = peft_model(**inputs).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("packing", [False, True])
def test_chunked_loss_and_lora_gradients_equal_the_models_own(tmp_path, arch, packing):
    tok = tiny.make_tokenizer()
    model_type = tiny.make_config(arch).model_type
    batch = prepared_batch(tmp_path, tok, packing=packing, model_type=model_type)
    if packing and model_type in data.PADDING_FREE_MODEL_TYPES:
        assert "position_ids" in batch  # really packed: several examples per row
    model = lora_model(arch)
    for num_items in (None, torch.tensor(57)):  # mean over this batch / the Trainer's count over accumulated batches
        plain_loss, plain_grads = loss_and_grads(model, batch, chunked=False, num_items=num_items)
        chunked_loss, chunked_grads = loss_and_grads(model, batch, chunked=True, num_items=num_items)
        torch.testing.assert_close(chunked_loss, plain_loss, rtol=1e-5, atol=1e-6)
        assert plain_grads.keys() == chunked_grads.keys() and plain_grads
        for name in plain_grads:
            torch.testing.assert_close(chunked_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
        assert any(g.abs().max() > 0 for g in plain_grads.values())
    assert type(model.get_base_model().get_output_embeddings()) is torch.nn.Linear  # the head is back in place


def test_head_and_bias_gradients_equal_plain_cross_entropy_across_many_chunks():
    torch.manual_seed(0)
    hidden = torch.randn(3, 11, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    bias = torch.randn(50, requires_grad=True)
    labels = torch.randint(0, 50, (3, 11))
    labels[0, :4] = -100
    labels[2, 7:] = -100

    plain = F.cross_entropy((hidden @ weight.T + bias)[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1))
    plain_grads = torch.autograd.grad(plain * 3, (hidden, weight, bias))
    chunked = supervised_token_loss(hidden, labels, weight, bias, chunk_rows=4)  # 22 rows: six chunks
    chunked_grads = torch.autograd.grad(chunked * 3, (hidden, weight, bias))  # a non-unit upstream gradient
    torch.testing.assert_close(chunked, plain)
    for ours, theirs in zip(chunked_grads, plain_grads):
        torch.testing.assert_close(ours, theirs)


class _LargestLogits(TorchDispatchMode):
    """Records the largest tensor produced whose last dimension is the vocabulary (views of the model's
    weights, such as the transposed head in a matmul, are not logits and are left out)."""

    def __init__(self, vocab: int, model):
        super().__init__()
        self.vocab, self.largest = vocab, 0
        self.weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if (isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[-1] == self.vocab
                    and t.untyped_storage().data_ptr() not in self.weights):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_as_large_as_the_full_logits_is_built(tmp_path, monkeypatch):
    tok = tiny.make_tokenizer()
    batch = prepared_batch(tmp_path, tok, packing=False, model_type="llama")
    model = lora_model("llama")
    vocab = model.config.vocab_size
    full = batch["input_ids"].numel() * vocab
    head = chunked_loss_head(model)
    assert head is not None
    monkeypatch.setattr(loss_module, "CHUNK_BYTES", 16 * 4 * vocab)  # chunks of 16 rows
    with _LargestLogits(vocab, model) as watch:
        model(**batch).loss.backward()
    assert watch.largest >= full  # the plain path does build them (the watch sees them)
    with _LargestLogits(vocab, model) as watch:
        loss = HeadlessCausalLM(model, *head)(**batch)["loss"]
        loss.backward()
    assert int((batch["labels"][:, 1:] != -100).sum()) > 16  # several chunks
    assert watch.largest == 16 * vocab


def test_models_whose_head_is_not_a_plain_projection_keep_their_own_loss():
    model = lora_model("llama")
    assert chunked_loss_head(model) is not None
    with_head = get_peft_model(tiny.make_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    assert chunked_loss_head(with_head) is None  # a LoRA on the head: its forward is more than weight @ h
    bert = tiny.make_model("bert")
    assert chunked_loss_head(bert) is None


def test_counts_of_trained_tokens_and_examples():
    # Padded: row 0 trains on 2 positions, row 1 on 3, row 2 on none (all masked): 2 examples.
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, 8, 9, -100], [-100] * 5])
    tokens, examples = count_supervised(labels)
    assert (int(tokens), int(examples)) == (5, 2)
    # Packed: one row with examples of lengths 3 and 4 (first label of each -100) and 2 padding positions.
    labels = torch.tensor([[-100, 1, 2, -100, -100, 3, 4, -100, -100]])
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0, 1]])
    tokens, examples = count_supervised(labels, position_ids)
    assert (int(tokens), int(examples)) == (4, 2)
    counts = LossCounts()
    counts.add({"labels": labels, "position_ids": position_ids})
    counts.add({"labels": labels, "position_ids": position_ids})
    assert counts.take() == (8, 4)
    assert counts.take() == (0, 0)


@pytest.mark.parametrize("packing", [True, False])
def test_a_training_run_with_the_chunked_loss_follows_the_plain_losss_curve(tiny_model_dir, tmp_path, monkeypatch, packing):
    """Two real runs, the engine's chunked loss and the model's own (chunked loss switched off for every model
    type), with gradient accumulation (the Trainer's token count over micro-batches): the same loss at every
    step and the same adapter. The Step events count every trained token and example of the epoch."""
    from safetensors.torch import load_file

    from workbench.core import events as ev
    from workbench.core.config import RunConfig
    from workbench.core.models import load_tokenizer, resolve_source
    from workbench.core.training import run

    model_dir = tiny_model_dir("llama", initializer_range=0.3)
    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?", "completion": f"Answer: {2 * i}." * (1 + i % 3)}
            for i in range(12)]
    train_file = tmp_path / "qa.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def train(name: str):
        cfg = RunConfig.from_dict({
            "model": {"source": str(model_dir)},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "preset": "all-linear"},
            "data": {"train_files": [str(train_file)], "max_length": 48, "packing": packing},
            "training": {"epochs": 1.0, "learning_rate": 1e-2, "batch_size": 2, "gradient_accumulation": 2,
                         "warmup_ratio": 0.0, "device": "cpu", "logging_steps": 1},
            "output": {"run_dir": str(tmp_path / name)},
        })
        sink = ev.ListSink()
        result = run(cfg, sink)
        return cfg, sink.of(ev.Step), load_file(result.adapter_dir / "adapter_model.safetensors")

    cfg, chunked_steps, chunked_adapter = train("chunked")
    monkeypatch.setattr(loss_module, "CHUNKED_LOSS_MODEL_TYPES", frozenset())
    _, plain_steps, plain_adapter = train("plain")
    assert len(chunked_steps) == len(plain_steps) >= 2
    torch.testing.assert_close([s.loss for s in chunked_steps], [s.loss for s in plain_steps], rtol=1e-5, atol=1e-6)
    assert chunked_steps[-1].loss != chunked_steps[0].loss  # it trained
    # AdamW divides by the root of the second moment, so an element whose gradient is near zero turns fp32 rounding
    # into a visible step: after a dozen steps at lr 1e-2 a few of the weights (~1e-2) differ by ~2e-5.
    for key in plain_adapter:
        torch.testing.assert_close(chunked_adapter[key], plain_adapter[key], rtol=1e-3, atol=1e-4)

    tok = load_tokenizer(resolve_source(str(model_dir)))
    prepared = data.prepare(cfg.data, tok, seed=cfg.training.seed, model_type="llama")
    assert prepared.packed == packing
    supervised = sum(sum(1 for y in labels[1:] if y != -100) for labels in prepared.train["labels"])
    for steps in (chunked_steps, plain_steps):
        assert steps[-1].trained_tokens_seen == supervised  # every position that carried loss in the epoch
        assert all(s.trained_tokens_per_second and s.examples_per_second for s in steps)
        assert steps[-1].trained_tokens_seen < steps[-1].tokens_seen  # prompts carry no loss
