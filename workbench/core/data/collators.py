"""Batching prepared rows for the HF Trainer: padded batches, or packed rows whose positions restart per example."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from .packing import supports_padding_free


def make_collator(tokenizer: Any, packing: bool, model_type: str | None = None) -> "PaddedCollator | PackedCollator":
    """The collator for ``PreparedData`` rows: ``PackedCollator`` when the rows are packed, else
    ``PaddedCollator`` (dynamic padding to the longest row of the batch, as a plain padded script does).

    Raises ``ValueError`` for packed rows and a ``model_type`` that does not support them (``prepare`` with
    the same model type never packs for it).
    """
    pad = tokenizer.pad_token_id
    if pad is None:  # padding is never attended to nor trained on, so any id serves; EOS is the usual choice
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    if not packing:
        return PaddedCollator(pad)
    if model_type is not None and not supports_padding_free(model_type):
        raise ValueError(f"{model_type} models attend across packed example boundaries; prepare the data with "
                         f"prepare(..., model_type={model_type!r}) so it is not packed")
    return PackedCollator(pad)


class PaddedCollator:
    """Pads each batch on the right to its longest row: ``attention_mask`` 0 and labels -100 on padding.

    transformers' ``DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)`` builds the same ``input_ids``,
    ``labels`` and ``attention_mask`` for a tokenizer that has a pad token and pads on the right
    (tests/core/test_data_collators.py compares them on prepared rows), but it is not used because it also
    passes every other column of the rows (``length``) on to the model, pads on the left for a tokenizer set
    up for generation (``padding_side = "left"``, which shifts the positions of a model with absolute position
    embeddings, GPT-2 say, and so its loss), and refuses a tokenizer without a pad token.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, labels = _pad_right(features, self.pad_token_id)
        attention_mask = torch.zeros_like(input_ids)
        for i, f in enumerate(features):
            attention_mask[i, : len(f["input_ids"])] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def _pad_right(features: list[dict[str, Any]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` padded with ``pad_token_id`` and ``labels`` with -100, to the longest row of the batch."""

    def padded(column: str, value: int) -> torch.Tensor:
        rows = [torch.as_tensor(f[column], dtype=torch.long) for f in features]
        return pad_sequence(rows, batch_first=True, padding_value=value)

    return padded("input_ids", pad_token_id), padded("labels", -100)


class PackedCollator:
    """Batches packed rows without an attention mask, so the model derives per-example causal masks from
    ``position_ids`` (they restart at 0 for every example).

    Rows are right-padded to the longest row of the batch; padding gets its own restarting positions and label
    -100, and since it comes last no real token attends to it. ``use_cache=False`` is part of the batch because
    transformers only looks for packed sequences when there is no KV cache, and causal LMs create one whenever
    ``config.use_cache`` is true (the default), which would silently let examples attend to each other.

    Rows are not flattened into one: with sdpa and eager attention the mask is dense, so per row it costs
    O(row²) instead of O((batch·row)²). (FlashAttention kernels detect packing only in a batch of one row; this
    collator is verified for sdpa and eager attention, the ones the workbench uses.)

    transformers' ``DataCollatorWithFlattening`` is the padding-free collator for unpacked examples; it differs
    in all three respects (tests/core/test_data_collators.py shows each): it takes one example per feature, so a
    packed row's positions would run on across its examples; given the examples themselves it yields the same
    tokens, labels and positions but as one row of the whole batch; and it leaves the KV cache on, so the
    examples attend to each other unless the model's ``use_cache`` is off.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        input_ids, labels = _pad_right(features, self.pad_token_id)
        width = input_ids.shape[1]
        position_ids = torch.zeros_like(input_ids)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            position_ids[i, :n] = torch.as_tensor(f["position_ids"])
            position_ids[i, n:] = torch.arange(width - n)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "use_cache": False}
