"""The two-stage recipe: a tiny SFT run, then a DPO run from its adapter (model.init_adapter). The DPO run trains
the SFT adapter on (its rank comes from the adapter), its reference is the SFT model itself (rewards and margin 0,
loss log 2 at the first step, though the policy is not the base), the margin grows, and PEFT loads the result."""

import json
import math

import pytest

from workbench.core import events as ev
from workbench.core.config import ConfigError, RunConfig

from workbench.core.training import run

pytest.importorskip("trl")

PAIRS = [
    ("Capital of France?", " Paris.", " the lazy dog"),
    ("Two plus two?", " four.", " brown fox jumps"),
    ("Translate cat to French.", " chat", " the quick fox"),
    ("Capital of Italy?", " Rome.", " lazy brown dog"),
]


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    base = tiny_model_dir("llama", initializer_range=0.3)
    path = tmp / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c, _ in PAIRS), encoding="utf-8")
    result = run(RunConfig.from_dict({
        "model": {"source": str(base)},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "preset": "attention"},
        "data": {"train_files": [str(path)], "max_length": 64},
        "training": {"max_steps": 4, "learning_rate": 1e-2, "batch_size": 4, "scheduler": "constant", "device": "cpu"},
        "output": {"runs_root": str(tmp / "runs")},
    }), ev.ListSink())
    return base, result


def dpo_config(base, tmp_path, init_adapter=None, lora=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS),
                    encoding="utf-8")
    return RunConfig.from_dict({
        "model": {"source": str(base), **({"init_adapter": str(init_adapter)} if init_adapter else {})},
        "lora": lora if lora is not None else {"dropout": 0.0},
        "data": {"train_files": [str(path)], "max_length": 64},
        "training": {"method": "dpo", "beta": 0.1, "max_steps": 6, "learning_rate": 1e-2, "batch_size": 4,
                     "scheduler": "constant", "device": "cpu"},
        "output": {"runs_root": str(tmp_path / "runs")},
    })


def test_dpo_from_an_sft_adapter_uses_it_as_policy_and_reference(sft_run, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base, sft = sft_run
    sink = ev.ListSink()
    result = run(dpo_config(base, tmp_path, init_adapter=sft.adapter_dir), sink)
    steps = sink.of(ev.Step)
    first = steps[0]
    # The first step's loss is DPO's value for a policy equal to its reference: -log σ(0) = log 2, margin 0
    assert first.loss == pytest.approx(math.log(2), abs=1e-5)
    assert first.metrics["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert first.metrics["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert steps[-1].metrics["rewards/margins"] > first.metrics["rewards/margins"] + 0.5

    # … while the policy is the SFT model, not the base: a fresh adapter scores the chosen answers otherwise
    fresh = ev.ListSink()
    run(dpo_config(base, tmp_path / "fresh", lora={"r": 8, "alpha": 16, "dropout": 0.0, "preset": "attention"})
        .copy_with(training={"max_steps": 1}), fresh)
    assert fresh.of(ev.Step)[0].metrics["logps/chosen"] != pytest.approx(first.metrics["logps/chosen"], abs=1e-3)

    # The rank, alpha and modules came from the SFT adapter (the run's [lora] gave none) and run.toml records them
    recorded = RunConfig.from_toml(result.run_dir / "run.toml").lora
    assert (recorded.r, recorded.alpha) == (8, 16.0)
    assert set(recorded.target_modules) == set(json.loads((sft.adapter_dir / "adapter_config.json").read_text())
                                               ["target_modules"])
    assert sorted(p.name for p in result.adapter_dir.iterdir() if p.is_dir()) == [], "no adapter/ref: TRL's copy"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), result.adapter_dir)
    assert model.peft_config["default"].r == 8
    trained = load_file(result.adapter_dir / "adapter_model.safetensors")
    started = load_file(sft.adapter_dir / "adapter_model.safetensors")
    assert trained.keys() == started.keys()
    assert any(not trained[k].equal(started[k]) for k in trained), "the SFT adapter was trained on"


