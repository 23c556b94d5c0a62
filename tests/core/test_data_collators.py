"""Our collators against transformers' own, on rows the preparation really produced: where they give the same
tensors, and each way they differ (the reasons the workbench keeps its own, see core/data/collators.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny
import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

from workbench.core import data
from workbench.core.config import DataConfig


def prepared(tmp_path: Path, tok, *, packing: bool):
    rows = [{"prompt": "Question: what is two plus two? " * (i % 3 + 1), "completion": "Answer: four." * (i % 2 + 1)}
            for i in range(8)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(train_files=[str(path)], packing=packing, max_length=128)  # several packed rows
    return data.prepare(cfg, tok, cache_dir=tmp_path / "cache")


@pytest.fixture
def tok():
    return tiny.make_tokenizer()


@pytest.fixture
def rows(tmp_path, tok):
    """The prepared (unpacked) rows as the Trainer hands them to the collator: input_ids, labels, length."""
    features = list(prepared(tmp_path, tok, packing=False).train)
    assert {len(f["input_ids"]) for f in features} != {len(features[0]["input_ids"])}  # lengths differ: padding
    return features


def assert_same(ours: dict, theirs: dict, keys) -> None:
    for key in keys:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key


def test_padded_batches_are_seq2seq_padding_plus_the_columns_the_model_must_not_get(rows, tok):
    ours = data.make_collator(tok, packing=False)(rows)
    theirs = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100)(rows)
    assert set(ours) == {"input_ids", "labels", "attention_mask"}
    assert_same(ours, theirs, ours)
    assert set(theirs) - set(ours) == {"length"}  # passed on to the model's forward


def test_seq2seq_padding_follows_the_tokenizers_side_and_needs_a_pad_token(rows, tok):
    right = data.make_collator(tok, packing=False)(rows)
    tok.padding_side = "left"  # how tokenizers set up for batched generation come
    assert_same(data.make_collator(tok, packing=False)(rows), right, right)
    left = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100)(rows)
    assert not torch.equal(left["input_ids"], right["input_ids"])
    # ... which moves every real token of a model with absolute positions, and so changes its loss.
    torch.manual_seed(0)
    gpt2 = tiny.make_model("gpt2").eval()
    with torch.no_grad():
        difference = gpt2(**right).loss - gpt2(**{k: left[k] for k in right}).loss
    assert abs(difference.item()) > 1e-4

    tok.padding_side = "right"
    tok.pad_token = None
    assert tok.pad_token_id is None
    with pytest.raises(ValueError, match="padding token"):
        DataCollatorForSeq2Seq(tok, label_pad_token_id=-100)(rows)
    no_pad = data.make_collator(tok, packing=False)(rows)  # pads with EOS; padding is masked and never trained
    assert torch.equal(no_pad["input_ids"][right["attention_mask"] == 0], torch.full_like(
        no_pad["input_ids"][right["attention_mask"] == 0], tok.eos_token_id))
    assert_same(no_pad, right, ["labels", "attention_mask"])


def test_flattening_is_not_our_packing(tmp_path, tok):
    packed = prepared(tmp_path, tok, packing=True)
    padded = prepared(tmp_path, tok, packing=False)
    features = list(packed.train)
    ours = data.make_collator(tok, packing=True)(features)
    assert len(features) > 1 and len({f["length"] for f in features}) > 1
    real = [slice(0, f["length"]) for f in features]  # each row's tokens before its padding
    restarts = int(sum((ours["position_ids"][r, s] == 0).sum() for r, s in enumerate(real)))
    assert restarts == len(padded.train)  # positions restart at every example

    # Given our packed rows, flattening takes each row for one example: positions run on across examples.
    rows_as_examples = DataCollatorWithFlattening()([{"input_ids": f["input_ids"], "labels": f["labels"]}
                                                     for f in features])
    assert int((rows_as_examples["position_ids"] == 0).sum()) == len(features) < restarts

    # Given the examples themselves (in our rows' order), it yields our tokens, labels and positions, but as one
    # row holding the whole batch, and without use_cache=False.
    examples = []
    for f in features:
        starts = [i for i, p in enumerate(f["position_ids"]) if p == 0] + [f["length"]]
        examples += [{"input_ids": f["input_ids"][a:b], "labels": f["labels"][a:b]} for a, b in zip(starts, starts[1:])]
    flat = DataCollatorWithFlattening()(examples)
    for key in ("input_ids", "labels", "position_ids"):
        joined = torch.cat([ours[key][r, s] for r, s in enumerate(real)])
        assert flat[key].shape == (1, len(joined)) and torch.equal(flat[key][0], joined), key
    assert ours["input_ids"].shape[0] == len(features) > 1
    assert "use_cache" not in flat and ours["use_cache"] is False

    # With the model's KV cache on (the default), the flattened examples attend to each other; ours do not.
    torch.manual_seed(0)
    llama = tiny.make_model("llama").eval()
    assert llama.config.use_cache
    with torch.no_grad():
        unpacked = llama(**data.make_collator(tok, packing=False)(list(padded.train))).loss
        assert abs(llama(**ours).loss - unpacked) <= 1e-5
        assert abs(llama(**flat).loss - unpacked) > 1e-4
        assert abs(llama(**flat, use_cache=False).loss - unpacked) <= 1e-5
