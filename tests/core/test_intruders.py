"""Intruder-dimension reduction on a tiny model trained to overfit: the trade-off's numbers equal direct computations
(intruder counts from our own SVDs, task loss and retention from the model's own loss), λ = 1 is the adapter as
trained, and the saved reduced adapter is the one that was measured."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from test_retention import direct_text_loss  # noqa: E402  (tests/core is on sys.path through pytest's rootdir)
from test_training import make_config  # noqa: E402
from workbench.core import events as ev
from workbench.core.errors import WorkbenchError
from workbench.core.intruders import (
    intruder_trade_off, load_run_model, reduce_intruders, save_reduced_adapter,
)
from workbench.core.retention import RetentionProbe, general_prompts, reference_texts
from workbench.core.training import run


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("intruders")
    data = tmp / "same.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}:", "completion": " zzzz zzzz zzzz"}) + "\n" for i in range(8)))
    config = make_config(tiny_model_dir("llama", initializer_range=0.3), tmp, max_steps=12, batch_size=8,
                         learning_rate=3e-2).copy_with(
        data={"train_files": [str(data)], "validation_files": [str(data)], "packing": False})
    return run(config, ev.ListSink()).run_dir


def count_intruders(peft_model, top_k: int, epsilon: float) -> int:
    """Top-k left singular vectors of W + ΔW whose best |cosine| with any of W's is below epsilon, summed over the
    adapted modules (the paper's definition, computed here with plain torch)."""
    total = 0
    for module in peft_model.modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            weight = module.get_base_layer().weight.detach().double()
            delta = (module.lora_B["default"].weight @ module.lora_A["default"].weight).double() * module.scaling["default"]
            u_base = torch.linalg.svd(weight, full_matrices=False).U
            u_merged = torch.linalg.svd(weight + delta, full_matrices=False).U
            best = (u_merged.T @ u_base).abs().max(dim=1).values[:top_k]
            total += int((best < epsilon).sum())
    return total


def direct_task_loss(model, pairs) -> float:
    """Mean loss over the answer tokens, one pair at a time with the model's own loss (prompt tokens masked)."""
    total = count = 0.0
    with torch.no_grad():
        for prompt, answer in pairs:
            ids = torch.tensor([prompt + answer])
            labels = ids.clone()
            labels[0, : len(prompt)] = -100
            total += float(model(input_ids=ids, labels=labels).loss) * len(answer)
            count += len(answer)
    return total / count


def test_the_trade_off_equals_direct_computations_and_the_saved_adapter_is_the_one_measured(trained_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = load_run_model(trained_run)
    assert len(loaded.task_pairs) == 8
    texts = reference_texts()
    probe = RetentionProbe.build(loaded.model, loaded.tokenizer, texts, general_prompts(), max_new_tokens=8)
    trade = intruder_trade_off(loaded.model, loaded.tokenizer, probe, loaded.task_pairs, lambdas=(1.0, 0.5, 0.0))
    kept, half, removed = trade.points

    assert [p.mitigation_lambda for p in trade.points] == [1.0, 0.5, 0.0]
    assert kept.intruders == count_intruders(loaded.model, 10, 0.5) > 0, "an overfit adapter has intruders"
    assert loaded.model.active_adapter == "default" and set(loaded.model.peft_config) == {"default"}
    assert kept.task_loss == pytest.approx(direct_task_loss(loaded.model, loaded.task_pairs), rel=1e-5)
    assert kept.retention_text_loss == pytest.approx(direct_text_loss(loaded.model, loaded.tokenizer, texts), rel=1e-5)
    with loaded.model.disable_adapter():
        assert trade.base_task_loss == pytest.approx(direct_task_loss(loaded.model, loaded.task_pairs), rel=1e-5)
    # Removing the intruder dimensions gives back knowledge and costs task loss: the trade-off the window draws.
    assert removed.retention_text_loss < kept.retention_text_loss
    assert removed.task_loss > kept.task_loss

    # λ = 1 keeps ΔW = s·B@A of every module (PEFT refits it at the same rank).
    reduce_intruders(loaded.model, mitigation_lambda=1.0)
    for module in loaded.model.modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            assert torch.allclose(module.get_delta_weight("intruders_reduced"), module.get_delta_weight("default"),
                                  atol=1e-5)
    loaded.model.set_adapter("default")
    loaded.model.delete_adapter("intruders_reduced")

    adapter_file = trained_run / "adapter" / "adapter_model.safetensors"
    before = hashlib.sha256(adapter_file.read_bytes()).hexdigest()
    out = save_reduced_adapter(loaded.model, tmp_path / "reduced", mitigation_lambda=0.5)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    assert hashlib.sha256(adapter_file.read_bytes()).hexdigest() == before, "the trained adapter is untouched"
    assert not list(tmp_path.glob(".tmp-*")), "no temporary folder left behind"
    base = AutoModelForCausalLM.from_pretrained(loaded.config.model.source, dtype=torch.float32).eval()
    reloaded = PeftModel.from_pretrained(base, out).eval()
    assert direct_text_loss(reloaded, loaded.tokenizer, texts) == pytest.approx(half.retention_text_loss, rel=1e-5)
    assert direct_task_loss(reloaded, loaded.task_pairs) == pytest.approx(half.task_loss, rel=1e-5)

    with pytest.raises(WorkbenchError, match="already exists"):
        save_reduced_adapter(loaded.model, out, mitigation_lambda=0.5)


def test_bad_lambdas_and_missing_adapters_are_refused(trained_run, tmp_path):
    loaded = load_run_model(trained_run)
    with pytest.raises(WorkbenchError, match=r"mitigation λ 1.5 is outside 0…1"):
        intruder_trade_off(loaded.model, loaded.tokenizer, None, [], lambdas=(1.5,))
    with pytest.raises(WorkbenchError, match="has no final adapter"):
        load_run_model(tmp_path)


def test_the_command_prints_the_trade_off_and_saves_the_chosen_lambda(trained_run, tmp_path, capsys):
    from workbench.cli import main
    from workbench.core.intruders import run_trade_off

    out = tmp_path / "reduced"
    assert main(["reduce-intruders", str(trained_run), "--lambdas", "1,0", "--out", str(out), "--save-lambda", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    _, trade = run_trade_off(trained_run, lambdas=(1.0, 0.0))
    rows = [line.split() for line in printed if line[:1] in "10" and "in" in line.split()]
    assert [(float(r[0]), int(r[1]), float(r[4])) for r in rows] == [
        (p.mitigation_lambda, p.intruders, float(f"{p.task_loss:.4g}")) for p in trade.points]
    assert (out / "adapter_model.safetensors").is_file() and f"saved the adapter reduced at λ = 0 to {out}" in printed[-1]
    assert main(["reduce-intruders", str(trained_run), "--lambdas", "1,x"]) == 2
    assert "--lambdas '1,x': not a list of numbers" in capsys.readouterr().err