def test_a_lora_section_that_contradicts_the_adapter_is_refused(sft_run, tmp_path):
    base, sft = sft_run
    with pytest.raises(ConfigError, match=r"lora.r = 4, but the adapter .* has 8"):
        run(dpo_config(base, tmp_path, init_adapter=sft.adapter_dir, lora={"r": 4}), ev.ListSink())
    with pytest.raises(ConfigError, match="lora.blocks"):
        run(dpo_config(base, tmp_path, init_adapter=sft.adapter_dir, lora={"blocks": "0"}), ev.ListSink())
    assert not (tmp_path / "runs").exists(), "refused before a run folder is made"


def test_a_run_folder_names_its_adapter_and_a_missing_one_is_named(sft_run, tmp_path):
    from workbench.core.init_adapter import adapter_folder

    base, sft = sft_run
    assert adapter_folder(str(sft.run_dir)) == sft.adapter_dir
    with pytest.raises(ConfigError, match="no such folder"):
        run(dpo_config(base, tmp_path, init_adapter=tmp_path / "nowhere"), ev.ListSink())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no adapter_config.json"):
        run(dpo_config(base, tmp_path, init_adapter=tmp_path / "empty"), ev.ListSink())


def test_the_reference_is_a_frozen_copy_of_the_starting_adapter(sft_run, tmp_path):
    """What the two-stage run relies on in TRL: given a PEFT model (no ref_model), its trainer copies the adapter
    into a frozen "ref" adapter — one adapter's parameters more, not a second base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from workbench.core import init_adapter, preference
    from workbench.core.training.trainer import AtomicCheckpointTrainer

    base, sft = sft_run
    model = init_adapter.load_trainable(AutoModelForCausalLM.from_pretrained(base), str(sft.adapter_dir))
    before = sum(p.numel() for p in model.parameters())
    adapter_size = sum(p.numel() for n, p in model.named_parameters() if ".default." in n)
    data = preference.prepare_preference(dpo_config(base, tmp_path).data, "dpo")
    args = preference.trainer_arguments("dpo", TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True,
                                                                 report_to="none"), 0.1, 64)
    trainer = preference.trainer_class("dpo", AtomicCheckpointTrainer)(
        model=model, args=args, train_dataset=data.train, processing_class=AutoTokenizer.from_pretrained(base))
    assert trainer.ref_model is None
    params = dict(trainer.model.named_parameters())
    refs = {n: p for n, p in params.items() if ".ref." in n}
    assert refs and all(not p.requires_grad for p in refs.values()), "the reference adapter is frozen"
    assert all(p.equal(params[n.replace(".ref.", ".default.")]) for n, p in refs.items()), "a copy of the SFT adapter"
    assert sum(p.numel() for p in trainer.model.parameters()) == before + adapter_size


def test_a_stopped_run_from_an_sft_adapter_resumes_onto_the_uninterrupted_curve(sft_run, tmp_path):
    """A resume rebuilds the policy from the SFT adapter and then the checkpoint, and the reference from the SFT
    adapter again: the margins after the resume are those of a run that was never stopped."""
    from resuming import step_metric, stopped_resumed_and_straight

    base, sft = sft_run
    config = dpo_config(base, tmp_path, init_adapter=sft.adapter_dir).copy_with(
        training={"max_steps": 4, "save_steps": 2, "batch_size": 2})
    stopped, resumed, straight = stopped_resumed_and_straight(config, 2, tmp_path)
    assert (stopped.status, stopped.final_step) == ("stopped", 2)
    assert resumed.final_step == 4
    checkpoints = sorted((stopped.run_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and all((c / "adapter_model.safetensors").is_file() for c in checkpoints)
    assert not [c for c in checkpoints if (c / "ref").exists()], "TRL's reference copy is rebuilt, not checkpointed"
    assert len(step_metric(stopped.run_dir, "rewards/margins")) == 4
    assert step_metric(stopped.run_dir, "rewards/margins") == pytest.approx(step_metric(straight.run_dir, "rewards/margins"),
                                                                           rel=1e-4, abs=1e-6)
