"""lora.init variants and LoRA+ in real CPU runs of a tiny llama: each trains, saves, and its exported adapter on
the *original* base gives the trained model's logits (PiSSA/OLoRA rewrite the base while training)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench.core import events as ev
from workbench.core.config import ConfigError, RunConfig
from workbench.core.errors import TrainingError
from workbench.core.training import run

FACTS = [("What is the capital of France?", "Paris."), ("Two plus two?", "Four."),
         ("Translate cat to French.", "chat"), ("Colour of the sky?", "Blue.")]
IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 120, 11]])
STEPS = 6
R, ALPHA = 8, 16


@pytest.fixture
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama", initializer_range=0.3)


def make_config(model_dir: Path, tmp_path: Path, init: str = "default", model: dict | None = None, **training) -> RunConfig:
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in FACTS))
    return RunConfig.from_dict({
        "model": {"source": str(model_dir), **(model or {})},
        "lora": {"r": R, "alpha": ALPHA, "dropout": 0.0, "preset": "all-linear", "init": init},
        "data": {"train_files": [str(data)], "max_length": 64},
        # a checkpoint at the last step keeps the adapter as it trained (unconverted), beside the exported one
        "training": {"max_steps": STEPS, "learning_rate": 1e-2, "batch_size": 4, "warmup_ratio": 0.0,
                     "scheduler": "constant", "device": "cpu", "save_steps": STEPS, **training},
        "output": {"runs_root": str(tmp_path / "runs")},
    })


def _original(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _lora_pairs(tensors: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module path in the base model: (A, B)} from a PEFT adapter file."""
    out = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            out[module] = (a, tensors[key.replace("lora_A", "lora_B")])
    return out


def _trained_model(model_dir: Path, run_dir: Path, rewrites_base: bool):
    """The model as it trained, rebuilt from the files the run left: the base as PiSSA/OLoRA rewrote it (W − s·B0A0,
    with the initial A0, B0 the run kept) carrying the adapter of the last checkpoint, as PEFT computes it."""
    from peft import LoraConfig, PeftModel

    model = _original(model_dir)
    if rewrites_base:
        initial = _lora_pairs(load_file(run_dir / "lora_init/initial_adapter/adapter_model.safetensors"))
        with torch.no_grad():
            for module, (a0, b0) in initial.items():
                weight = model.get_submodule(module).weight
                weight.copy_(weight - (ALPHA / R) * b0 @ a0)  # the order of PEFT's own subtraction
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{STEPS}"
    config = LoraConfig.from_pretrained(str(checkpoint))
    config.init_lora_weights = True  # PEFT would otherwise run PiSSA/OLoRA again on load, rewriting the base twice
    return PeftModel.from_pretrained(model, str(checkpoint), config=config).eval()


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "orthogonal", "gaussian"])
def test_each_init_trains_and_its_export_on_the_original_base_gives_the_trained_logits(init, model_dir, tmp_path):
    from peft import PeftModel

    from workbench.core.lora_init import rewrites_base

    sink = ev.ListSink()
    result = run(make_config(model_dir, tmp_path, init), sink)
    losses = [e.loss for e in sink.of(ev.Step)]
    assert result.status == "finished" and losses[-1] < 0.8 * losses[0], losses

    saved = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    if rewrites_base(init):  # converted to a plain LoRA of rank 2r that starts from the original weights
        assert saved["r"] == 2 * R and saved["init_lora_weights"] is True
    trained = _trained_model(model_dir, result.run_dir, rewrites_base(init))
    exported = PeftModel.from_pretrained(_original(model_dir), str(result.adapter_dir)).eval()
    with torch.no_grad():
        expected, ours = trained(IDS).logits, exported(IDS).logits
        assert not torch.allclose(expected, _original(model_dir)(IDS).logits, atol=1e-3)  # it did learn
    # Within 1e-5 of the logits' own scale (|logit| ~10 here). What differs is rounding: the run trained on
    # W_res = W - s·B0A0 rounded to fp32 once, the export rebuilds it from W and the rank-2r adapter (measured:
    # 1.2e-5 to 1.5e-5 absolute for pissa, pissa_niter_4 and olora; 0 for inits that leave the base alone).
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5 * max(1.0, expected.abs().max().item()))


