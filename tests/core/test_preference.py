"""Preference training through TRL on a tiny model: DPO and ORPO raise the chosen-vs-rejected margin, the adapter
loads with PEFT alone, and the reference is the base with the adapter disabled (no second model in memory)."""

import json

import pytest
import torch

from workbench.core import events as ev
from workbench.core.config import RunConfig
from workbench.core.errors import DataError
from workbench.core.training import run

pytest.importorskip("trl")

PAIRS = [
    ("Capital of France?", " Paris.", " the lazy dog"),
    ("Two plus two?", " four.", " brown fox jumps"),
    ("Translate cat to French.", " chat", " the quick fox"),
    ("Capital of Italy?", " Rome.", " lazy brown dog"),
]
STEPS = 12


def make_config(base, tmp_path, method="dpo", rows=None):
    path = tmp_path / "pairs.jsonl"
    rows = rows if rows is not None else [{"question": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return RunConfig.from_dict({
        "model": {"source": str(base)},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "preset": "attention"},
        "data": {"train_files": [str(path)], "max_length": 64, "columns": {"prompt": "question"}},
        "training": {"method": method, "beta": 0.1, "max_steps": STEPS, "learning_rate": 1e-2, "batch_size": 4,
                     "warmup_ratio": 0.0, "scheduler": "constant", "device": "cpu"},
        "output": {"runs_root": str(tmp_path / "runs")},
    })


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_training_raises_the_margin_and_saves_a_peft_adapter(method, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = tiny_model_dir("llama", initializer_range=0.3)
    sink = ev.ListSink()
    result = run(make_config(base, tmp_path, method), sink)
    steps = sink.of(ev.Step)
    assert len(steps) == STEPS
    # TRL's own numbers, passed on with each step: the chosen answer's reward pulls away from the rejected one's
    margins = [s.metrics["rewards/margins"] for s in steps]
    assert margins[-1] > margins[0] + 0.5, margins
    assert steps[-1].metrics["rewards/accuracies"] == 1.0
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), result.adapter_dir)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(torch.count_nonzero(p) for p in lora_b), "the adapter was trained"


def test_the_reference_is_the_base_without_a_second_model(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from workbench.core import preference
    from workbench.core.training.trainer import AtomicCheckpointTrainer

    base = tiny_model_dir("llama", initializer_range=0.3)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj"]))
    data = preference.prepare_preference(make_config(base, tmp_path).data, "dpo")
    args = preference.trainer_arguments("dpo", TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True,
                                                                 report_to="none"), 0.1, 64)
    trainer = preference.trainer_class("dpo", AtomicCheckpointTrainer)(
        model=model, args=args, train_dataset=data.train, processing_class=AutoTokenizer.from_pretrained(base))
    assert trainer.ref_model is None  # TRL then scores the reference with the adapter disabled
    in_memory = sum(p.numel() for p in trainer.model.parameters())
    assert in_memory == sum(p.numel() for p in model.parameters()), "no parameters beyond the one PEFT model"


def test_a_row_without_rejected_names_the_column(tiny_model_dir, tmp_path):
    rows = [{"question": "a", "chosen": "b"}]
    with pytest.raises(DataError, match="line 1: there is no column 'rejected'"):
        run(make_config(tiny_model_dir("llama"), tmp_path, rows=rows), ev.ListSink())


def test_a_stopped_dpo_run_resumes_onto_the_uninterrupted_curve(tiny_model_dir, tmp_path):
    from resuming import step_metric, stopped_resumed_and_straight

    config = make_config(tiny_model_dir("llama", initializer_range=0.3), tmp_path).copy_with(
        training={"max_steps": 6, "save_steps": 2, "batch_size": 2})
    stopped, resumed, straight = stopped_resumed_and_straight(config, 2, tmp_path)
    assert stopped.status == "stopped" and stopped.final_step == 2
    assert resumed.final_step == 6
    checkpoints = sorted((stopped.run_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and all((c / "adapter_model.safetensors").is_file() for c in checkpoints)
    assert not [c for c in checkpoints if (c / "ref").exists()], "TRL's reference copy is rebuilt, not checkpointed"
    assert len(step_metric(stopped.run_dir, "rewards/margins")) == 6
    assert step_metric(stopped.run_dir, "rewards/margins") == pytest.approx(step_metric(straight.run_dir, "rewards/margins"),
                                                                           rel=1e-4, abs=1e-6)


def test_kto_learns_from_answers_marked_good_or_bad(tiny_model_dir, tmp_path):
    rows = [{"question": p, "completion": c, "label": True} for p, c, _ in PAIRS]
    rows += [{"question": p, "completion": r, "label": "false"} for p, _, r in PAIRS]
    sink = ev.ListSink()
    result = run(make_config(tiny_model_dir("llama", initializer_range=0.3), tmp_path, "kto", rows=rows)
                 .copy_with(training={"batch_size": 8}), sink)
    assert result.status == "finished"
    losses = [s.loss for s in sink.of(ev.Step)]
    assert losses[-1] < 0.5 * losses[0], losses
    with pytest.raises(DataError, match="the label 'maybe' .* must be true"):
        run(make_config(tiny_model_dir("llama"), tmp_path, "kto",
                        rows=[{"question": "a", "completion": "b", "label": "maybe"}]), ev.ListSink())
