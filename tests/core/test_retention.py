"""The knowledge-retention meter on a tiny model trained to overfit: retention must fall, and its numbers must equal
a direct computation of the same quantities with the saved adapter."""

from __future__ import annotations

import json

import pytest
import torch

from test_training import make_config  # noqa: E402  (tests/core is on sys.path through pytest's rootdir)
from workbench.core import events as ev
from workbench.core.retention import general_prompts, reference_texts
from workbench.core.training import run


def test_the_shipped_reference_set_is_there():
    texts, prompts = reference_texts(), general_prompts()
    assert len(texts) >= 70 and len(prompts) >= 20
    assert "The capital of France is Paris." in texts and not any(t.startswith("#") for t in texts + prompts)


def direct_text_loss(model, tokenizer, texts) -> float:
    """Mean token cross-entropy, one text at a time with the model's own loss (no batching, no padding)."""
    total = count = 0.0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text, add_special_tokens=True)["input_ids"]])
            if ids.shape[1] < 2:
                continue
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / count


def test_retention_falls_when_the_model_overfits_and_equals_a_direct_computation(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tiny_model_dir("llama", initializer_range=0.3)
    data = tmp_path / "same.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}:", "completion": " zzzz zzzz zzzz"}) + "\n" for i in range(8)))
    config = make_config(model_dir, tmp_path, max_steps=12, batch_size=8, learning_rate=3e-2, eval_steps=6).copy_with(
        data={"train_files": [str(data)], "validation_files": [str(data)], "packing": False},
        eval={"retention": True, "retention_warn_below": 0.95})
    sink = ev.ListSink()
    result = run(config, sink)
    evaluations = [e for e in sink.events if isinstance(e, ev.Evaluation)]
    assert [e.step for e in evaluations] == [0, 6, 12]
    first, last = evaluations[0].metrics, evaluations[-1].metrics
    assert first["retention_ppl_ratio"] == pytest.approx(1.0, abs=1e-5), "the zero-initialised adapter is the base"
    assert first["retention_agreement"] >= 0.95
    assert last["retention_text_loss"] > first["retention_text_loss"] and last["retention_ppl_ratio"] > 1.05
    assert last["retention_agreement"] < first["retention_agreement"]
    assert any(isinstance(e, ev.Message) and e.level == "warning" and "it is forgetting what it knew" in e.text
               for e in sink.events)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = reference_texts()
    assert first["retention_text_loss"] == pytest.approx(direct_text_loss(base, tokenizer, texts), rel=1e-5)
    trained = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    assert last["retention_text_loss"] == pytest.approx(direct_text_loss(trained, tokenizer, texts), rel=1e-5)


def test_retention_without_validation_data_says_why_it_cannot_run(tiny_model_dir, tmp_path):
    config = make_config(tiny_model_dir("llama"), tmp_path, max_steps=1).copy_with(eval={"retention": True})
    sink = ev.ListSink()
    run(config, sink)
    assert any(isinstance(e, ev.Message) and "eval.retention: the meter runs at each evaluation" in e.text
               for e in sink.events)
