"""An adapter on the unquantized base against the same adapter on a bitsandbytes-quantized base (the playground's
comparison), and the workaround for bitsandbytes' CPU inference path, on a tiny llama on the CPU.

The expected logits are computed here with transformers and PEFT directly, in train mode (no dropout in these
models or adapters): bitsandbytes' training path, which never takes the CPU inference path the comparison switches
off."""

import pytest
import torch

from workbench.core.config import RunConfig
from workbench.core.errors import WorkbenchError
from workbench.core.quantization import QuantizationError, disable_cpu_fast_path
from workbench.core.quantized_eval import compare_on_quantized_base, trained_quantization

pytest.importorskip("bitsandbytes", reason="the quant extra (pip install bitsandbytes==0.50.2) is not installed")

PROMPTS = ["What is the capital of France?", "Two plus two?"]


@pytest.fixture
def model_dir(tiny_model_dir):
    # intermediate_size 96: down_proj's input width is not a multiple of bitsandbytes' 64-weight block, which the
    # CPU inference path cannot repack (see quantization.disable_cpu_fast_path)
    return tiny_model_dir("llama", initializer_range=0.3)


@pytest.fixture
def adapter_dir(model_dir, tmp_path):
    """A LoRA adapter with non-zero A and B (an untrained default adapter would change nothing)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    model.save_pretrained(tmp_path / "run" / "adapter")
    return tmp_path / "run" / "adapter"


def _bnb(quantization: str, double_quant: bool):
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantization,
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=torch.float32)


def _logits(model_dir, adapter_dir, prompt: str, quantization: str | None, double_quant: bool = True):
    """The reference: transformers + PEFT. 4-bit bases in train mode (bitsandbytes' training path, which the first
    test shows equal to the comparison's eval path); int8 in eval mode, as the comparison runs it: there bitsandbytes
    rounds the activations to int8 too (LLM.int8's matmul), while its CPU training path only rounds the weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {} if quantization is None else {"quantization_config": _bnb(quantization, double_quant),
                                          "device_map": {"": "cpu"}}
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kw)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.train(quantization in ("nf4", "fp4"))
    ids = AutoTokenizer.from_pretrained(model_dir)(prompt, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits[0]


@pytest.mark.parametrize("quant,double_quant", [("nf4", True), ("nf4", False), ("fp4", True)])
def test_eval_mode_logits_of_a_4bit_base_equal_the_training_path(quant, double_quant, model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device_map={"": "cpu"},
                                                 quantization_config=_bnb(quant, double_quant))
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 120, 11]])
    with torch.no_grad():
        training_path = model.train()(ids).logits
    disable_cpu_fast_path(model.eval())
    assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules())
    with torch.no_grad():  # where bitsandbytes would otherwise repack (and fail on down_proj's 96-wide input)
        eval_path = model(ids).logits
    torch.testing.assert_close(eval_path, training_path, rtol=0, atol=0)


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_comparison_reports_the_logit_difference_of_the_two_bases(quant, model_dir, adapter_dir):
    result = compare_on_quantized_base(str(model_dir), adapter_dir, PROMPTS + ["  "], quantization=quant, device="cpu")
    assert result is not None and result.quantization == quant and result.dtype == "float32"
    assert [p.prompt for p in result.prompts] == PROMPTS, "blank prompts are left out"
    for p in result.prompts:
        full = _logits(model_dir, adapter_dir, p.prompt, None)
        quantized = _logits(model_dir, adapter_dir, p.prompt, quant)
        diff = (quantized - full).abs()
        assert p.tokens == full.shape[0]
        assert p.max_abs_diff == pytest.approx(float(diff.max()), rel=1e-5)
        assert p.mean_abs_diff == pytest.approx(float(diff.mean()), rel=1e-5)
        agree = float((quantized.argmax(-1) == full.argmax(-1)).float().mean())
        assert p.top1_agreement == pytest.approx(agree)
        assert p.max_abs_diff > 1e-3, "rounding the base changes the logits"
        assert p.adapter_effect > 1e-3
    assert result.max_abs_diff == max(p.max_abs_diff for p in result.prompts)


def test_adapter_effect_is_measured_against_the_base_without_the_adapter(model_dir, adapter_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = compare_on_quantized_base(str(model_dir), adapter_dir, PROMPTS[:1], quantization="nf4", device="cpu")
    ids = AutoTokenizer.from_pretrained(model_dir)(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)(**ids).logits[0]
    adapted = _logits(model_dir, adapter_dir, PROMPTS[0], None)
    assert result.prompts[0].adapter_effect == pytest.approx(float((adapted - plain).abs().max()), rel=1e-5)


def test_the_quantization_of_a_run_is_read_from_its_run_file(model_dir, adapter_dir):
    run = adapter_dir.parent
    assert trained_quantization(adapter_dir) is None, "no run.toml: an adapter from elsewhere"
    config = RunConfig.from_dict({"model": {"source": str(model_dir), "quantization": "fp4", "double_quant": False}})
    config.save(run / "run.toml")
    assert trained_quantization(adapter_dir) == ("fp4", False)
    RunConfig.from_dict({"model": {"source": str(model_dir)}}).save(run / "run.toml")
    assert trained_quantization(adapter_dir) is None, "an unquantized run"


def test_bad_requests_are_refused_with_what_to_do(model_dir, adapter_dir):
    with pytest.raises(QuantizationError) as info:
        compare_on_quantized_base(str(model_dir), adapter_dir, PROMPTS, quantization="none", device="cpu")
    assert "nf4" in info.value.hint
    with pytest.raises(WorkbenchError) as info:
        compare_on_quantized_base(str(model_dir), adapter_dir, ["", " "], quantization="nf4", device="cpu")
    assert "prompt" in info.value.message
    with pytest.raises(QuantizationError, match="mps"):
        compare_on_quantized_base(str(model_dir), adapter_dir, PROMPTS, quantization="nf4", device="mps")


def test_a_stop_request_returns_none(model_dir, adapter_dir):
    assert compare_on_quantized_base(str(model_dir), adapter_dir, PROMPTS, quantization="nf4", device="cpu",
                                     should_stop=lambda: True) is None


def test_an_evaluation_during_a_qlora_run_leaves_the_training_path_as_it_was(tiny_model_dir, tmp_path):
    """Measured on this machine (AVX512-BF16): without the workaround the first eval-mode pass repacks every 4-bit
    weight with bfloat16 scales for good, and the training loss after an evaluation is no longer the one before
    it. ``prepare_for_training`` (what a run applies to a quantized base) keeps it exact. On a CPU without that
    instruction set bitsandbytes has no such path and this holds either way."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from workbench.core.quantization import prepare_for_training

    base = tiny_model_dir("llama", initializer_range=0.3, intermediate_size=128)  # widths the repacking accepts
    config = RunConfig.from_dict({"model": {"source": str(base), "quantization": "nf4"},
                                  "training": {"gradient_checkpointing": False}})
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, device_map={"": "cpu"},
                                                 quantization_config=_bnb("nf4", True))
    torch.manual_seed(0)
    model = get_peft_model(prepare_for_training(model, config),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 120, 11]])
    before = model.train()(ids, labels=ids).loss.item()
    with torch.no_grad():
        evaluated = model.eval()(ids, labels=ids).loss.item()
    after = model.train()(ids, labels=ids).loss.item()
    assert evaluated == before and after == before
