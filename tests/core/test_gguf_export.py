"""GGUF and Ollama export (issue 18), checked without llama.cpp: the files read back with the ``gguf`` package's
reader and transformers' own GGUF loader, against PEFT's merge; the chat template rendered by transformers and by
Go's text/template. (``test_gguf_llama_cpp.py`` runs the same exports through llama.cpp itself.)

Expected values come from PEFT (``merge_and_unload``, ``get_delta_weight``), transformers, the ``gguf`` package's
reader and dequantizers, and index arithmetic written out here; never from the code under test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.core.control import RunControl
from workbench.core.errors import AdapterError, ModelSourceError, OutputError, WorkbenchError
from workbench.core.events import ListSink, Progress
from workbench.core.gguf_export import export_gguf, export_gguf_adapter, prepare_adapter_export, prepare_merged_export
from workbench.core.gguf_export.templates import FAMILIES, recognise_template

import gotemplate

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

IDS = torch.tensor([[1, 5, 7, 9, 20, 30, 41, 2, 77, 150, 4, 8]])
LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REQUIRE_GO = os.environ.get("WORKBENCH_REQUIRE_GO") == "1"


# ------------------------------------------------------------------------------------------- helpers


def save_qwen3(folder: Path, seed: int = 0, head_dim: int = 128) -> Path:
    """A tiny Qwen3 (q/k norms, explicit head_dim) with the shared tiny tokenizer; tests/tiny.py has no qwen3.
    head_dim is Qwen3's real 128 (≠ hidden / heads): transformers' GGUF loader ignores qwen3.attention.key_length
    and assumes 128, so another value could not be read back by it (llama.cpp reads the key; see the llama.cpp tests)."""
    import tiny
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = tiny.make_tokenizer()
    cfg = AutoConfig.for_model("qwen3", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=head_dim, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                               bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def base_dir(tiny_model_dir, tmp_path_factory):
    """base_dir(arch) → a tiny saved model; "qwen3" built here, the others from tests/tiny.py."""
    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch == "qwen3":
            if arch not in made:
                made[arch] = save_qwen3(tmp_path_factory.mktemp("model-qwen3"))
            return made[arch]
        return tiny_model_dir(arch)

    return get


def load_model(folder: Path, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, **kw).eval()


def make_adapter(base: Path, out: Path, **lora) -> Path:
    """A PEFT adapter with random non-zero A and B (and DoRA magnitudes moved off their start), saved to ``out``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(load_model(base), LoraConfig(init_lora_weights=False, **lora))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(3.0)  # large enough that a dropped or mis-scaled module changes the logits visibly
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.3 * torch.rand_like(param))
            if "modules_to_save" in name:  # starts as a copy of the base layer
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out)
    return out


