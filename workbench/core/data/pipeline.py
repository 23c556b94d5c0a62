"""The preparation end to end: ``prepare`` (read, render, tokenize, mask, truncate, pack, count) for training and
``preview`` (the first examples rendered exactly as ``prepare`` renders them) for the window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from ..compat import dataset_fingerprint
from ..config import DataConfig
from ..errors import DataError
from ..events import Message, Sink, SinkLike, as_sink
from .cache import _PACKED, _TOKENIZED, _fingerprint
from .formats import _CHAT_FORMATS, _detect_file, _normalize
from .overlap import overlap_warnings
from .packing import _PACK_CHUNK, PADDING_FREE_MODEL_TYPES, _pack_rows, supports_padding_free
from .raw import _bad_rows, _first_bad_error, _problems, _source_field, load_raw
from .readers import _iter_records, _open_source, _require_train_files
from .rendering import _chat_template, _Encoder, _Rendered, _require_fast, _segments, _tokenize_rows
from .results import (
    _MAX_REPORTED_BAD_ROWS, _SKIP_HINT, BadRow, DataStats, PreparedData, PreviewExample, RawData, _RowProblem,
)
from .stats import _stats


def prepare(
    cfg: DataConfig,
    tokenizer: Any,
    *,
    seed: int = 42,
    sink: SinkLike = None,
    model_type: str | None = None,
    cache_dir: str | Path | None = None,
) -> PreparedData:
    """Load, render, tokenize, mask, truncate and (optionally) pack the data; compute statistics.

    ``tokenizer`` must be a fast (Rust-backed) tokenizer: the loss masks come from its character offsets.
    ``model_type`` (``model.config.model_type``) lets packing fall back to unpacked rows for architectures not
    in ``PADDING_FREE_MODEL_TYPES``; ``None`` packs whenever ``cfg.packing`` asks for it. ``seed`` drives the
    validation split. Warnings (validation rows shared with training, skipped rows, dropped examples, packing
    fallback) go to ``sink`` as ``Message`` events. Pass ``PreparedData.packed`` to ``make_collator``.
    """
    sink = as_sink(sink)
    _require_fast(tokenizer)
    template = _chat_template(cfg, tokenizer)
    raw = load_raw(cfg, seed=seed, cache_dir=cache_dir)
    for warning in overlap_warnings(cfg, raw):
        sink.emit(Message(warning, level="warning"))
    packed = cfg.packing and (model_type is None or supports_padding_free(model_type))
    if cfg.packing and not packed:
        sink.emit(Message(
            f"Packing is off: {model_type} models attend across packed example boundaries (packing works for "
            + ", ".join(sorted(PADDING_FREE_MODEL_TYPES)) + "). Training on padded batches instead.",
            level="warning",
        ))
    if tokenizer.eos_token_id is None and raw.format not in _CHAT_FORMATS:
        sink.emit(Message("The tokenizer has no EOS token, so examples end without one and the model will not "
                          "learn where to stop.", level="warning"))
    encoder = _Encoder.for_config(cfg, tokenizer, raw.format, template)
    train, stats, rejected = _prepare_split("train", raw.train, raw, encoder, cfg, packed, sink)
    validation = validation_stats = None
    if raw.validation is not None:
        validation, validation_stats, more_rejected = _prepare_split(
            "validation", raw.validation, raw, encoder, cfg, packed, sink)
        rejected += more_rejected
    skipped = raw.skipped + rejected  # rows bad when read, then rows the chat template rejected
    total = stats.skipped + (validation_stats.skipped if validation_stats else 0)
    if total:
        listed = "".join(f"\n  {row}" for row in skipped[:5])
        more = f"\n  ... and {total - 5} more" if total > 5 else ""
        sink.emit(Message(f"Skipped {total} bad row{'s' if total > 1 else ''}:{listed}{more}", level="warning"))
    return PreparedData(train, validation, stats, validation_stats, raw.format, packed,
                        skipped[:_MAX_REPORTED_BAD_ROWS])


def preview(cfg: DataConfig, tokenizer: Any, n: int = 5) -> list[PreviewExample]:
    """The first ``n`` usable training examples, rendered and tokenized exactly as ``prepare`` does, with the
    trained-on text marked. Reads only as many rows as needed; bad rows raise unless ``skip_bad_rows``."""
    _require_fast(tokenizer)
    template = _chat_template(cfg, tokenizer)
    examples: list[PreviewExample] = []
    for src in (_open_source(p, "train_files", cfg.text_split) for p in _require_train_files(cfg)):
        found = _detect_file(src, cfg)
        encoder = _Encoder.for_config(cfg, tokenizer, found.format, template)
        for record in _iter_records(src):
            try:
                if record.problem:
                    raise _RowProblem(record.field, record.problem)
                row = _normalize(record.data, found.format, found.mapping, found.tags)
                rendered = encoder.render(row)
            except _RowProblem as problem:
                if cfg.skip_bad_rows:
                    continue
                field_name = _source_field(problem.field or "", found.mapping) or None
                raise DataError(str(BadRow(str(src.path), record.row, src.unit, field_name, problem.reason)),
                                _SKIP_HINT) from None
            part = _preview_part(rendered, n - len(examples), cfg.max_length) if encoder.chunks else rendered
            pieces = encoder.encode_pieces([part])[0]
            if part is not rendered:
                pieces = pieces[:-1]  # ends where the prefix was cut, not where the file ends
            for k, encoded in enumerate(pieces):
                line = record.row + (rendered.text.count("\n", 0, int(encoded.offsets[0][0]))
                                     if k and len(encoded.offsets) else 0)
                examples.append(PreviewExample(
                    source=f"{src.path}: {src.unit} {line}" + (f" (chunk {k + 1})" if encoder.chunks else ""),
                    segments=_segments(rendered.text, encoded, tokenizer, chunk=encoder.chunks),
                    tokens=encoded.full_length,
                    trained_tokens=encoded.loss_tokens,
                    truncated=encoded.full_length > cfg.max_length,
                    token_pieces=_segments(rendered.text, encoded, tokenizer, chunk=encoder.chunks, per_token=True),
                ))
                if len(examples) == n:
                    return examples
    return examples


# Characters per token are far fewer than this in any text; a prefix this long holds the chunks a preview shows.
_CHARS_PER_TOKEN_BOUND = 16


def _preview_part(rendered: _Rendered, chunks: int, max_length: int) -> _Rendered:
    """The start of a plain text cut into chunks, long enough for the first ``chunks`` chunks (and one more, which
    the caller drops when the prefix cut it): a preview need not tokenize a whole book. Tokens far from the cut
    are the same as in the whole text's tokens, so the chunks shown are the chunks trained on."""
    length = (chunks + 1) * max_length * _CHARS_PER_TOKEN_BOUND
    if len(rendered.text) <= length:
        return rendered
    return _Rendered(rendered.text[:length], ((0, length),), add_eos=False)


