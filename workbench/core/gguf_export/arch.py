"""Hugging Face architectures → llama.cpp's: the GGUF architecture name, its hyper-parameter keys, and how each
checkpoint tensor is named and laid out in a GGUF file.

Tensor names come from the ``gguf`` package's ``TensorNameMap`` (the table llama.cpp's converter uses). What
the table does not say, and each architecture here spells out:

* which ``config.json`` values become which ``<arch>.*`` keys (llama.cpp refuses a file that lacks one it
  needs, and silently uses a default for some optional ones);
* the row order of the query and key projections. Hugging Face's Llama applies rotary embeddings to the two
  *halves* of each head (``rotate_half``); llama.cpp's ``llama`` architecture rotates *adjacent pairs*. The
  same model therefore stores the rows of ``q_proj`` / ``k_proj`` (and their biases, and a LoRA ``lora_B``)
  in another order in GGUF: within each head, row ``c·half + i`` of the Hugging Face layout becomes row
  ``2i + c``. Qwen2/3, Phi-3 and Gemma use llama.cpp's NEOX rotation, which is Hugging Face's, and are stored
  as they are;
* Gemma's RMSNorm computes ``x · (1 + w)`` and stores ``w``; llama.cpp's gemma graphs multiply by the weight as
  stored, so (as llama.cpp's converter does) every norm weight is written as ``w + 1`` (``norm_offset``);
* hyper-parameters only some architectures have (Gemma 2's logit soft-capping, sliding windows), and settings
  llama.cpp hard-codes that a checkpoint could set otherwise (Gemma 2's attention scale), checked per architecture.

An architecture that is not in ``ARCHITECTURES`` is refused before anything is written, with the list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from workbench.core.errors import ModelSourceError

__all__ = ["GgufArchitecture", "ARCHITECTURES", "supported_architectures", "architecture_for", "rope_permute",
           "hparams_metadata", "extra_tensors"]


@dataclass(frozen=True)
class GgufArchitecture:
    model_types: tuple[str, ...]  # config.json model_type values
    gguf_name: str  # general.architecture
    title: str
    permute_qk: bool  # HF rotate_half → llama.cpp's pairwise rotation (see the module docstring)
    # Hugging Face tensors that have no GGUF counterpart and carry nothing llama.cpp needs
    ignored: tuple[str, ...] = ("rotary_emb.inv_freq",)
    # config.json keys whose non-default values llama.cpp would not reproduce: (key, allowed(value) -> bool, why)
    unsupported: tuple[tuple[str, Callable[[Any], bool], str], ...] = field(default=())
    norm_offset: float = 0.0  # added to every "*norm.weight" tensor (Gemma: see the module docstring)
    # (GGUF key suffix, config.json key) of the norms' epsilon: RMSNorm for most, LayerNorm for StableLM/StarCoder2
    norm_eps: tuple[str, str] = ("attention.layer_norm_rms_epsilon", "rms_norm_eps")
    # the <arch>.* keys beyond the common ones, from config.json: (key suffix, value, kind)
    extra_hparams: Callable[[dict[str, Any]], list[tuple[str, Any, str]]] | None = None
    # a reason llama.cpp would compute something else for this config.json, or "" (checks across several keys)
    refuse: Callable[[dict[str, Any]], str] | None = None

    def gguf_arch(self):
        import gguf

        return next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == self.gguf_name)


_LLAMA = GgufArchitecture(("llama", "mistral"), "llama", "Llama, Mistral, SmolLM (llama.cpp: llama)", permute_qk=True)
_QWEN2 = GgufArchitecture(("qwen2",), "qwen2", "Qwen2, Qwen2.5", permute_qk=False,
                          unsupported=(("use_sliding_window", lambda v: not v,
                                        "llama.cpp's qwen2 attends over the whole context"),))
_QWEN3 = GgufArchitecture(("qwen3",), "qwen3", "Qwen3", permute_qk=False,
                          unsupported=(("use_sliding_window", lambda v: not v,
                                        "llama.cpp's qwen3 attends over the whole context"),))


def _sliding_window(config: dict[str, Any]) -> list[tuple[str, Any, str]]:
    window = config.get("sliding_window")
    return [("attention.sliding_window", int(window), "uint32")] if isinstance(window, int) and window > 0 else []


def _gemma2_hparams(config: dict[str, Any]) -> list[tuple[str, Any, str]]:
    out = _sliding_window(config)
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if config.get(key) is not None:
            out.append((key, float(config[key]), "float32"))
    return out


def _attention_scale_problem(config: dict[str, Any], big_layers: int, name: str) -> str:
    """llama.cpp scales Gemma 2/3 attention by 1/sqrt(head_dim), or 1/sqrt(hidden/heads) for the 27B models (known
    to it by their layer count), whatever ``query_pre_attn_scalar`` says."""
    scalar = config.get("query_pre_attn_scalar")
    if scalar is None:
        return ""
    heads, _, head_dim = head_counts(config)
    llama_cpp = int(config["hidden_size"]) // heads if int(config["num_hidden_layers"]) == big_layers else head_dim
    if float(scalar) != float(llama_cpp):
        return (f"query_pre_attn_scalar = {scalar} but llama.cpp's {name} scales attention by 1/sqrt({llama_cpp}) "
                "for this shape")
    return ""


def _gemma2_refuse(config: dict[str, Any]) -> str:
    return _attention_scale_problem(config, 46, "gemma2")


GEMMA3_PATTERN = 6  # llama.cpp's gemma3: every 6th layer attends globally, the others over the sliding window
GEMMA3_LOCAL_THETA = 10000.0  # and its sliding layers' rotary base, both fixed in llama.cpp


def _gemma3_refuse(config: dict[str, Any]) -> str:
    problem = _attention_scale_problem(config, 62, "gemma3")
    if problem:
        return problem
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if config.get(key) is not None:
            return f"{key} = {config[key]} but llama.cpp's gemma3 has no soft-capping"
    blocks = int(config["num_hidden_layers"])
    pattern = ["full_attention" if (i + 1) % GEMMA3_PATTERN == 0 else "sliding_attention" for i in range(blocks)]
    if config.get("layer_types") is not None and list(config["layer_types"]) != pattern:
        return f"layer_types differ from llama.cpp's fixed gemma3 pattern (every {GEMMA3_PATTERN}th layer global)"
    if not isinstance(config.get("sliding_window"), int):
        return "config.json has no sliding_window, which llama.cpp's gemma3 requires"
    local = (config.get("rope_parameters") or {}).get("sliding_attention")
    theta = (local or {}).get("rope_theta", config.get("rope_local_base_freq", GEMMA3_LOCAL_THETA))
    if float(theta) != GEMMA3_LOCAL_THETA or (local or {}).get("rope_type", "default") != "default":
        return (f"the sliding layers' rotary base is {theta} (or scaled) but llama.cpp's gemma3 fixes it at "
                f"{GEMMA3_LOCAL_THETA:g}, unscaled")
    return ""


_PHI3 = GgufArchitecture(("phi3",), "phi3", "Phi-3, Phi-3.5, Phi-4 (llama.cpp: phi3)", permute_qk=False,
                         extra_hparams=_sliding_window)
_GEMMA = GgufArchitecture(("gemma",), "gemma", "Gemma", permute_qk=False, norm_offset=1.0)
_GEMMA2 = GgufArchitecture(("gemma2",), "gemma2", "Gemma 2", permute_qk=False, norm_offset=1.0,
                           extra_hparams=_gemma2_hparams, refuse=_gemma2_refuse)
def _window_problem(config: dict[str, Any], name: str) -> str:
    """A sliding window shorter than the context, which llama.cpp's ``name`` does not apply (it attends over the
    whole context): answers would differ beyond the window."""
    window, context = config.get("sliding_window"), config.get("max_position_embeddings")
    if isinstance(window, int) and isinstance(context, int) and window < context:
        return f"sliding_window = {window} (< {context} positions) but llama.cpp's {name} attends over the whole context"
    return ""


_STABLELM = GgufArchitecture(
    ("stablelm",), "stablelm", "StableLM 2 (1.6B, 3B; llama.cpp: stablelm)", permute_qk=False,
    norm_eps=("attention.layer_norm_epsilon", "layer_norm_eps"),
    unsupported=(("qk_layernorm", lambda v: not v, "per-head q/k layer norms (StableLM 2 12B) are not written here"),
                 ("use_parallel_residual", lambda v: not v, "the parallel residual (StableLM 2 12B) is not written here")))
_STARCODER2 = GgufArchitecture(
    ("starcoder2",), "starcoder2", "StarCoder2 (llama.cpp: starcoder2)", permute_qk=False,
    norm_eps=("attention.layer_norm_epsilon", "norm_epsilon"), refuse=lambda config: _window_problem(config, "starcoder2"))
# Gemma 3's text model (config.json model_type gemma3_text); the multimodal gemma3 folders nest it in text_config
_GEMMA3 = GgufArchitecture(("gemma3_text",), "gemma3", "Gemma 3 (text)", permute_qk=False, norm_offset=1.0,
                           extra_hparams=_sliding_window, refuse=_gemma3_refuse)
ARCHITECTURES: dict[str, GgufArchitecture] = {
    t: a for a in (_LLAMA, _QWEN2, _QWEN3, _PHI3, _GEMMA, _GEMMA2, _GEMMA3, _STABLELM, _STARCODER2) for t in a.model_types}


def supported_architectures() -> list[str]:
    """``config.json`` model types an export can write, for messages and the README."""
    return sorted(ARCHITECTURES)


def architecture_for(config: dict[str, Any], where: str) -> GgufArchitecture:
    """The GGUF architecture of a model's ``config.json``; ``ModelSourceError`` listing the supported ones."""
    model_type = config.get("model_type")
    arch = ARCHITECTURES.get(str(model_type))
    if arch is None:
        raise ModelSourceError(
            f"{where}: architecture {model_type!r} has no GGUF mapping here, so it cannot be exported to GGUF",
            f"GGUF export supports these architectures (config.json model_type): {', '.join(supported_architectures())}; "
            "the adapter can still be exported for PEFT (`workbench export RUN --out DIR`) or merged (`workbench merge`)",
        )
    for key, allowed, why in arch.unsupported:
        if key in config and not allowed(config[key]):
            raise ModelSourceError(f"{where}: {key} = {config[key]!r} cannot be written to GGUF: {why}",
                                   "export for PEFT or merge instead; llama.cpp would compute something else")
    reason = arch.refuse(config) if arch.refuse is not None else ""
    if reason:
        raise ModelSourceError(f"{where}: cannot be written to GGUF: {reason}",
                               "export for PEFT or merge instead; llama.cpp would compute something else")
    return arch


