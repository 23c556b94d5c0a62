"""The playground's model work without a window (core/playground.py): the adapter's answer is the merged
model's, the base answer is the base model's, and what is streamed is what is returned."""

import pytest
import torch

from workbench.core.playground import GenerationSettings, generate_answers, load_playground

PROMPT = "Paris is the capital of"
GREEDY = GenerationSettings(max_new_tokens=12)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on the tiny llama with random (not zero) B matrices, so it changes the answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    folder = tmp_path_factory.mktemp("adapter")
    get_peft_model(base, config).save_pretrained(folder)
    return folder


def _greedy_reference(model, tokenizer) -> str:
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=GREEDY.max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_base_and_adapter_answers_are_the_base_and_the_merged_models(tiny_model_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = load_playground(str(tiny_model_dir("llama")), str(adapter_dir))
    pieces = []
    answers = generate_answers(loaded["model"], loaded["tokenizer"], PROMPT, GREEDY,
                               on_piece=lambda which, text: pieces.append((which, text)))

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("llama"))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).eval()
    assert answers["base"] == _greedy_reference(base, tokenizer)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")),
                                       adapter_dir).merge_and_unload().eval()
    assert answers["adapter"] == _greedy_reference(merged, tokenizer)
    assert answers["base"] != answers["adapter"]

    assert [w for w, _ in pieces] == sorted((w for w, _ in pieces), key=["base", "adapter"].index)  # base first
    for which in ("base", "adapter"):
        assert "".join(t for w, t in pieces if w == which) == answers[which]


def test_a_stop_ends_the_answer_in_progress_and_skips_the_next(tiny_model_dir, adapter_dir):
    loaded = load_playground(str(tiny_model_dir("llama")), str(adapter_dir))
    pieces = []
    answers = generate_answers(loaded["model"], loaded["tokenizer"], PROMPT, GREEDY,
                               on_piece=lambda which, text: pieces.append(which),
                               should_stop=lambda: bool(pieces))  # stop once the first piece arrived
    assert set(answers) == {"base"}
    assert set(pieces) == {"base"}
    full = generate_answers(loaded["model"], loaded["tokenizer"], PROMPT, GREEDY)
    assert full["base"].startswith(answers["base"]) and len(answers["base"]) < len(full["base"])
