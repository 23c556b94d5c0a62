"""Tiny models and a tiny tokenizer, built offline from configs, shared by the whole test suite.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained in milliseconds on a fixed
text, and models are random-initialised from small configs of the real architectures.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

CORPUS = (
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France. "
    "Question: what is two plus two? Answer: four. Translate to French: cat -> chat. "
    "user assistant system instruction input output response ### Below is an instruction. "
) * 4

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Small but real configs: hidden sizes differ per architecture so shape bugs show up.
ARCH_CONFIGS: dict[str, dict] = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(model_type="mistral", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2),
    "gemma": dict(model_type="gemma", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "phi3": dict(model_type="phi3", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, pad_token_id=0),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=512),
    "gpt_neox": dict(model_type="gpt_neox", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4),
    "opt": dict(model_type="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                word_embed_proj_dim=64, max_position_embeddings=512),
    "bert": dict(model_type="bert", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_labels=3),
}
CAUSAL_ARCHS = [a for a in ARCH_CONFIGS if a != "bert"]


@lru_cache(maxsize=1)
def _tokenizer_files() -> tuple:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS], trainer)
    return (tok.to_str(),)


def make_tokenizer():
    """A PreTrainedTokenizerFast with eos/pad tokens and a ChatML chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_files()[0]),
        eos_token="<|endoftext|>", pad_token="<pad>", bos_token=None,
    )
    tok.chat_template = CHATML
    return tok


def make_config(arch: str, **overrides):
    from transformers import AutoConfig

    kw = dict(ARCH_CONFIGS[arch])
    model_type = kw.pop("model_type")
    tok = make_tokenizer()
    kw.setdefault("vocab_size", len(tok))
    if arch != "bert":
        kw.setdefault("eos_token_id", tok.eos_token_id)
        kw.setdefault("bos_token_id", tok.eos_token_id)
        kw.setdefault("pad_token_id", tok.pad_token_id)
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)


def make_model(arch: str, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    cfg = make_config(arch, **overrides)
    cls = AutoModelForSequenceClassification if arch == "bert" else AutoModelForCausalLM
    return cls.from_config(cfg).eval()


def save_model(arch: str, folder: Path, seed: int = 0, max_shard_size: str | None = None, **overrides) -> Path:
    """Save a tiny model + tokenizer as a local Hugging Face folder (safetensors) and return it."""
    folder = Path(folder)
    model = make_model(arch, seed=seed, **overrides)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kw)
    make_tokenizer().save_pretrained(folder)
    return folder


def pickled_copy(src: Path, folder: Path) -> Path:
    """A copy of the saved model folder ``src`` with its weights as pytorch_model.bin only (how older Hub
    models ship): the same tensors, pickled by torch.save."""
    import shutil

    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    shutil.copytree(src, folder)
    (folder / "model.safetensors").unlink()
    torch.save(AutoModelForCausalLM.from_pretrained(src).state_dict(), folder / "pytorch_model.bin")
    return folder


# Vision models for image classification (core/images.py): small, real architectures, 3-channel 16 × 16 inputs.
VISION_CONFIGS: dict[str, dict] = {
    "vit": dict(model_type="vit", image_size=16, patch_size=4, num_channels=3, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4),
    "resnet": dict(model_type="resnet", num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                   layer_type="basic"),
}


def save_vision_model(arch: str, folder: Path, num_labels: int = 10, seed: int = 0, **overrides) -> Path:
    """A tiny image classifier and its image processor (resize to 16 × 16, normalise) as a local folder."""
    from transformers import AutoConfig, AutoModelForImageClassification, ViTImageProcessor

    kw = dict(VISION_CONFIGS[arch])
    kw.update(overrides)
    torch.manual_seed(seed)
    model = AutoModelForImageClassification.from_config(AutoConfig.for_model(kw.pop("model_type"), num_labels=num_labels, **kw))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return Path(folder)


def save_digit_images(folder: Path, per_class: int = 12, classes: int = 4, seed: int = 0) -> Path:
    """An image folder of class sub-folders of 8 × 8 grey PNGs. With scikit-learn installed these are its bundled
    handwritten digits (load_digits); without it, each class is a fixed random 8 × 8 pattern plus noise, drawn
    with numpy, so that the classes can be learned."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    try:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pick = {c: np.flatnonzero(digits.target == c)[:per_class] for c in range(classes)}
        images = {c: [digits.images[i] / 16.0 for i in idx] for c, idx in pick.items()}
    except ImportError:
        patterns = rng.random((classes, 8, 8)) > 0.5
        images = {c: [np.clip(patterns[c] * 0.8 + rng.normal(0, 0.15, (8, 8)), 0, 1) for _ in range(per_class)]
                  for c in range(classes)}
    for c, pictures in images.items():
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
        for i, picture in enumerate(pictures):
            Image.fromarray((picture * 255).astype("uint8"), mode="L").save(folder / str(c) / f"{i:03d}.png")
    return folder