def rope_permute(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a query/key projection (or bias, or LoRA ``lora_B``) from Hugging Face's half-split rotary layout
    to llama.cpp's interleaved one, head by head: row ``c·half + i`` of a head becomes row ``2i + c``."""
    rows = t.shape[0]
    if rows % (2 * heads):
        raise ModelSourceError(f"a projection with {rows} rows cannot be split into {heads} heads of rotary pairs",
                               "config.json's head counts do not match the weights")
    return t.reshape(heads, 2, rows // heads // 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    """Rotary settings across transformers versions: 5.x writes ``rope_parameters``, 4.x ``rope_theta`` and
    ``rope_scaling``."""
    params = dict(config.get("rope_parameters") or {})
    if "full_attention" in params and isinstance(params["full_attention"], dict):
        params = dict(params["full_attention"])
    scaling = config.get("rope_scaling") or {}
    for key, value in scaling.items():
        params.setdefault(key if key != "type" else "rope_type", value)
    if "rope_theta" not in params and "rope_theta" in config:
        params["rope_theta"] = config["rope_theta"]
    return params


def _partial_rotary(config: dict[str, Any]) -> float:
    factor = config.get("partial_rotary_factor")
    if factor is None:
        factor = _rope(config).get("partial_rotary_factor")
    return float(factor) if factor is not None else 1.0


def head_counts(config: dict[str, Any]) -> tuple[int, int, int]:
    """(attention heads, key/value heads, head dimension)."""
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    return heads, kv_heads, head_dim


def hparams_metadata(arch: GgufArchitecture, config: dict[str, Any], where: str) -> list[tuple[str, Any, str]]:
    """The ``<arch>.*`` keys as ``(key, value, kind)`` with kind in uint32, float32, string."""
    name = arch.gguf_name
    try:
        heads, kv_heads, head_dim = head_counts(config)
        out: list[tuple[str, Any, str]] = [
            (f"{name}.context_length", int(config.get("max_position_embeddings") or 2048), "uint32"),
            (f"{name}.embedding_length", int(config["hidden_size"]), "uint32"),
            (f"{name}.block_count", int(config["num_hidden_layers"]), "uint32"),
            (f"{name}.feed_forward_length", int(config["intermediate_size"]), "uint32"),
            (f"{name}.attention.head_count", heads, "uint32"),
            (f"{name}.attention.head_count_kv", kv_heads, "uint32"),
            (f"{name}.{arch.norm_eps[0]}", float(config.get(arch.norm_eps[1], 1e-6)), "float32"),
            # StableLM and others rotate only part of each head (partial_rotary_factor, which transformers 5 keeps
            # in rope_parameters; 1 for most models)
            (f"{name}.rope.dimension_count", int(head_dim * _partial_rotary(config)), "uint32"),
            (f"{name}.vocab_size", int(config["vocab_size"]), "uint32"),
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelSourceError(f"{where}: config.json lacks or garbles {exc} needed for the GGUF header",
                               "check config.json against the original model") from None
    if head_dim * heads != int(config["hidden_size"]) or "head_dim" in config:
        out += [(f"{name}.attention.key_length", head_dim, "uint32"),
                (f"{name}.attention.value_length", head_dim, "uint32")]
    if arch.extra_hparams is not None:
        out += [(f"{name}.{key}", value, kind) for key, value, kind in arch.extra_hparams(config)]
    rope = _rope(config)
    if rope.get("rope_theta") is not None:
        out.append((f"{name}.rope.freq_base", float(rope["rope_theta"]), "float32"))
    kind = (rope.get("rope_type") or "default").lower()
    if kind == "linear":
        out += [(f"{name}.rope.scaling.type", "linear", "string"),
                (f"{name}.rope.scaling.factor", float(rope["factor"]), "float32")]
    elif kind == "yarn":
        out += [(f"{name}.rope.scaling.type", "yarn", "string"),
                (f"{name}.rope.scaling.factor", float(rope["factor"]), "float32"),
                (f"{name}.rope.scaling.original_context_length", int(rope["original_max_position_embeddings"]), "uint32")]
    elif kind not in ("default", "llama3"):  # llama3 scaling is a tensor of per-frequency factors (extra_tensors)
        raise ModelSourceError(f"{where}: rotary scaling {kind!r} has no GGUF form here",
                               "supported rotary scaling: none, linear, yarn, llama3")
    return out


def extra_tensors(arch: GgufArchitecture, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors a GGUF file needs that the checkpoint does not store: Llama 3.1's ``rope_freqs`` (one divisor per
    rotary frequency), computed from ``rope_scaling`` as transformers' ``_compute_llama3_parameters`` does."""
    rope = _rope(config)
    if (rope.get("rope_type") or "").lower() != "llama3":
        return {}
    _, _, head_dim = head_counts(config)
    base = float(rope.get("rope_theta", 10000.0))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    low_wavelen, high_wavelen = old_context / low, old_context / high
    smooth = (old_context / wavelen - low) / (high - low)
    # divisor of each frequency: 1 for short wavelengths, factor for long ones, a blend in between
    divisor = torch.where(wavelen < high_wavelen, torch.ones_like(freqs),
                          torch.where(wavelen > low_wavelen, torch.full_like(freqs, factor),
                                      1.0 / ((1 - smooth) / factor + smooth)))
    return {"rope_freqs.weight": divisor.float()}