def _prepare_split(
    name: str, rows: Dataset, raw: RawData, encoder: _Encoder, cfg: DataConfig, packed: bool, sink: Sink
) -> tuple[Dataset, DataStats, list[BadRow]]:
    tokenized = rows.map(
        _tokenize_rows, batched=True, fn_kwargs={"encoder": encoder}, remove_columns=rows.column_names,
        features=_TOKENIZED, new_fingerprint=_fingerprint("tokens", dataset_fingerprint(rows), encoder.cache_key),
        desc=f"Tokenizing {name} data",
    )
    columns = tokenized.select_columns(["length", "full_length", "loss_tokens"]).with_format("numpy")[:]
    bad = _problems(tokenized)
    bad_rows: list[BadRow] = []
    if bad.any():
        bad_rows = _bad_rows(tokenized, np.flatnonzero(bad), raw.files)
        if not cfg.skip_bad_rows:
            raise _first_bad_error(bad_rows, int(bad.sum()))
    without_loss = ~bad & (columns["loss_tokens"] == 0)
    keep = ~bad & ~without_loss
    if without_loss.any():
        sink.emit(Message(
            f"{int(without_loss.sum())} {name} examples were dropped: truncation to {cfg.max_length} tokens left "
            "nothing of them to train on. Raise data.max_length to keep them.", level="warning",
        ))
    if not keep.any():
        raise DataError(f"No {name} example is left to train on.",
                        "Every example was bad or lost all its trained tokens to truncation; check data.max_length.")
    result = tokenized if keep.all() else tokenized.select(np.flatnonzero(keep))
    result = result.remove_columns(["full_length", "loss_tokens", "_source", "_row", "_field", "_problem"])
    if packed:
        result = result.with_format("numpy").map(
            _pack_rows, batched=True, batch_size=_PACK_CHUNK, fn_kwargs={"capacity": cfg.max_length},
            remove_columns=result.column_names, features=_PACKED,
            new_fingerprint=_fingerprint("packed", dataset_fingerprint(result), cfg.max_length),
            desc=f"Packing {name} data",
        ).with_format(None)
    skipped = raw.skipped_count[name] + int(bad.sum())
    stats = _stats(columns, keep, len(result), skipped, int(without_loss.sum()), cfg.max_length)
    return result, stats, bad_rows
