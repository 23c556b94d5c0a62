"""Quantized bases (QLoRA) on the CPU: real bitsandbytes nf4/int8 runs of a tiny llama, their adapters on the
unquantized base, the merge from the original weights, and the settings refused before a run folder exists."""

import json
from pathlib import Path

import pytest
import torch

from workbench.core import events as ev
from workbench.core.config import ConfigError, RunConfig
from workbench.core.quantization import QuantizationError
from workbench.core.training import run

pytest.importorskip("bitsandbytes", reason="the quant extra (pip install bitsandbytes==0.50.2) is not installed")

FACTS = [("What is the capital of France?", "Paris."), ("Two plus two?", "Four."),
         ("Translate cat to French.", "chat"), ("Colour of the sky?", "Blue.")]
IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 120, 11]])


@pytest.fixture
def model_dir(tiny_model_dir):
    # hidden 64: a whole number of bitsandbytes' 64-weight quantization blocks per row
    return tiny_model_dir("llama", initializer_range=0.3)


def make_config(model_dir: Path, tmp_path: Path, model: dict | None = None, lora: dict | None = None, **training) -> RunConfig:
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in FACTS))
    return RunConfig.from_dict({
        "model": {"source": str(model_dir), **(model or {})},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "preset": "all-linear", **(lora or {})},
        "data": {"train_files": [str(data)], "max_length": 64},
        "training": {"max_steps": 8, "learning_rate": 1e-2, "batch_size": 4, "warmup_ratio": 0.0,
                     "scheduler": "constant", "device": "cpu", **training},
        "output": {"runs_root": str(tmp_path / "runs")},
    })