def peft_merged_state(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel

    return {k: v.detach().clone() for k, v in
            PeftModel.from_pretrained(load_model(base), adapter).merge_and_unload().state_dict().items()}


@torch.no_grad()
def peft_logits(base: Path, adapter: Path | None) -> torch.Tensor:
    from peft import PeftModel

    model = load_model(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval()
    return model(IDS).logits[0]


def read_gguf(path: Path) -> tuple[dict, dict[str, np.ndarray], dict[str, str]]:
    """(metadata, tensors as float32 in numpy row-major shape, tensor types), via the gguf package alone."""
    from gguf import GGUFReader, quants

    reader = GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors, types = {}, {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions innermost first
        tensors[t.name] = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        types[t.name] = t.tensor_type.name
    return meta, tensors, types


def llama_rows(rows: int, heads: int) -> torch.Tensor:
    """Index map for llama.cpp's q/k row order: GGUF row h·d + 2i + c holds Hugging Face row h·d + c·d/2 + i."""
    d = rows // heads
    index = torch.empty(rows, dtype=torch.long)
    for h in range(heads):
        for i in range(d // 2):
            for c in range(2):
                index[h * d + 2 * i + c] = h * d + c * (d // 2) + i
    return index


# Hugging Face → GGUF names of the tiny llama-family models (2 blocks), written out for the comparison
def gguf_name(key: str) -> str | None:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if key in fixed:
        return fixed[key]
    parts = key.split(".")
    if parts[:2] != ["model", "layers"]:
        return None
    block, rest = parts[2], ".".join(parts[3:])
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
    module, _, kind = rest.rpartition(".")
    return f"blk.{block}.{names[module]}.{kind}"


def hf_layout(key: str, values: np.ndarray, arch: str, config: dict) -> torch.Tensor:
    """A GGUF tensor back in Hugging Face's layout (undoing llama.cpp's q/k row order for the llama architecture)."""
    t = torch.from_numpy(values.copy())
    if arch in ("llama", "mistral") and (".q_proj." in key or ".k_proj." in key):
        heads = config["num_attention_heads"] if ".q_proj." in key else config["num_key_value_heads"]
        undone = torch.empty_like(t)
        undone[llama_rows(t.shape[0], heads)] = t
        return undone
    return t


# --------------------------------------------------------------------------------- merged model files

MERGED_CASES = {
    "llama-all-linear": ("llama", dict(r=4, lora_alpha=8, target_modules=LLAMA_ALL)),
    "mistral-rank-alpha-patterns": ("mistral", dict(r=4, lora_alpha=8, target_modules=LLAMA_ALL,
                                                     rank_pattern={"v_proj": 8}, alpha_pattern={"o_proj": 3})),
    "qwen2-rslora-biases": ("qwen2", dict(r=8, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj"])),
    "qwen3-dora-qk-norms": ("qwen3", dict(r=4, lora_alpha=8, use_dora=True, target_modules=LLAMA_ALL)),
}


@pytest.mark.parametrize("case", list(MERGED_CASES), ids=list(MERGED_CASES))
def test_f32_export_holds_peft_merged_weights_under_gguf_names_and_transformers_reads_it_back(case, base_dir, tmp_path):
    arch, lora = MERGED_CASES[case]
    base = base_dir(arch)
    adapter = make_adapter(base, tmp_path / "adapter", **lora)
    sink = ListSink()
    result = export_gguf(base, adapter, tmp_path / "out", type_name="f32", sink=sink)
    assert result.gguf == tmp_path / "out" / "model-F32.gguf" and result.gguf.is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "model-F32.gguf"]  # the card

    config = json.loads((base / "config.json").read_text())
    meta, values, types = read_gguf(result.gguf)
    expected = peft_merged_state(base, adapter)
    gguf_arch = "llama" if arch in ("llama", "mistral") else arch
    assert meta["general.architecture"] == gguf_arch and meta["general.file_type"] == 0
    assert meta[f"{gguf_arch}.block_count"] == 2 and meta[f"{gguf_arch}.attention.head_count_kv"] == 2
    mapped = {gguf_name(k): k for k in expected if gguf_name(k)}
    assert set(values) == set(mapped), "every checkpoint tensor, nothing else"
    for name, key in mapped.items():
        got = hf_layout(key, values[name], arch, config)
        torch.testing.assert_close(got, expected[key].float(), rtol=0, atol=2e-6, msg=key)
        assert types[name] == "F32"

    progress = sink.of(Progress)
    assert progress[-1].done == progress[-1].total > 0 and progress[-1].task == "gguf"
    # transformers' own GGUF loader (config, weights, the q/k order undone) gives the merged model's logits
    back = load_model(result.gguf.parent, gguf_file=result.gguf.name, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(back(IDS).logits[0], peft_logits(base, adapter), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("type_name, matrix", [("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")])
def test_each_python_type_rounds_the_f32_merge_once_and_the_planned_size_is_the_file_size(type_name, matrix, base_dir,
                                                                                         tmp_path):
    base = base_dir("llama")
    adapter = make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=LLAMA_ALL)
    job = prepare_merged_export(base, adapter, tmp_path / "out", type_name=type_name)
    planned = job.size
    assert job.size_is_exact and not (tmp_path / "out").exists(), "planning writes nothing"
    result = job.run()
    assert result.gguf.stat().st_size == planned == result.bytes_written
    _, exact, _ = read_gguf(export_gguf(base, adapter, tmp_path / "f32", type_name="f32").gguf)
    meta, values, types = read_gguf(result.gguf)
    assert meta["general.file_type"] == {"f16": 1, "bf16": 32, "q8_0": 7}[type_name]
    for name, v in values.items():
        assert types[name] == (matrix if v.ndim == 2 else "F32"), name
        if type_name == "q8_0" and v.ndim == 2:
            from gguf import GGMLQuantizationType, quants

            requantized = quants.dequantize(quants.quantize(exact[name], GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
            np.testing.assert_array_equal(v, requantized.reshape(v.shape))
        elif v.ndim == 2:
            dtype = torch.float16 if type_name == "f16" else torch.bfloat16
            np.testing.assert_array_equal(v, torch.from_numpy(exact[name]).to(dtype).float().numpy())
        else:
            np.testing.assert_array_equal(v, exact[name])


def test_sharded_base_and_tied_embeddings_untied_by_an_lm_head_adapter(tiny_model_dir, tmp_path):
    """A multi-shard checkpoint is read shard by shard; a tied model whose output layer the adapter changes gets
    its own output.weight (llama.cpp would otherwise reuse token_embd for both)."""
    base = tiny_model_dir("llama", tie_word_embeddings=True, max_shard_size="60KB")
    assert len(list(base.glob("*.safetensors"))) > 1
    adapter = make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"])
    result = export_gguf(base, adapter, tmp_path / "out", type_name="f32")
    _, values, _ = read_gguf(result.gguf)
    expected = peft_logits(base, adapter)
    assert "output.weight" in values and not np.array_equal(values["output.weight"], values["token_embd.weight"])
    back = load_model(result.gguf.parent, gguf_file=result.gguf.name, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(back(IDS).logits[0], expected, rtol=1e-4, atol=1e-4)
    plain = export_gguf(base, None, tmp_path / "plain", type_name="f32")
    assert "output.weight" not in read_gguf(plain.gguf)[1], "a tied model without such an adapter stays tied"


def test_tokenizer_and_chat_template_survive_the_round_trip(base_dir, tmp_path):
    from transformers import AutoTokenizer

    base = base_dir("llama")
    result = export_gguf(base, None, tmp_path / "out", type_name="f16")
    meta, _, _ = read_gguf(result.gguf)
    original = AutoTokenizer.from_pretrained(base)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.chat_template"] == original.chat_template
    assert meta["tokenizer.ggml.eos_token_id"] == original.eos_token_id
    back = AutoTokenizer.from_pretrained(result.gguf.parent, gguf_file=result.gguf.name)
    text = "Paris is the capital of France. <|im_start|>user\nQuestion: 2+2?<|im_end|>"
    assert back.encode(text, add_special_tokens=False) == original.encode(text, add_special_tokens=False)


# ----------------------------------------------------------------------------------------- adapter files


@pytest.mark.parametrize("lora", [
    dict(r=4, lora_alpha=8, target_modules=LLAMA_ALL),
    dict(r=4, lora_alpha=8, target_modules=LLAMA_ALL, rank_pattern={"v_proj": 8, "down_proj": 2},
         alpha_pattern={"o_proj": 3}),
    dict(r=8, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "k_proj", "embed_tokens"]),
], ids=["plain", "rank-alpha-patterns", "rslora-embedding"])
def test_gguf_adapter_pairs_give_each_modules_peft_delta_under_llama_cpps_alpha_over_rank(lora, base_dir, tmp_path):
    """llama.cpp adds ``alpha / r · lora_b @ lora_a`` (one alpha per file, r each pair's own rank; an embedding's
    lora_a stored vocabulary × r). Rebuilt that way from the file, every module's ΔW is PEFT's."""
    from peft import PeftModel

    base = base_dir("llama")
    adapter = make_adapter(base, tmp_path / "adapter", **lora)
    job = prepare_adapter_export(adapter, base, tmp_path / "out")
    planned = job.size
    result = job.run()
    assert result.gguf.name == "adapter-F32.gguf" and result.gguf.stat().st_size == planned
    meta, values, _ = read_gguf(result.gguf)
    assert (meta["general.type"], meta["adapter.type"], meta["general.architecture"]) == ("adapter", "lora", "llama")
    alpha = meta["adapter.lora.alpha"]
    config = json.loads((base / "config.json").read_text())
    peft_model = PeftModel.from_pretrained(load_model(base), adapter)
    layers = {n: m for n, m in peft_model.base_model.model.named_modules() if hasattr(m, "get_delta_weight")}
    assert len(values) == 2 * len(layers)
    for name, layer in layers.items():
        key = f"{name}.weight"
        a, b = values[f"{gguf_name(key)}.lora_a"], values[f"{gguf_name(key)}.lora_b"]
        embedding = name.endswith("embed_tokens")
        rank = b.shape[1]
        delta = alpha / rank * (torch.from_numpy(b) @ torch.from_numpy(a.T if embedding else a))
        expected = layer.get_delta_weight("default").float()
        expected = expected.T if embedding else expected  # PEFT's embedding delta is (vocabulary × dim)
        torch.testing.assert_close(hf_layout(key, delta.numpy(), "llama", config), expected, rtol=1e-5, atol=1e-6)


def test_gguf_adapter_refuses_dora_replacements_and_tied_embeddings_and_writes_nothing(tiny_model_dir, tmp_path):
    base = tiny_model_dir("llama")
    dora = make_adapter(base, tmp_path / "dora", r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj"])
    with pytest.raises(AdapterError, match="DoRA adapter, which has no GGUF adapter form") as err:
        export_gguf_adapter(dora, base, tmp_path / "out")
    assert "--gguf" in err.value.hint and "merged" in err.value.hint
    saved = make_adapter(base, tmp_path / "saved", r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(AdapterError, match="carries whole tensors"):
        export_gguf_adapter(saved, base, tmp_path / "out")
    tied = tiny_model_dir("llama", tie_word_embeddings=True)
    embed = make_adapter(tied, tmp_path / "embed", r=4, lora_alpha=8, target_modules=["embed_tokens"])
    with pytest.raises(AdapterError, match="one tensor for its input and output embeddings"):
        export_gguf_adapter(embed, tied, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


# ------------------------------------------------------------------------------------------ refusals


def test_unmapped_architecture_is_refused_with_the_supported_list(tiny_model_dir, tmp_path):
    with pytest.raises(ModelSourceError, match="architecture 'gpt2' has no GGUF mapping") as err:
        export_gguf(tiny_model_dir("gpt2"), None, tmp_path / "out")
    assert "llama" in err.value.hint and "qwen2" in err.value.hint and "qwen3" in err.value.hint
    assert not (tmp_path / "out").exists()


def test_a_type_the_writer_cannot_produce_is_refused_naming_the_choices(tiny_model_dir, tmp_path, monkeypatch):
    base = tiny_model_dir("llama")
    with pytest.raises(WorkbenchError, match="'q3_x' is not a type") as err:
        export_gguf(base, None, tmp_path / "out", type_name="q3_x")
    assert "q8_0" in err.value.hint and "q4_k_m" in err.value.hint
    from workbench.core.gguf_export import types

    monkeypatch.setattr(types, "llama_cpp_available", lambda: False)
    with pytest.raises(WorkbenchError, match="Q4_K_M is made by llama.cpp's quantizer, and llama-cpp-python is not installed"):
        export_gguf(base, None, tmp_path / "out", type_name="q4_k_m")
    with pytest.raises(WorkbenchError, match="not a type a GGUF adapter"):
        export_gguf_adapter(make_adapter(base, tmp_path / "a", r=2, target_modules=["q_proj"]), base, tmp_path / "out",
                            type_name="q8_0")
    assert not (tmp_path / "out").exists()


def test_not_enough_disk_space_is_refused_before_writing(tiny_model_dir, tmp_path, monkeypatch):
    from workbench.core.gguf_export import export

    base = tiny_model_dir("llama")
    job = prepare_merged_export(base, None, tmp_path / "deeper" / "out", type_name="f16")
    monkeypatch.setattr(export, "free_bytes", lambda path: job.size // 2)
    with pytest.raises(OutputError, match=r"not enough free disk space \(nothing was written\)") as err:
        job.run()
    assert "the output needs about" in err.value.message and "free some disk space" in err.value.hint
    assert list(tmp_path.iterdir()) == []


def test_stop_request_leaves_nothing_and_existing_output_is_refused(tiny_model_dir, tmp_path):
    base = tiny_model_dir("llama")
    control = RunControl()
    sink = ListSink()

    def stop_after_first(event):
        sink.emit(event)
        if isinstance(event, Progress) and event.done:
            control.request_stop()

    result = export_gguf(base, None, tmp_path / "out", type_name="q8_0", sink=stop_after_first, control=control)
    assert result.stopped and result.output is None
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputError, match="already exists; nothing was written"):
        export_gguf(base, None, tmp_path / "taken")


# -------------------------------------------------------------------------------------- chat templates

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles "
    "are supported!') }}{% endif %}{% endfor %}")
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' "
    "+ message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif "
    "message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception("
    "'Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == "
    "'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' "
    "+ role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{'<start_of_turn>model\n'}}{% endif %}")
TWO_TURNS = [
    [{"role": "user", "content": "Extract the amount: Ana paid $5 on May 2."},
     {"role": "assistant", "content": '{"amount": 5}'},
     {"role": "user", "content": "And the date, as ISO 8601?"}],
    [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Extract the amount: $5."},
     {"role": "assistant", "content": '{"amount": 5}'}, {"role": "user", "content": "Now the currency."}],
]


def hf_tokenizer(template: str, bos: str | None, eos: str):
    import tiny
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tiny._tokenizer_files()[0]),
                                  eos_token=eos, bos_token=bos, pad_token="<pad>")
    tok.chat_template = template
    return tok


@pytest.mark.parametrize("template, bos, eos, add_bos, family, system", [
    (SMOLLM2_TEMPLATE, None, "<|im_end|>", False, "chatml", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    (LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", True, "llama3", None),
    (MISTRAL_TEMPLATE, "<s>", "</s>", True, "mistral", None),
    (PHI3_TEMPLATE, "<s>", "<|endoftext|>", False, "phi3", None),
    (GEMMA_TEMPLATE, "<bos>", "<eos>", True, "gemma", None),
], ids=["smollm2-chatml-default-system", "llama3-bos", "mistral-inst", "phi3", "gemma-no-system"])
def test_templates_are_recognised_and_the_go_template_renders_the_same_prompts(template, bos, eos, add_bos, family,
                                                                               system):
    tok = hf_tokenizer(template, bos, eos)

    def render(messages):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    found = recognise_template(render, tok.bos_token, tok.eos_token, add_bos=add_bos, where="test")
    assert found.family.name == family and found.family.default_system == system
    assert eos in found.stops
    if not gotemplate.available():
        if REQUIRE_GO:
            pytest.fail("WORKBENCH_REQUIRE_GO=1 but the go toolchain is not installed")
        pytest.skip("Go's text/template is needed to render an Ollama template (apt-get install golang-go)")
    conversations = [c for c in TWO_TURNS if found.system_supported or c[0]["role"] != "system"]
    ollama = gotemplate.render(found.go_template(), [gotemplate.ollama_messages(c, system) for c in conversations])
    for conversation, prompt in zip(conversations, ollama):
        # llama.cpp (so Ollama) writes BOS itself when the GGUF says add_bos_token
        assert (bos if add_bos else "") + prompt == render(conversation)


def test_an_unknown_template_family_is_refused_with_the_reason():
    tok = hf_tokenizer("{% for m in messages %}### {{ m['role'] | upper }}: {{ m['content'] }}\n{% endfor %}### ASSISTANT:",
                       None, "<|endoftext|>")
    with pytest.raises(WorkbenchError, match="none of the families") as err:
        recognise_template(lambda m: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True), None,
                           tok.eos_token, add_bos=False, where="test")
    assert "TEMPLATE by hand" in err.value.hint
    assert {f.name for f in FAMILIES} >= {"chatml", "llama3", "mistral"}


def test_ollama_modelfile_beside_a_merged_export(base_dir, tmp_path):
    base = base_dir("qwen2")
    result = export_gguf(base, None, tmp_path / "out", type_name="q8_0", ollama=True)
    assert sorted(p.name for p in result.output.iterdir()) == ["Modelfile", "README.md", "model-Q8_0.gguf"]
    modelfile = gotemplate.parse_modelfile(result.modelfile.read_text())
    assert modelfile["FROM"] == ["./model-Q8_0.gguf"]
    params = modelfile["PARAMETER"]
    assert 'stop "<|im_end|>"' in params and 'stop "<|endoftext|>"' in params and any(p.startswith("num_ctx ") for p in params)
    assert "ollama create out -f Modelfile" in result.instructions
    if gotemplate.available():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base)
        prompts = gotemplate.render(modelfile["TEMPLATE"][0], TWO_TURNS)
        assert prompts == [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in TWO_TURNS]


def test_cli_gguf_export_merged_with_ollama_and_adapter(base_dir, tmp_path, capsys):
    from workbench.cli import main

    base = base_dir("llama")
    adapter = make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    assert main(["export", str(adapter), "--out", str(tmp_path / "merged"), "--ollama"]) == 0  # base: the adapter's record
    out = capsys.readouterr().out
    assert f"GGUF model written to {tmp_path / 'merged' / 'model-Q8_0.gguf'}" in out
    assert "ollama create merged -f Modelfile" in out
    assert main(["export", str(adapter), "--out", str(tmp_path / "lora"), "--gguf-adapter", "--type", "f16",
                 "--base", str(base)]) == 0
    assert (tmp_path / "lora" / "adapter-F16.gguf").is_file()
    assert read_gguf(tmp_path / "lora" / "adapter-F16.gguf")[2]["blk.0.attn_q.weight.lora_a"] == "F16"
    assert main(["export", str(adapter), "--out", str(tmp_path / "x"), "--gguf", "--portable"]) == 2
    assert "--portable is a PEFT form" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
