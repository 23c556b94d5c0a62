"""Real-shaped config.json files (sizes as published for these models), per architecture, for the template tests."""

from __future__ import annotations

_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "attention_bias": False,
          "mlp_bias": False, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
          "bos_token_id": 128000, "eos_token_id": 128001, "max_position_embeddings": 8192, "dtype": "bfloat16"}
_LLAMA2_IDS = {"bos_token_id": 1, "eos_token_id": 2, "rope_theta": 10000.0, "max_position_embeddings": 4096}
_MISTRAL = {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "hidden_act": "silu", "rms_norm_eps": 1e-5,
            "rope_theta": 1000000.0, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
            "max_position_embeddings": 32768, "sliding_window": None, "torch_dtype": "bfloat16"}
_QWEN2 = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "rms_norm_eps": 1e-6,
          "rope_theta": 1000000.0, "bos_token_id": 151643, "eos_token_id": 151645, "max_position_embeddings": 32768,
          "sliding_window": 32768, "use_sliding_window": False, "torch_dtype": "bfloat16"}
_QWEN3 = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_act": "silu", "rms_norm_eps": 1e-6,
          "rope_theta": 1000000.0, "bos_token_id": 151643, "eos_token_id": 151645, "max_position_embeddings": 40960,
          "attention_bias": False, "head_dim": 128, "use_sliding_window": False, "torch_dtype": "bfloat16"}
_GEMMA = {"model_type": "gemma", "architectures": ["GemmaForCausalLM"], "hidden_act": "gelu_pytorch_tanh",
          "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "head_dim": 256, "vocab_size": 256000, "bos_token_id": 2,
          "eos_token_id": 1, "pad_token_id": 0, "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}
_PHI3 = {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "hidden_act": "silu", "rms_norm_eps": 1e-5,
         "rope_theta": 10000.0, "vocab_size": 32064, "bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000,
         "tie_word_embeddings": False, "max_position_embeddings": 4096, "torch_dtype": "bfloat16"}


def _sizes(h: int, i: int, layers: int, heads: int, kv: int | None = None, vocab: int | None = None, **more) -> dict:
    d = {"hidden_size": h, "intermediate_size": i, "num_hidden_layers": layers, "num_attention_heads": heads, **more}
    if kv is not None:
        d["num_key_value_heads"] = kv
    if vocab is not None:
        d["vocab_size"] = vocab
    return d


# name → config; within one family the first one is opened first (it teaches the template), the rest use it.
FAMILIES: dict[str, list[tuple[str, dict]]] = {
    "llama": [
        ("llama-3-8b", {**_LLAMA, **_sizes(4096, 14336, 32, 32, 8, 128256)}),
        ("llama-3-70b", {**_LLAMA, **_sizes(8192, 28672, 80, 64, 8, 128256)}),
        ("tinyllama-1.1b", {**_LLAMA, **_sizes(2048, 5632, 22, 32, 4, 32000), **_LLAMA2_IDS}),
    ],
    "llama-3.2-head-dim-tied": [
        ("llama-3.2-1b", {**_LLAMA, **_sizes(2048, 8192, 16, 32, 8, 128256), "head_dim": 64, "tie_word_embeddings": True}),
        ("llama-3.2-3b", {**_LLAMA, **_sizes(3072, 8192, 28, 24, 8, 128256), "head_dim": 128, "tie_word_embeddings": True}),
    ],
    "llama-mha-no-kv-field": [
        ("llama-2-7b-like", {**_LLAMA, **_sizes(4096, 11008, 32, 32, None, 32000), **_LLAMA2_IDS}),
        ("llama-2-13b-like", {**_LLAMA, **_sizes(5120, 13824, 40, 40, None, 32000), **_LLAMA2_IDS}),
    ],
    "llama-biased-tied": [
        ("llama-bias-a", {**_LLAMA, **_LLAMA2_IDS, **_sizes(512, 1376, 4, 8, 2, 32000), "attention_bias": True, "mlp_bias": True,
                          "tie_word_embeddings": True}),
        ("llama-bias-b", {**_LLAMA, **_LLAMA2_IDS, **_sizes(768, 2048, 6, 12, 4, 50000), "attention_bias": True, "mlp_bias": True,
                          "tie_word_embeddings": True}),
    ],
    "mistral": [
        ("mistral-7b", {**_MISTRAL, **_sizes(4096, 14336, 32, 32, 8, 32768)}),
        ("mistral-small-like", {**_MISTRAL, **_sizes(6144, 16384, 56, 48, 8, 32768)}),
    ],
    "mistral-head-dim": [
        ("mistral-nemo-12b", {**_MISTRAL, **_sizes(5120, 14336, 40, 32, 8, 131072), "head_dim": 128}),
        ("mistral-nemo-like-small", {**_MISTRAL, **_sizes(3072, 8192, 20, 16, 4, 131072), "head_dim": 160}),
    ],
    "qwen2": [
        ("qwen2.5-7b", {**_QWEN2, **_sizes(3584, 18944, 28, 28, 4, 152064), "tie_word_embeddings": False,
                        "max_window_layers": 28}),
        ("qwen2.5-14b", {**_QWEN2, **_sizes(5120, 13824, 48, 40, 8, 152064), "tie_word_embeddings": False,
                         "max_window_layers": 28}),
    ],
    "qwen3": [
        ("qwen3-8b", {**_QWEN3, **_sizes(4096, 12288, 36, 32, 8, 151936), "tie_word_embeddings": False,
                      "max_window_layers": 36}),
        ("qwen3-14b-like", {**_QWEN3, **_sizes(5120, 17408, 40, 40, 8, 151936), "tie_word_embeddings": False,
                            "max_window_layers": 36}),
    ],
    "qwen3-tied": [
        ("qwen3-0.6b", {**_QWEN3, **_sizes(1024, 3072, 28, 16, 8, 151936), "tie_word_embeddings": True,
                        "max_window_layers": 28}),
        ("qwen3-1.7b", {**_QWEN3, **_sizes(2048, 6144, 28, 16, 8, 151936), "tie_word_embeddings": True,
                        "max_window_layers": 28}),
    ],
    "gemma": [
        ("gemma-2b", {**_GEMMA, **_sizes(2048, 16384, 18, 8, 1)}),
        ("gemma-7b", {**_GEMMA, **_sizes(3072, 24576, 28, 16, 16)}),
    ],
    "phi3": [
        ("phi-3-mini", {**_PHI3, **_sizes(3072, 8192, 32, 32, 32)}),
        ("phi-3-medium", {**_PHI3, **_sizes(5120, 17920, 40, 40, 10)}),
    ],
}
