"""The tokenizer in GGUF form: vocabulary, token types, merges, special tokens, chat template.

llama.cpp does not run the Hugging Face tokenizer; it re-implements a few families, picked by
``tokenizer.ggml.model`` (``gpt2``: byte-level BPE) and, for BPE, ``tokenizer.ggml.pre`` (the regular
expressions that split text before merging). A wrong ``pre`` still loads and silently tokenizes differently,
so it is decided here from the ``pre_tokenizer`` section of ``tokenizer.json`` — the splitting rules
themselves — and a tokenizer whose rules match none of llama.cpp's is refused rather than guessed.

Two sources:

* a base model that was itself converted from a GGUF file (the built-in SmolLM2, any GGUF opened as a base):
  that file's ``tokenizer.*`` entries are copied as they are, since llama.cpp wrote them for that very model;
* any other Hugging Face folder: built from ``tokenizer.json`` (tokens and types here; merges, special token
  ids, ``add_bos_token`` and the chat template by the ``gguf`` package's ``SpecialVocab``, which reads
  ``tokenizer_config.json``, ``chat_template.jinja`` and ``config.json`` as llama.cpp's converter does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.core.errors import ModelSourceError

__all__ = ["Vocab", "vocab_from_gguf", "vocab_from_folder", "pre_tokenizer_name"]

# The split rules of tokenizer.json files as their models ship them (facts about those files; llama.cpp's
# vocabulary code quotes the same strings before its own adapted versions).
_LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                 "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_QWEN2_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED = 1, 3, 4, 5


@dataclass
class Vocab:
    """Tokenizer metadata as ``(key, value, value_type, sub_type)`` entries for the GGUF writer, and what the
    Ollama Modelfile needs from it."""

    entries: list[tuple[str, Any, Any, Any]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    bos_id: int | None = None
    eos_id: int | None = None
    add_bos: bool = False
    chat_template: str | None = None
    source: str = ""  # where it came from, for messages

    def token(self, token_id: int | None) -> str | None:
        return self.tokens[token_id] if token_id is not None and 0 <= token_id < len(self.tokens) else None


def vocab_from_gguf(path: Path) -> Vocab:
    """Every ``tokenizer.*`` entry of an existing GGUF file, copied with its exact value types."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(path))
    vocab = Vocab(source=str(path))
    for key, f in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        sub = f.types[1] if vtype == GGUFValueType.ARRAY and len(f.types) > 1 else None
        value = f.contents()
        vocab.entries.append((key, value, vtype, sub))
        if key == "tokenizer.ggml.tokens":
            vocab.tokens = list(value)
        elif key == "tokenizer.ggml.bos_token_id":
            vocab.bos_id = int(value)
        elif key == "tokenizer.ggml.eos_token_id":
            vocab.eos_id = int(value)
        elif key == "tokenizer.ggml.add_bos_token":
            vocab.add_bos = bool(value)
        elif key == "tokenizer.chat_template":
            vocab.chat_template = str(value)
    if not vocab.tokens:
        raise ModelSourceError(f"{path} has no tokenizer.ggml.tokens", "the GGUF file lacks its vocabulary")
    return vocab


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str | None:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level BPE ``tokenizer.json`` whose splitting it reproduces
    exactly, or None."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    steps = [s for s in steps or [] if isinstance(s, dict)]
    kinds = [s.get("type") for s in steps]

    def byte_level(step: dict[str, Any], regex: bool) -> bool:
        return (step.get("type") == "ByteLevel" and bool(step.get("use_regex", True)) == regex
                and not step.get("add_prefix_space", False))

    def split(step: dict[str, Any], pattern: str) -> bool:
        return (step.get("type") == "Split" and (step.get("pattern") or {}).get("Regex") == pattern
                and step.get("behavior") == "Isolated" and not step.get("invert", False))

    if kinds == ["ByteLevel"] and byte_level(steps[0], regex=True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level(steps[1], regex=True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and byte_level(steps[1], regex=False):
        if split(steps[0], _LLAMA3_SPLIT):
            return "llama-bpe"
        if split(steps[0], _QWEN2_SPLIT):
            return "qwen2"
    return None


def vocab_from_folder(folder: Path, config: dict[str, Any]) -> Vocab:
    """The tokenizer of a Hugging Face folder, for a byte-level BPE ``tokenizer.json`` that llama.cpp tokenizes
    the same way; ``ModelSourceError`` saying why for any other."""
    from gguf import GGUFValueType, SpecialVocab

    path = folder / "tokenizer.json"
    hint = ("GGUF export supports byte-level BPE tokenizers whose pre-tokenizer llama.cpp reproduces (GPT-2, "
            "SmolLM, Llama 3, Qwen2/3); convert this model with llama.cpp's convert_hf_to_gguf.py instead")
    if not path.is_file():
        raise ModelSourceError(f"{folder} has no tokenizer.json, so its tokenizer cannot be written to GGUF", hint)
    try:
        tj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot read {path}: {exc}", "the file is damaged; copy it again") from None
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = "SentencePiece-style BPE (byte_fallback)" if model.get("byte_fallback") else model.get("type")
        raise ModelSourceError(f"{path}: a {kind} tokenizer cannot be written to GGUF here", hint)
    normalizer = (tj.get("normalizer") or {}).get("type")
    if normalizer not in (None, "NFC"):
        raise ModelSourceError(f"{path}: the tokenizer normalizes text ({normalizer}), which llama.cpp does not", hint)
    pre = pre_tokenizer_name(tj)
    if pre is None:
        raise ModelSourceError(f"{path}: its pre-tokenizer {json.dumps(tj.get('pre_tokenizer'))[:200]} matches none "
                               "that llama.cpp implements, so llama.cpp would split text differently", hint)

    by_id: dict[int, str] = {int(i): t for t, i in (model.get("vocab") or {}).items()}
    added = {int(a["id"]): a for a in tj.get("added_tokens") or []}
    for i, a in added.items():
        by_id[i] = a["content"]
    size = max(int(config.get("vocab_size") or 0), max(by_id, default=-1) + 1)
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:  # the embedding has more rows than the tokenizer has tokens
            tokens.append(f"[PAD{i}]")
            types.append(_TOKEN_UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(_TOKEN_CONTROL if added[i].get("special") else _TOKEN_USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(_TOKEN_NORMAL)

    special = SpecialVocab(folder, load_merges=True, n_vocab=size)
    if not special.merges:
        raise ModelSourceError(f"{path} has no BPE merges", "the tokenizer file is incomplete; copy it again")
    vocab = Vocab(source=str(path), tokens=tokens)
    e = vocab.entries
    e.append(("tokenizer.ggml.model", "gpt2", GGUFValueType.STRING, None))
    e.append(("tokenizer.ggml.pre", pre, GGUFValueType.STRING, None))
    e.append(("tokenizer.ggml.tokens", tokens, GGUFValueType.ARRAY, GGUFValueType.STRING))
    e.append(("tokenizer.ggml.token_type", types, GGUFValueType.ARRAY, GGUFValueType.INT32))
    e.append(("tokenizer.ggml.merges", list(special.merges), GGUFValueType.ARRAY, GGUFValueType.STRING))
    names = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "sep": "seperator_token_id",
             "pad": "padding_token_id", "cls": "cls_token_id", "mask": "mask_token_id", "eot": "eot_token_id",
             "eom": "eom_token_id"}
    for kind, token_id in special.special_token_ids.items():
        if kind in names:
            e.append((f"tokenizer.ggml.{names[kind]}", int(token_id), GGUFValueType.UINT32, None))
    for kind, value in special.add_special_token.items():
        if kind in ("bos", "eos", "sep"):
            e.append((f"tokenizer.ggml.add_{kind}_token", bool(value), GGUFValueType.BOOL, None))
    if isinstance(special.chat_template, str):
        e.append(("tokenizer.chat_template", special.chat_template, GGUFValueType.STRING, None))
        vocab.chat_template = special.chat_template
    vocab.bos_id = special.special_token_ids.get("bos")
    vocab.eos_id = special.special_token_ids.get("eos")
    vocab.add_bos = bool(special.add_special_token.get("bos", False))
    return vocab
