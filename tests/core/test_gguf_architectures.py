"""GGUF export of the architectures beyond the llama family: Phi-3 (fused qkv and gate/up projections), Gemma,
Gemma 2 and Gemma 3 (norm weights written as 1 + w, tied embeddings, Gemma 2's soft-capping and extra norms, Gemma 3's
q/k norms and its every-6th-layer global attention), StableLM 2 (partial rotary, biases, LayerNorm) and StarCoder2
(a plain MLP with biases), each a tiny random model with a LoRA adapter on every linear layer.

Checked three ways, none of them the code under test: the ``gguf`` package's reader against PEFT's merge (names,
layout, the +1 of Gemma's norms); transformers' own GGUF loader, which reads phi3 and gemma2 files back and
undoes the +1 itself (its ``Gemma2TensorProcessor``); gemma3, stablelm and starcoder2 files too; and llama.cpp (llama-cpp-python), which must compute the
merged model's logits from the merged GGUF and from the base GGUF with the GGUF adapter (with an F32 key/value
cache, and against a reference whose tanh GELU is ggml's fp16 table: the two roundings llama.cpp adds on its own,
which would otherwise need a tolerance loose enough to hide an export error). The llama.cpp part is
skipped without llama-cpp-python and required under ``make test-gguf`` (WORKBENCH_REQUIRE_LLAMA_CPP=1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.core.errors import ModelSourceError
from workbench.core.gguf_export import export_gguf, export_gguf_adapter, supported_architectures

from test_gguf_export import IDS, load_model, make_adapter, peft_logits, peft_merged_state, read_gguf

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TARGETS = {"phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
           "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
TARGETS["gemma2"] = TARGETS["gemma3_text"] = TARGETS["gemma"]
TARGETS["stablelm"] = TARGETS["gemma"]
TARGETS["starcoder2"] = ["q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"]
ARCHS = ["phi3", "gemma", "gemma2", "gemma3_text", "stablelm", "starcoder2"]
GGUF_ARCH = {"gemma3_text": "gemma3"}  # config.json model_type → general.architecture, where they differ
# Hugging Face module → GGUF tensor, per architecture (written out here, not taken from gguf's TensorNameMap)
BLOCK_NAMES = {
    "phi3": {"self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output", "mlp.gate_up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"},
    "gemma": {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"},
}
BLOCK_NAMES["gemma2"] = {**BLOCK_NAMES["gemma"], "post_attention_layernorm": "post_attention_norm",
                         "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}
BLOCK_NAMES["stablelm"] = BLOCK_NAMES["gemma"]
BLOCK_NAMES["starcoder2"] = {**BLOCK_NAMES["gemma"], "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
BLOCK_NAMES["gemma3_text"] = {**BLOCK_NAMES["gemma2"], "self_attn.q_norm": "attn_q_norm",
                              "self_attn.k_norm": "attn_k_norm"}


def gguf_name(arch: str, key: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "model.norm.bias": "output_norm.bias", "lm_head.weight": "output.weight"}
    if key in fixed:
        return fixed[key]
    parts = key.split(".")
    module, _, kind = ".".join(parts[3:]).rpartition(".")
    return f"blk.{parts[2]}.{BLOCK_NAMES[arch][module]}.{kind}"


def save_model(arch: str, folder: Path, **overrides) -> Path:
    """Tiny models with random norm weights (all-ones norms would hide a missing or doubled +1)."""
    import tiny
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = tiny.make_tokenizer()
    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  vocab_size=len(tok), eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, max_position_embeddings=256)
    kw = {"phi3": dict(num_key_value_heads=4, tie_word_embeddings=False),
          "gemma": dict(num_key_value_heads=2, head_dim=16),
          # query_pre_attn_scalar = head_dim: the scale llama.cpp uses (see the refusal test)
          "gemma2": dict(num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=128),
          # 6 blocks: the last attends globally with its own rotary base (1e6 against the sliding layers' 1e4)
          "gemma3_text": dict(num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=128,
                              num_hidden_layers=6),
          # a quarter of each head rotated, qkv biases and LayerNorm with bias (StableLM 2 1.6B's layout)
          "stablelm": dict(num_key_value_heads=4, use_qkv_bias=True, tie_word_embeddings=False),
          "starcoder2": dict(num_key_value_heads=2, sliding_window=256)}[arch]  # = the context: no window
    cfg = AutoConfig.for_model(arch, **{**common, **kw, **overrides})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm.bias") or name.endswith("proj.bias"):
                param.copy_(0.5 * torch.randn_like(param))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    made: dict[str, tuple[Path, Path]] = {}

    def get(arch: str) -> tuple[Path, Path]:
        if arch not in made:
            root = tmp_path_factory.mktemp(arch)
            base = save_model(arch, root / "model")
            made[arch] = (base, make_adapter(base, root / "adapter", r=4, lora_alpha=8, target_modules=TARGETS[arch]))
        return made[arch]

    return get


def test_the_new_architectures_are_listed():
    assert {"phi3", "gemma", "gemma2", "gemma3_text"} <= set(supported_architectures())


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_export_holds_peft_merged_weights_under_the_architectures_gguf_names(arch, models, tmp_path):
    base, adapter = models(arch)
    result = export_gguf(base, adapter, tmp_path / "out", type_name="f32")
    meta, values, types = read_gguf(result.gguf)
    gguf_arch = GGUF_ARCH.get(arch, arch)
    assert meta["general.architecture"] == gguf_arch
    expected = peft_merged_state(base, adapter)
    tied = arch not in ("phi3", "stablelm")
    mapped = {gguf_name(arch, k): k for k in expected if not (tied and k == "lm_head.weight")}
    assert set(values) == set(mapped), "every checkpoint tensor (a tied output layer once), nothing else"
    offset = 1.0 if arch.startswith("gemma") else 0.0  # Gemma's RMSNorm multiplies by 1 + w; llama.cpp by w
    for name, key in mapped.items():
        want = expected[key].float() + (offset if key.endswith("norm.weight") else 0.0)
        assert values[name].shape == tuple(want.shape), key
        torch.testing.assert_close(torch.from_numpy(values[name].copy()), want, rtol=0, atol=2e-6, msg=key)
    config = json.loads((base / "config.json").read_text())
    rotated = 4 if arch == "stablelm" else 16  # StableLM rotates a quarter of each 16-wide head
    assert meta[f"{gguf_arch}.rope.dimension_count"] == rotated
    assert meta[f"{gguf_arch}.attention.head_count_kv"] == config["num_key_value_heads"]
    if arch in ("stablelm", "starcoder2"):  # LayerNorm: llama.cpp reads another key than for RMSNorm
        eps = config["layer_norm_eps" if arch == "stablelm" else "norm_epsilon"]
        assert meta[f"{arch}.attention.layer_norm_epsilon"] == pytest.approx(eps)
    if arch.startswith("gemma"):
        assert meta[f"{gguf_arch}.attention.key_length"] == meta[f"{gguf_arch}.attention.value_length"] == 16
    if arch == "gemma3_text":
        assert meta["gemma3.attention.sliding_window"] == 128
        assert meta["gemma3.rope.freq_base"] == config["rope_parameters"]["full_attention"]["rope_theta"] == 1e6
    if arch == "gemma2":
        assert meta["gemma2.attn_logit_softcapping"] == pytest.approx(config["attn_logit_softcapping"])
        assert meta["gemma2.final_logit_softcapping"] == pytest.approx(config["final_logit_softcapping"])
        assert meta["gemma2.attention.sliding_window"] == 128


@pytest.mark.parametrize("arch", ["phi3", "gemma2", "gemma3_text", "stablelm", "starcoder2"])
def test_transformers_reads_the_merged_gguf_back(arch, models, tmp_path):
    base, adapter = models(arch)
    result = export_gguf(base, adapter, tmp_path / "out", type_name="f32")
    back = load_model(result.gguf.parent, gguf_file=result.gguf.name, dtype=torch.float32)
    expected = peft_merged_state(base, adapter)
    for key, tensor in back.state_dict().items():
        if key in expected:
            torch.testing.assert_close(tensor, expected[key].float(), rtol=0, atol=2e-6, msg=key)
    assert set(expected) - {"lm_head.weight"} <= set(back.state_dict()), "every tensor read back"
    if not arch.startswith("gemma"):  # gemma2/3: transformers' GGUF config has no query_pre_attn_scalar: weights only
        with torch.no_grad():
            torch.testing.assert_close(back(IDS).logits[0], peft_logits(base, adapter), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_adapter_has_a_pair_for_every_adapted_module(arch, models, tmp_path):
    base, adapter = models(arch)
    result = export_gguf_adapter(adapter, base, tmp_path / "lora", type_name="f32")
    meta, values, _ = read_gguf(result.gguf)
    assert meta["general.type"] == "adapter" and meta["general.architecture"] == GGUF_ARCH.get(arch, arch)
    modules = sum(1 for k in peft_merged_state(base, adapter)
                  if k.endswith(".weight") and any(f".{t}." in k for t in TARGETS[arch]))
    assert sum(n.endswith(".lora_a") for n in values) == sum(n.endswith(".lora_b") for n in values) == modules


def test_gemma2_with_an_attention_scale_llama_cpp_does_not_use_is_refused_before_writing(tmp_path):
    base = save_model("gemma2", tmp_path / "model", query_pre_attn_scalar=256)
    with pytest.raises(ModelSourceError) as info:
        export_gguf(base, None, tmp_path / "out", type_name="f32")
    assert "query_pre_attn_scalar" in info.value.message and info.value.hint
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change,named", [
    (dict(layer_types=["full_attention"] * 6), "layer_types"),
    (dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                           "sliding_attention": {"rope_type": "default", "rope_theta": 5e4}}), "rotary base"),
    (dict(final_logit_softcapping=30.0), "soft-capping"),
])
def test_gemma3_settings_llama_cpp_fixes_otherwise_are_refused_before_writing(change, named, tmp_path):
    base = save_model("gemma3_text", tmp_path / "model", **change)
    with pytest.raises(ModelSourceError, match=named):
        export_gguf(base, None, tmp_path / "out", type_name="f32")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- llama.cpp

TOKENS = [1, 5, 7, 9, 20, 30, 41, 2, 77, 150, 4, 8, 120, 60, 33, 201]


def _llama_cpp():
    if os.environ.get("WORKBENCH_REQUIRE_LLAMA_CPP") == "1":
        import llama_cpp

        return llama_cpp
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make test-gguf installs it)")


def _llama_cpp_logits(llama_cpp, path: Path, tokens: list[int], lora: Path | None = None) -> np.ndarray:
    # an F32 key/value cache: llama.cpp's default F16 cache rounds every key and value, which alone moved Gemma 2's
    # logits by 3.6e-3 here and would hide an export error of that size
    llm = llama_cpp.Llama(model_path=str(path), lora_path=str(lora) if lora else None, logits_all=True, n_ctx=64,
                          n_threads=2, n_batch=64, verbose=False, type_k=llama_cpp.GGML_TYPE_F32,
                          type_v=llama_cpp.GGML_TYPE_F32)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


class GgmlTableGelu(torch.nn.Module):
    """The tanh GELU as ggml's CPU backend computes it (``ggml_vec_gelu_f32`` / ``ggml_vec_geglu_f32`` under
    ``GGML_GELU_FP16``, on by default): the input rounded to fp16, looked up in a table of fp16 results, and
    x ≤ -10 → 0, x ≥ 10 → x. Through six Gemma 3 blocks that rounding alone moves the logits by about 3e-3 against
    transformers' exact GELU, ten times what a correct export leaves once it is modelled (measured: 3.4e-4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = torch.nn.functional.gelu(x.half().float(), approximate="tanh").half().float()
        return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, table))


