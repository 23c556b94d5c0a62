"""The framework facts the model files rely on (workbench/core/compat.py, "transformers (models)", and
workbench/core/peft_format.py), checked against the installed transformers and PEFT: a release that moves or
changes one of them fails here."""

from __future__ import annotations

import pytest

import tiny
from workbench.core import compat, peft_format


# ------------------------------------------------------------------------------------- known model types


def test_known_model_types_are_what_autoconfig_can_build():
    """load_config refuses a model_type outside the set before transformers sees it, and hands every one inside
    it to AutoConfig: both halves must hold."""
    from transformers import AutoConfig, PretrainedConfig

    known = compat.known_model_types()
    assert {"llama", "mistral", "qwen2", "gemma", "phi3", "gpt2", "gpt_neox", "bert"} <= known
    assert "wizardlm9000" not in known and "my_custom_arch" not in known
    sample = sorted(known)[::100] + ["llama", "gpt2", "bert"]  # each type imports its own configuration module
    for model_type in sample:
        assert isinstance(AutoConfig.for_model(model_type), PretrainedConfig), model_type
    with pytest.raises(ValueError):
        AutoConfig.for_model("wizardlm9000")


# ------------------------------------------------------------------------------------ GGUF architectures


def test_gguf_architectures_are_the_ones_transformers_gguf_loading_accepts():
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    reads = compat.gguf_architectures_transformers_reads()
    assert {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gpt2", "t5"} <= reads
    assert not {"general", "tokenizer"} & reads, "metadata sections are no architectures"
    # The original loader's own gate, less its two metadata sections, is what we list from that path...
    assert set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"} <= reads
    # ...and everything else we list comes from the newer path, which says it handles it.
    newer = reads - set(GGUF_SUPPORTED_ARCHITECTURES)
    if newer:
        from transformers.integrations.gguf import is_gguf_arch_supported

        assert all(is_gguf_arch_supported(a) for a in newer), newer


def _header_only_gguf(path, arch: str) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_block_count(2)
    w.add_feed_forward_length(96)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_transformers_reads_a_listed_gguf_architecture_and_refuses_an_unlisted_one(tmp_path):
    from transformers import AutoConfig

    assert "llama" in compat.gguf_architectures_transformers_reads()
    assert "rwkv6" not in compat.gguf_architectures_transformers_reads()
    _header_only_gguf(tmp_path / "llama.gguf", "llama")
    _header_only_gguf(tmp_path / "rwkv6.gguf", "rwkv6")
    config = AutoConfig.from_pretrained(tmp_path, gguf_file="llama.gguf")
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 2, 64)
    with pytest.raises(ValueError, match="rwkv6"):
        AutoConfig.from_pretrained(tmp_path, gguf_file="rwkv6.gguf")


# ------------------------------------------------------------------------------------------ PEFT's format


def test_adapter_file_names_are_pefts():
    from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

    assert peft_format.ADAPTER_CONFIG == CONFIG_NAME
    assert peft_format.ADAPTER_WEIGHTS == SAFETENSORS_WEIGHTS_NAME


def test_a_saved_peft_adapter_has_those_files_and_every_key_carries_the_prefix(tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open

    model = get_peft_model(tiny.make_model("llama"), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".json", ".safetensors")) == sorted(
        [peft_format.ADAPTER_CONFIG, peft_format.ADAPTER_WEIGHTS])
    with safe_open(str(tmp_path / peft_format.ADAPTER_WEIGHTS), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(peft_format.KEY_PREFIX) for k in keys), keys
    assert f"{peft_format.KEY_PREFIX}model.layers.0.self_attn.q_proj.lora_A.weight" in keys


# ----------------------------------------------------------------------- checkpoint names → parameter names


def _stored_tensors(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("kind", ["vit", "bare-bert"])
def test_loaded_parameter_names_are_where_from_pretrained_puts_each_stored_tensor(kind, tmp_path):
    """ViT's checkpoint keeps the names transformers 5 renames on load (attention.query → q_proj); a bare BertModel
    checkpoint, loaded as a sequence classifier, gains the ``bert.`` prefix. Every stored tensor must be found, by
    the mapping, in the parameter (or buffer) from_pretrained loaded it into."""
    import torch
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification, BertModel

    if kind == "vit":
        folder = tiny.save_vision_model("vit", tmp_path / "vit", num_labels=3)
        cls = AutoModelForImageClassification
    else:
        folder = tmp_path / "bert"
        torch.manual_seed(0)
        BertModel(tiny.make_config("bert")).save_pretrained(folder)
        cls = AutoModelForSequenceClassification
    stored = _stored_tensors(folder)
    loaded = cls.from_pretrained(folder)
    names = compat.loaded_parameter_names(loaded, stored)
    assert set(names) == set(stored)
    model_state = loaded.state_dict()
    for key, tensor in stored.items():
        assert names[key] in model_state, key
        torch.testing.assert_close(model_state[names[key]], tensor, rtol=0, atol=0, msg=key)
    renamed = {k: v for k, v in names.items() if k != v}
    if kind == "vit":
        assert names["vit.encoder.layer.0.attention.attention.query.weight"] == "vit.layers.0.attention.q_proj.weight"
        assert names["classifier.weight"] == "classifier.weight"
    else:
        assert renamed and all(v == f"bert.{k}" for k, v in renamed.items())


def test_loaded_parameter_names_mark_tensors_a_converter_splits(tmp_path):
    """DINOv2's SwiGLU checkpoint stores gate and up projections as one ``weights_in`` tensor that a converter
    chunks on load: no stored tensor is the parameter, and the mapping says so with None."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                          image_size=16, patch_size=4, use_swiglu_ffn=True)
    Dinov2Model(config).save_pretrained(tmp_path)
    stored = _stored_tensors(tmp_path)
    names = compat.loaded_parameter_names(Dinov2Model(config), stored)
    split = [k for k in stored if "weights_in" in k]
    assert split and all(names[k] is None for k in split)
    assert names["encoder.layer.0.attention.attention.query.weight"] == "encoder.layer.0.attention.q_proj.weight"