def test_eva_initialises_from_a_data_pass_with_progress(model_dir, tmp_path):
    from peft import PeftModel

    sink = ev.ListSink()
    result = run(make_config(model_dir, tmp_path, "eva"), sink)
    losses = [e.loss for e in sink.of(ev.Step)]
    assert result.status == "finished" and losses[-1] < 0.8 * losses[0], losses
    progress = [e for e in sink.of(ev.Progress) if e.task == "eva initialisation"]
    assert progress and progress[-1].done == progress[-1].total >= 1
    with torch.no_grad():
        expected = _trained_model(model_dir, result.run_dir, False)(IDS).logits
        ours = PeftModel.from_pretrained(_original(model_dir), str(result.adapter_dir)).eval()(IDS).logits
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_eva_rows_are_orthonormal_before_training(model_dir, tmp_path):
    """max_steps=1 at a learning rate of ~0: the saved A is EVA's start, the right singular vectors (orthonormal)."""
    result = run(make_config(model_dir, tmp_path, "eva", max_steps=1, save_steps=None, learning_rate=1e-12), ev.ListSink())
    pairs = _lora_pairs(load_file(result.adapter_dir / "adapter_model.safetensors"))
    a = pairs["model.layers.0.self_attn.q_proj"][0]
    torch.testing.assert_close(a @ a.T, torch.eye(a.shape[0]), rtol=0, atol=1e-4)


def test_loraplus_trains_b_faster(model_dir, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = run(make_config(model_dir, tmp_path / "a", max_steps=3, save_steps=None), ev.ListSink())
    plus = run(make_config(model_dir, tmp_path / "b", max_steps=3, save_steps=None, loraplus_lr_ratio=16.0), ev.ListSink())
    p = _lora_pairs(load_file(plain.adapter_dir / "adapter_model.safetensors"))
    q = _lora_pairs(load_file(plus.adapter_dir / "adapter_model.safetensors"))
    name = "model.layers.0.mlp.down_proj"
    # A starts identical (same seed) and gets the same learning rate; B (zero at the start) moves much further
    assert q[name][1].norm() > 3 * p[name][1].norm()


@pytest.mark.skipif(not __import__("importlib").util.find_spec("bitsandbytes"), reason="needs the quant extra")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="PEFT's LoftQ computes on CUDA only (refused on CPU: below)")
def test_loftq_on_an_nf4_base_trains(model_dir, tmp_path):
    from peft import PeftModel

    sink = ev.ListSink()
    result = run(make_config(model_dir, tmp_path, "loftq", model={"quantization": "nf4"}, device="cuda"), sink)
    losses = [e.loss for e in sink.of(ev.Step)]
    assert result.status == "finished" and losses[-1] < 0.8 * losses[0], losses
    assert any("LoftQ" in e.text for e in sink.of(ev.Message))
    PeftModel.from_pretrained(_original(model_dir), str(result.adapter_dir))


@pytest.mark.parametrize("init, extra, words", [
    ("loftq", {}, "nf4"),
    pytest.param("loftq", {"model": {"quantization": "nf4"}}, "CUDA",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only refusal")),
    ("pissa", {"model": {"quantization": "nf4"}}, "loftq"),
    ("orthogonal", {}, "even"),
])
def test_bad_combinations_are_refused_before_a_run_folder(init, extra, words, model_dir, tmp_path):
    config = make_config(model_dir, tmp_path, init, **extra)
    if init == "orthogonal":
        config = config.copy_with(lora={"r": 7})
    with pytest.raises(TrainingError) as info:
        run(config, ev.ListSink())
    assert words in info.value.message + info.value.hint
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_eva_without_data_is_refused(model_dir, tmp_path):
    from workbench.core.lora_init import check_run

    config = make_config(model_dir, tmp_path, "eva").copy_with(data={"train_files": []})
    with pytest.raises(TrainingError, match="eva"):
        check_run(config)


@pytest.mark.parametrize("name", ["pissa_niter_0", "pissa_niter_", "svd", "pissa_niter_N"])
def test_unknown_init_names_are_config_errors(name, model_dir, tmp_path):
    with pytest.raises(ConfigError, match="lora.init"):
        make_config(model_dir, tmp_path, name)