def with_ggml_gelu(model: torch.nn.Module) -> int:
    """Swap every tanh-GELU activation of ``model`` for ``GgmlTableGelu``; the number swapped."""
    from transformers.activations import GELUTanh, PytorchGELUTanh

    swapped = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (GELUTanh, PytorchGELUTanh)):
                setattr(module, child_name, GgmlTableGelu())
                swapped += 1
    return swapped


@pytest.mark.parametrize("arch", ARCHS)
def test_llama_cpp_computes_the_merged_models_logits_from_the_merged_gguf_and_from_the_adapter(arch, models,
                                                                                              tmp_path):
    llama_cpp = _llama_cpp()
    base, adapter = models(arch)
    from peft import PeftModel

    reference = PeftModel.from_pretrained(load_model(base, dtype=torch.float32), adapter).eval()
    with torch.no_grad():
        exact = reference(torch.tensor([TOKENS])).logits[0].numpy()
        # Gemma and StarCoder2 use the tanh GELU, which llama.cpp computes through an fp16 table. Against it, PEFT's
        # own merge: rounding to fp16 turns the 1e-7 that separate merged from unmerged sums into 2.6e-4 (Gemma)
        reference = reference.merge_and_unload()
        expected = reference(torch.tensor([TOKENS])).logits[0].numpy() if with_ggml_gelu(reference) else exact
    merged = _llama_cpp_logits(llama_cpp, export_gguf(base, adapter, tmp_path / "merged", type_name="f32").gguf,
                               TOKENS)
    base_gguf = export_gguf(base, None, tmp_path / "base", type_name="f32").gguf
    lora = export_gguf_adapter(adapter, base, tmp_path / "lora", type_name="f32", base_gguf=base_gguf).gguf
    with_adapter = _llama_cpp_logits(llama_cpp, base_gguf, TOKENS, lora=lora)
    delta, adapter_delta = np.abs(merged - expected).max(), np.abs(with_adapter - merged).max()
    print(f"\n{arch}: llama.cpp merged GGUF vs PEFT max |Δlogit| {delta:.2e} (exact GELU: "
          f"{np.abs(merged - exact).max():.2e}), top-1 {np.mean(merged.argmax(-1) == exact.argmax(-1)):.3f}; "
          f"base GGUF + GGUF adapter vs merged GGUF {adapter_delta:.2e} (logits up to {np.abs(exact).max():.2f})")
    assert delta < 2e-3  # measured at most 3.4e-4 (gemma3_text); a wrong rotary base of one layer: 2.1e-2
    assert (merged.argmax(-1) == expected.argmax(-1)).all()
    assert adapter_delta < 1e-3


@pytest.mark.parametrize("arch,change,named", [
    ("stablelm", dict(qk_layernorm=True), "qk_layernorm"),
    ("stablelm", dict(use_parallel_residual=True), "use_parallel_residual"),
    ("starcoder2", dict(sliding_window=64), "sliding_window"),
])
def test_layouts_the_export_does_not_write_are_refused_before_writing(arch, change, named, tmp_path):
    base = save_model(arch, tmp_path / "model", **change)
    with pytest.raises(ModelSourceError, match=named) as info:
        export_gguf(base, None, tmp_path / "out", type_name="f32")
    assert info.value.hint and not (tmp_path / "out").exists()