def _unquantized(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_quantized_base_trains_and_its_adapter_fits_the_unquantized_base(quant, model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    sink = ev.ListSink()
    result = run(make_config(model_dir, tmp_path, model={"quantization": quant}), sink)
    assert result.status == "finished" and result.final_step == 8
    losses = [e.loss for e in sink.of(ev.Step)]
    assert losses[-1] < 0.8 * losses[0], losses

    # trainable count: exactly PEFT's for the same LoRA on the unquantized base
    cfg = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    plain = get_peft_model(_unquantized(model_dir), LoraConfig(r=8, lora_alpha=16, target_modules=cfg["target_modules"]))
    assert sink.of(ev.RunStarted)[0].trainable_params == plain.get_nb_trainable_parameters()[0]

    # the saved adapter loads with PEFT alone onto the unquantized base and changes its output
    base_logits = _unquantized(model_dir)(IDS).logits
    adapted = PeftModel.from_pretrained(_unquantized(model_dir), str(result.adapter_dir)).eval()
    assert not torch.allclose(adapted(IDS).logits, base_logits, atol=1e-3)
    assert "quantization_config" not in json.loads((Path(model_dir) / "config.json").read_text())


def test_merge_of_an_nf4_adapter_is_from_the_original_weights(model_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    from workbench.core.merge import merge_adapter

    result = run(make_config(model_dir, tmp_path, model={"quantization": "nf4"}), ev.ListSink())
    merged = tmp_path / "merged"
    merge_adapter(model_dir, result.adapter_dir, merged)
    ours = load_file(merged / "model.safetensors")
    expected = PeftModel.from_pretrained(_unquantized(model_dir), str(result.adapter_dir)).merge_and_unload().state_dict()
    original = load_file(Path(model_dir) / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert ours[name].dtype == original[name].dtype == torch.float32
    assert not torch.equal(ours[name], original[name])  # the adapter was merged in ...
    for key, tensor in ours.items():  # ... into the unrounded weights: PEFT's merge on the unquantized base
        torch.testing.assert_close(tensor, expected[key], rtol=0, atol=1e-6, msg=key)


def test_gradient_checkpointing_defaults_on_for_quantized_bases(model_dir, tmp_path):
    from workbench.core.quantization import wants_gradient_checkpointing

    assert wants_gradient_checkpointing(make_config(model_dir, tmp_path, model={"quantization": "nf4"}))
    assert not wants_gradient_checkpointing(make_config(model_dir, tmp_path))
    assert not wants_gradient_checkpointing(
        make_config(model_dir, tmp_path, model={"quantization": "nf4"}, gradient_checkpointing=False))


def _refused(config: RunConfig, tmp_path: Path, exc=QuantizationError) -> str:
    with pytest.raises(exc) as info:
        run(config, ev.ListSink())
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), "no run folder for bad input"
    assert info.value.hint
    return info.value.message


def test_a_model_quantized_in_its_files_is_refused_naming_what_works(model_dir, tmp_path):
    import shutil

    folder = tmp_path / "gptq-model"
    shutil.copytree(model_dir, folder)
    raw = json.loads((folder / "config.json").read_text())
    raw["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (folder / "config.json").write_text(json.dumps(raw))
    message = _refused(make_config(folder, tmp_path), tmp_path)
    assert "gptq" in message and "nf4" in message


def test_paged_optimizer_on_cpu_is_refused(model_dir, tmp_path):
    assert "CUDA" in _refused(make_config(model_dir, tmp_path, optimizer="paged_adamw_8bit"), tmp_path)


def test_missing_backend_names_the_pip_command(model_dir, tmp_path, monkeypatch):
    from workbench.core import quantization

    monkeypatch.setattr(quantization, "backend_available", lambda: False)  # as on a machine without the quant extra
    with pytest.raises(QuantizationError) as info:
        quantization.check_run(make_config(model_dir, tmp_path, model={"quantization": "nf4"}), None, "cpu")
    assert "pip install bitsandbytes==" in info.value.hint


def test_unknown_quantization_is_a_config_error(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="model.quantization"):
        make_config(model_dir, tmp_path, model={"quantization": "int4"})


def test_int8_optimizer_state_trains(model_dir, tmp_path):
    sink = ev.ListSink()
    result = run(make_config(model_dir, tmp_path, model={"quantization": "nf4"}, optimizer="adamw_bnb_8bit"), sink)
    losses = [e.loss for e in sink.of(ev.Step)]
    assert result.status == "finished" and losses[-1] < 0.8 * losses[0], losses


def _loaded(model_dir: Path, quant: str, folder: Path):
    from transformers import AutoModelForCausalLM

    from workbench.core.quantization import load_kwargs, prepare_for_training

    cfg = make_config(model_dir, folder, model={"quantization": quant})  # writes its data file there
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 **load_kwargs(cfg.model, "cpu", torch.float32))
    return prepare_for_training(model, cfg), cfg


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_layer_tree_marks_quantized_modules_with_their_real_stored_size(quant, model_dir, tmp_path):
    from workbench.core.layers import build_tree
    from workbench.core.quantization import mark_tree

    model, cfg = _loaded(model_dir, quant, tmp_path)
    real = build_tree(model)
    plain = build_tree(_unquantized(model_dir))
    assert real.total_params == plain.total_params  # 4-bit weights count as the weights they stand for
    marked = {n.name: n for n in real.nodes.values() if n.quantized}
    assert marked and all(n.quantized == quant for n in marked.values())
    assert "lm_head" not in marked and real["lm_head"].quantized is None
    assert real["model.layers.0.mlp.up_proj"].shape == plain["model.layers.0.mlp.up_proj"].shape
    # the window's tree (no weights loaded) marks the same modules with the sizes the real tensors have
    mark_tree(plain, cfg.model)
    planned = {n.name: n.stored_bytes for n in plain.nodes.values() if n.quantized}
    assert planned == {name: n.stored_bytes for name, n in marked.items()}


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_memory_estimate_counts_the_quantized_weights_as_loaded(quant, model_dir, tmp_path):
    from workbench.core.layers import build_tree, resolve_selection
    from workbench.core.memory import estimate_for_config
    from workbench.core.quantization import mark_tree

    model, cfg = _loaded(model_dir, quant, tmp_path)
    loaded = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    loaded += sum(m.weight.quant_state.absmax.numel() * 4 for m in model.modules()
                  if getattr(getattr(m, "weight", None), "quant_state", None) is not None and not
                  m.weight.quant_state.nested)
    loaded += sum(m.weight.quant_state.absmax.numel() + m.weight.quant_state.state2.absmax.numel() * 4
                  for m in model.modules() if getattr(getattr(m, "weight", None), "quant_state", None) is not None
                  and m.weight.quant_state.nested)
    loaded += sum(m.weight.SCB.numel() * 4 for m in model.modules() if getattr(getattr(m, "weight", None), "SCB", None)
                  is not None)
    tree = build_tree(_unquantized(model_dir))
    mark_tree(tree, cfg.model)
    sel = resolve_selection(tree, cfg.lora)
    est = estimate_for_config(tree, sel, model.config, cfg, device="cpu")
    plain = estimate_for_config(tree, sel, model.config, make_config(model_dir, tmp_path), device="cpu")
    assert abs(est.weights - loaded) <= 0.02 * loaded, (est.weights, loaded)
    assert est.weights < plain.weights
    labels = dict(est.parts())
    assert f"frozen weights ({quant} linear layers, rest float32)" in labels
    assert labels["dequantization buffers"] > 0
    eight = estimate_for_config(tree, sel, model.config, cfg.copy_with(training={"optimizer": "adamw_bnb_8bit"}),
                                device="cpu")
    assert eight.optimizer * 3 < est.optimizer and "adamw_bnb_8bit" in eight.parts()[3][0] + eight.parts()[4][0]
