"""Training data: reading files, detecting the format, rendering, loss masks, truncation, packing, statistics.

The training engine calls ``prepare`` and ``make_collator``; the window calls ``detect`` right after the user
picks files and ``preview`` to show what the model will be trained on.

Files
    ``.jsonl`` (one JSON object per line), ``.json`` (an array of objects, or JSON Lines), ``.csv`` (UTF-8 with
    a header row), ``.parquet``, ``.txt`` (plain text: one example per paragraph, paragraphs separated by a
    blank line, so multi-line documents stay whole) and folders written by ``datasets.save_to_disk`` (a
    ``Dataset``, or a ``DatasetDict`` with a ``train`` split or a single split). Several files are
    concatenated. Validation rows come from ``validation_files`` or, when there are none, from a seeded random
    ``validation_split`` fraction of the training rows.

Formats and columns (``DataConfig.format``; ``auto`` detects it from the column names)
    ``text``               ``text``: the whole text is trained on.
    ``prompt-completion``  ``prompt``, ``completion``: rendered as ``prompt + completion`` exactly as given
                           (put any separator, such as a space or newline, in your data).
    ``alpaca``             ``instruction``, ``input`` (optional), ``output``: rendered with the Stanford Alpaca
                           template (``ALPACA_PROMPT`` / ``ALPACA_PROMPT_NO_INPUT``) followed by the output.
    ``chat``               ``messages``: a list of ``{"role", "content"}`` with roles system / user / assistant.
    ``sharegpt``           ``conversations``: a list of ``{"from", "value"}``; human → user, gpt → assistant,
                           system → system. Both message styles are accepted in both formats.
    ``DataConfig.columns`` maps these role names to other column names, e.g. ``{prompt = "question",
    completion = "answer"}``; it also selects the format when ``format`` is ``auto``.

Rendering and loss masks
    Chat conversations are rendered with the tokenizer's chat template (``DataConfig.chat_template`` overrides
    it; a tokenizer without one gets ``FALLBACK_CHAT_TEMPLATE``, ChatML, whose turns end with ``<|im_end|>``).
    With ``train_on = "completion"`` (the default) the loss covers only the completion / the output / each
    assistant turn's content and the template's end-of-turn text after it; prompt, system and user tokens and
    the assistant header get the label -100. Assistant spans are found by rendering the conversation up to the
    generation prompt before each assistant turn and up to the end of that turn; tokens are then labelled from
    the tokenizer's character offsets (a token is trained when any of its characters is), so the mask is exact
    for any template and tokenizer. ``train_on = "all"`` trains on every token. EOS is appended to text,
    prompt-completion and Alpaca examples and trained, so the model learns to stop (chat templates end turns
    themselves). The first token of every example never has a target (nothing precedes it), so its label is
    -100 too. Examples longer than ``max_length`` are cut at the end (a cut example keeps no EOS); they are
    counted. An example whose trained tokens were all cut off is dropped, counted and reported.

Packing
    With ``packing = true`` examples are packed best-fit-decreasing into rows of at most ``max_length`` tokens.
    A packed row carries ``position_ids`` that restart at 0 for every example, and the first label of every
    example is -100, so no token is trained to predict across a boundary. ``PackedCollator`` passes no
    attention mask and no KV cache: for the architectures in ``PADDING_FREE_MODEL_TYPES`` transformers then
    builds a block-diagonal causal mask from the position ids, so examples never attend to each other and the
    loss equals the unpacked loss (tests/core/test_data.py checks every listed type with sdpa and eager
    attention). Other architectures (OPT, Falcon, Bloom, MPT...) ignore those boundaries; ``prepare`` then
    trains unpacked and says so.

Caching
    Every stage is a ``datasets`` cache file keyed on what it depends on (file size and modification time,
    format, column mapping, tokenizer, chat template, settings and this module's source), so a second
    ``prepare`` of the same data with the same tokenizer reads the cache instead of reading and tokenizing again.

Bad data
    Every problem raises ``DataError`` naming the file, the line (text files) or row (JSON arrays, Parquet,
    saved datasets), 1-based, and the field. With ``skip_bad_rows`` bad rows are left out instead, counted in
    the statistics, listed in ``PreparedData.skipped`` and reported to the event sink as a warning.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import jinja2
import numpy as np
import pyarrow.parquet as pq
import torch
from datasets import Dataset, Features, List, Value
from datasets.exceptions import DatasetGenerationError

from .config import DataConfig
from .errors import DataError
from .events import Message, as_sink

__all__ = [
    "ALPACA_PROMPT",
    "ALPACA_PROMPT_NO_INPUT",
    "FALLBACK_CHAT_TEMPLATE",
    "PADDING_FREE_MODEL_TYPES",
    "BadRow",
    "FileSummary",
    "SourceFile",
    "DataInfo",
    "RawData",
    "LengthHistogram",
    "DataStats",
    "PreparedData",
    "PreviewExample",
    "PaddedCollator",
    "PackedCollator",
    "detect",
    "load_raw",
    "prepare",
    "preview",
    "make_collator",
    "supports_padding_free",
]

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

# ChatML, as used by Qwen and SmolLM2: each turn is "<|im_start|>{role}\n{content}<|im_end|>\n".
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Model types whose attention honours example boundaries given only by restarting position_ids (the model
# passes position_ids to transformers' create_causal_mask, which then builds a per-example causal mask).
# Each one is verified on a tiny model by tests/core/test_data.py (packed loss == unpacked loss). Known not to
# work in transformers 5.23: opt (positions and mask come from the attention mask), falcon, bloom, mpt (alibi).
PADDING_FREE_MODEL_TYPES = frozenset({
    "cohere", "gemma", "gemma2", "gemma3_text", "gpt2", "gpt_bigcode", "gpt_neox", "granite", "llama", "mistral",
    "mixtral", "olmo2", "phi", "phi3", "qwen2", "qwen2_moe", "qwen3", "smollm3", "stablelm", "starcoder2",
})

# Role names per format; the first tuple is required, the second optional.
_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "text": (("text",), ()),
    "prompt-completion": (("prompt", "completion"), ()),
    "alpaca": (("instruction", "output"), ("input",)),
    "chat": (("messages",), ()),
    "sharegpt": (("conversations",), ()),
}
_CHAT_FORMATS = ("chat", "sharegpt")
_SPEAKERS = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}

_SUFFIX_KINDS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
_DETECT_ROWS = 20  # rows read to detect the format and show samples
_MAX_REPORTED_BAD_ROWS = 1000  # bad rows kept in detail; all of them are counted
_PACK_CHUNK = 10_000  # examples packed together; a larger chunk packs a little tighter and holds more in memory

_TEXT = Value("string")
_MESSAGES = List({"role": _TEXT, "content": _TEXT})
_CANONICAL: dict[str, dict[str, Any]] = {
    "text": {"text": _TEXT},
    "prompt-completion": {"prompt": _TEXT, "completion": _TEXT},
    "alpaca": {"instruction": _TEXT, "input": _TEXT, "output": _TEXT},
    "chat": {"messages": _MESSAGES},
    "sharegpt": {"messages": _MESSAGES},
}
# Where each raw row came from: index into RawData.files and the 1-based line/row number; and what is wrong
# with it ("" when nothing is).
_ORIGIN = {"_source": Value("int32"), "_row": Value("int64")}
_PROBLEM = {"_field": _TEXT, "_problem": _TEXT}
_IDS = List(Value("int32"))
_TOKENIZED = Features({
    "input_ids": _IDS, "labels": _IDS, "length": Value("int32"), "full_length": Value("int32"),
    "loss_tokens": Value("int32"), **_ORIGIN, **_PROBLEM,
})
_PACKED = Features({"input_ids": _IDS, "labels": _IDS, "position_ids": _IDS, "length": Value("int32")})
_BAD_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8


def _code_version() -> str:
    """Part of every cache key, so a change to this module never reuses data prepared by an older version."""
    try:
        return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    except OSError:  # a frozen (packaged) app has no source files; its code changes only with its version
        from workbench import __version__

        return __version__


_CODE_VERSION = _code_version()


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be used. ``unit`` is "line" for line-based files, "row" otherwise; ``row`` is 1-based."""

    file: str
    row: int
    unit: str
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.unit} {self.row}"
        return f"{where}: field '{self.field}': {self.reason}" if self.field else f"{where}: {self.reason}"


@dataclass(frozen=True)
class FileSummary:
    path: str
    kind: str  # jsonl, json, csv, parquet, text, saved
    rows: int


@dataclass(frozen=True)
class DataInfo:
    """What ``detect`` found. ``mapping`` is {role: column} as used for the first training file."""

    format: str
    columns: list[str]
    mapping: dict[str, str]
    train_files: list[FileSummary]
    validation_files: list[FileSummary]
    train_rows: int  # rows that will train (after a validation split, before rows are checked)
    validation_rows: int
    samples: list[dict[str, Any]]  # the first rows as read, for display


@dataclass(frozen=True)
class SourceFile:
    """One input file as read: ``unit`` is "line" or "row"; ``mapping`` is {role: column} for this file."""

    path: str
    kind: str
    unit: str
    mapping: dict[str, str]


@dataclass
class RawData:
    """Checked rows in canonical columns (text | prompt, completion | instruction, input, output | messages)
    plus their origin: ``_source`` (index into ``files``) and ``_row`` (1-based line or row number)."""

    train: Dataset
    validation: Dataset | None
    format: str
    files: list[SourceFile]
    skipped: list[BadRow]  # the first bad rows left out (all of them are counted in skipped_count)
    skipped_count: dict[str, int]  # per split: "train", "validation"


@dataclass(frozen=True)
class LengthHistogram:
    """Token lengths before truncation: ``counts[i]`` examples have a length in [edges[i], edges[i+1])
    (the last bin includes its right edge)."""

    edges: list[int]
    counts: list[int]


@dataclass(frozen=True)
class DataStats:
    examples: int  # examples that train (bad rows and examples with nothing to train on left out)
    rows: int  # rows the trainer sees: packed rows when packing, else the examples
    tokens: int  # tokens after truncation
    loss_tokens: int  # tokens whose label is not -100
    loss_share: float
    truncated: int  # examples longer than max_length
    truncated_share: float
    skipped: int  # bad rows left out (skip_bad_rows)
    without_loss: int  # examples dropped because truncation left none of their trained tokens
    max_length: int
    length_histogram: LengthHistogram


@dataclass
class PreparedData:
    """Tokenized data ready for the HF Trainer together with ``make_collator(tokenizer, packed, model_type)``.

    Columns: ``input_ids``, ``labels`` (-100 where there is no loss), ``length`` (tokens in the row) and, when
    ``packed``, ``position_ids`` restarting at 0 for every example in the row.
    """

    train: Dataset
    validation: Dataset | None
    stats: DataStats
    validation_stats: DataStats | None
    format: str
    packed: bool
    skipped: list[BadRow]


@dataclass(frozen=True)
class PreviewExample:
    """One rendered example: ``segments`` are (text, trained) pieces covering the text up to the truncation
    point; special tokens the tokenizer or the workbench adds (BOS, EOS) appear as their token text."""

    source: str  # "file: line N"
    segments: list[tuple[str, bool]]
    tokens: int  # before truncation
    trained_tokens: int  # after truncation
    truncated: bool


# --------------------------------------------------------------------------------------------- public API


def detect(cfg: DataConfig) -> DataInfo:
    """Open the files, detect the format and column mapping, count rows and return a few samples.

    Reads only the first rows of each file to detect its format (and streams files to count rows); no tokenizer
    is needed. Raises ``DataError`` for missing, empty or unreadable files, a bad row among the first rows
    (unless ``skip_bad_rows``), files of different formats, or columns that fit no format.
    """
    train = [_open_source(p, "train_files") for p in _require_train_files(cfg)]
    validation = [_open_source(p, "validation_files") for p in cfg.validation_files]
    if cfg.chat_template is not None:
        _check_template_syntax(cfg.chat_template)
    first = _detect_file(train[0], cfg, check_rows=True)
    for src in train[1:] + validation:
        _check_same_format(first.format, _detect_file(src, cfg, check_rows=True).format, src)
    train_summaries = [FileSummary(str(s.path), s.kind, _count_rows(s)) for s in train]
    validation_summaries = [FileSummary(str(s.path), s.kind, _count_rows(s)) for s in validation]
    train_rows = sum(s.rows for s in train_summaries)
    if validation:
        validation_rows = sum(s.rows for s in validation_summaries)
    elif cfg.validation_split > 0:
        validation_rows = _validation_size(train_rows, cfg.validation_split)
        train_rows -= validation_rows
        if train_rows <= 0:
            raise DataError(f"validation_split = {cfg.validation_split} leaves none of the {train_rows + validation_rows} "
                            "rows for training.", "Lower data.validation_split or add rows.")
    else:
        validation_rows = 0
    return DataInfo(first.format, first.columns, first.mapping, train_summaries, validation_summaries, train_rows,
                    validation_rows, first.samples)


def load_raw(cfg: DataConfig, *, seed: int = 42, cache_dir: str | Path | None = None) -> RawData:
    """Read and check every row of the training and validation files into canonical columns.

    Each file becomes a cached ``datasets`` Arrow file (under ``cache_dir``, default: the ``datasets`` cache).
    Bad rows raise ``DataError`` (naming the first one and counting the rest) or, with ``skip_bad_rows``, are
    left out and listed. Without validation files, ``validation_split`` holds out a seeded random fraction.
    """
    train_sources = [_open_source(p, "train_files") for p in _require_train_files(cfg)]
    sources = train_sources + [_open_source(p, "validation_files") for p in cfg.validation_files]
    detected = [_detect_file(src, cfg) for src in sources]
    fmt = detected[0].format
    files = [SourceFile(str(src.path), src.kind, src.unit, d.mapping) for src, d in zip(sources, detected)]
    skipped: list[BadRow] = []
    skipped_count = {"train": 0, "validation": 0}
    parts: dict[str, list[Dataset]] = {"train": [], "validation": []}
    for index, (src, found) in enumerate(zip(sources, detected)):
        _check_same_format(fmt, found.format, src)
        split = "train" if index < len(train_sources) else "validation"
        rows = _read_file(src, index, found, cache_dir)
        bad = _problems(rows)
        if bad.any():
            bad_rows = _bad_rows(rows, np.flatnonzero(bad), files)
            if not cfg.skip_bad_rows:
                raise _first_bad_error(bad_rows, int(bad.sum()))
            skipped += bad_rows
            skipped_count[split] += int(bad.sum())
            rows = rows.select(np.flatnonzero(~bad))
        parts[split].append(rows.remove_columns(["_field", "_problem"]))
    for split, rows in parts.items():
        if rows and sum(len(r) for r in rows) == 0:
            raise DataError(f"The {split} files have no usable rows: every row is bad.", _list_bad(skipped))
    train = _concatenate(parts["train"])
    validation = _concatenate(parts["validation"]) if parts["validation"] else None
    if validation is None and cfg.validation_split > 0:
        held_out = _validation_size(len(train), cfg.validation_split)
        if held_out >= len(train):
            raise DataError(f"validation_split = {cfg.validation_split} leaves none of the {len(train)} rows "
                            "for training.", "Lower data.validation_split or add rows.")
        split = train.train_test_split(test_size=held_out, seed=seed)
        train, validation = split["train"], split["test"]
    return RawData(train, validation, fmt, files, skipped[:_MAX_REPORTED_BAD_ROWS], skipped_count)


def prepare(
    cfg: DataConfig,
    tokenizer: Any,
    *,
    seed: int = 42,
    sink: Any = None,
    model_type: str | None = None,
    cache_dir: str | Path | None = None,
) -> PreparedData:
    """Load, render, tokenize, mask, truncate and (optionally) pack the data; compute statistics.

    ``tokenizer`` must be a fast (Rust-backed) tokenizer: the loss masks come from its character offsets.
    ``model_type`` (``model.config.model_type``) lets packing fall back to unpacked rows for architectures not
    in ``PADDING_FREE_MODEL_TYPES``; ``None`` packs whenever ``cfg.packing`` asks for it. ``seed`` drives the
    validation split. Warnings (skipped rows, dropped examples, packing fallback) go to ``sink`` as ``Message``
    events. Pass ``PreparedData.packed`` to ``make_collator``.
    """
    sink = as_sink(sink)
    _require_fast(tokenizer)
    template = _chat_template(cfg, tokenizer)
    raw = load_raw(cfg, seed=seed, cache_dir=cache_dir)
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
    encoder = _Encoder(tokenizer, raw.format, template, cfg.max_length, cfg.train_on)
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
    for src in (_open_source(p, "train_files") for p in _require_train_files(cfg)):
        found = _detect_file(src, cfg)
        encoder = _Encoder(tokenizer, found.format, template, cfg.max_length, cfg.train_on)
        for record in _iter_records(src):
            try:
                if record.problem:
                    raise _RowProblem(record.field, record.problem)
                row = _normalize(record.data, found.format, found.mapping)
                rendered = _render(row, found.format, tokenizer, template, cfg.train_on)
            except _RowProblem as problem:
                if cfg.skip_bad_rows:
                    continue
                field_name = _source_field(problem.field or "", found.mapping) or None
                raise DataError(str(BadRow(str(src.path), record.row, src.unit, field_name, problem.reason)),
                                _SKIP_HINT) from None
            encoded = encoder.encode([rendered])[0]
            examples.append(PreviewExample(
                source=f"{src.path}: {src.unit} {record.row}",
                segments=_segments(rendered.text, encoded, tokenizer),
                tokens=encoded.full_length,
                trained_tokens=encoded.loss_tokens,
                truncated=encoded.full_length > cfg.max_length,
            ))
            if len(examples) == n:
                return examples
    return examples


def supports_padding_free(model_type: str) -> bool:
    """Whether packed rows (restarting ``position_ids``, no attention mask) keep examples apart in this model."""
    return model_type in PADDING_FREE_MODEL_TYPES


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
    """Pads each batch on the right to its longest row: ``attention_mask`` 0 and labels -100 on padding."""

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
    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), width), -100, dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[i, :n] = torch.as_tensor(f["input_ids"])
        labels[i, :n] = torch.as_tensor(f["labels"])
    return input_ids, labels


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


# ------------------------------------------------------------------------------------------- file reading


_SKIP_HINT = "Fix the row, or set data.skip_bad_rows = true to leave bad rows out (they are counted and reported)."


@dataclass(frozen=True)
class _Source:
    path: Path
    kind: str
    unit: str  # "line" or "row"


@dataclass(frozen=True)
class _Record:
    row: int  # 1-based line (line-based files) or row number
    data: dict[str, Any] | None  # None when the row could not be read at all
    field: str | None = None
    problem: str | None = None


class _RowProblem(Exception):
    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


def _require_train_files(cfg: DataConfig) -> list[str]:
    if not cfg.train_files:
        raise DataError("No training files are set.", "Add one or more files to data.train_files.")
    return cfg.train_files


def _open_source(name: str, setting: str) -> _Source:
    path = Path(name).expanduser()
    if not path.exists():
        raise DataError(f"{path}: file not found.", f"Check the path in data.{setting}.")
    if path.is_dir():
        if not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
            raise DataError(f"{path}: this folder is not a dataset saved with datasets' save_to_disk.",
                            "Pick a data file, or a folder written by Dataset.save_to_disk.")
        return _Source(path, "saved", "row")
    kind = _SUFFIX_KINDS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'.",
                        "Use .jsonl, .json, .csv, .parquet, .txt, or a folder saved with datasets.")
    try:
        first = _first_byte(path)
        problem = None if kind == "parquet" else _not_utf8_text(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file: {exc.strerror}.",
                        f"Check the file's permissions, or the path in data.{setting}.") from None
    if first is None:
        raise DataError(f"{path}: the file is empty.", f"Put examples in it, or check the path in data.{setting}.")
    if problem:
        raise DataError(f"{path}: {problem}.", _ENCODING_HINT)
    if kind == "json":  # an array of objects, or JSON Lines under a .json name
        return _Source(path, "json", "row") if first == b"[" else _Source(path, "jsonl", "line")
    return _Source(path, kind, "row" if kind == "parquet" else "line")


_ENCODING_HINT = ("Data files must be UTF-8 text (JSONL, JSON, CSV, TXT) or Parquet: save it as UTF-8 "
                  "(in most editors: Save As → Encoding: UTF-8), or check the path.")
_UTF16_32_BOMS = {codecs.BOM_UTF32_LE: "UTF-32", codecs.BOM_UTF32_BE: "UTF-32", codecs.BOM_UTF16_LE: "UTF-16",
                  codecs.BOM_UTF16_BE: "UTF-16"}  # UTF-32 first: its little-endian BOM starts like UTF-16's


def _not_utf8_text(path: Path) -> str | None:
    """Why a file that should hold UTF-8 text plainly does not (a UTF-16/32 byte-order mark, NUL bytes), or None.
    Stray non-UTF-8 bytes in otherwise good text are reported later, with their line and field."""
    with open(path, "rb") as fh:
        head = fh.read(8192)
    for bom, name in _UTF16_32_BOMS.items():
        if head.startswith(bom):
            return f"the file is {name} text, not UTF-8"
    if b"\0" in head:
        return "the file holds NUL bytes: it is a binary file (or UTF-16/32 text), not UTF-8 text"
    return None


def _first_byte(path: Path) -> bytes | None:
    """The first byte that is not whitespace or a UTF-8 byte-order mark, or None for an empty file."""
    with open(path, "rb") as fh:
        start = fh.read(3)
        chunk = start[3:] if start == codecs.BOM_UTF8 else start
        while True:
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1]
            chunk = fh.read(1 << 16)
            if not chunk:
                return None


def _iter_records(src: _Source) -> Iterator[_Record]:
    return _READERS[src.kind](src.path)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines; bytes that are not UTF-8 become lone surrogates (found later by ``_bad_utf8``)."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            yield number, raw.decode("utf-8", "surrogateescape")


def _read_json_lines(path: Path) -> Iterator[_Record]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield _Record(number, None, None, f"not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        yield _object_record(number, obj)


def _read_json_array(path: Path) -> Iterator[_Record]:
    text = path.read_bytes().removeprefix(codecs.BOM_UTF8).decode("utf-8", "surrogateescape")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno}).",
                        "A .json file must hold one array of objects, or one object per line (JSON Lines).") from None
    del text
    for number, obj in enumerate(items, start=1):
        yield _object_record(number, obj)


def _object_record(number: int, obj: Any) -> _Record:
    if not isinstance(obj, dict):
        return _Record(number, None, None, f"expected a JSON object, found {_kind_of(obj)}")
    return _Record(number, obj)


def _read_csv(path: Path) -> Iterator[_Record]:
    # The csv module refuses values over 128 KiB by default; a whole document in one cell is ordinary data.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(line for _, line in _lines(path))
    try:
        header = next(reader, None)
        if header is None:
            return
        while True:
            first_line = reader.line_num + 1  # a quoted value may span lines: report where the record starts
            values = next(reader, None)
            if values is None:
                return
            if not values:  # a blank line
                continue
            if len(values) != len(header):
                yield _Record(first_line, None, None,
                              f"has {len(values)} values but the header has {len(header)} columns")
                continue
            yield _Record(first_line, dict(zip(header, values)))
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV: {exc}.",
                        "Check the quoting there: a value with commas, quotes or line breaks goes in double quotes, "
                        'with quotes inside it doubled ("").') from None


def _read_text(path: Path) -> Iterator[_Record]:
    paragraph: list[str] = []
    start = 0
    for number, line in _lines(path):
        line = line.rstrip("\r\n")
        if line.strip():
            if not paragraph:
                start = number
            paragraph.append(line)
        elif paragraph:
            yield _Record(start, {"text": "\n".join(paragraph)})
            paragraph = []
    if paragraph:
        yield _Record(start, {"text": "\n".join(paragraph)})


def _read_parquet(path: Path) -> Iterator[_Record]:
    number = 0
    for batch in _parquet_file(path).iter_batches(batch_size=1000):
        for row in batch.to_pylist():
            number += 1
            yield _Record(number, row)


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable Parquet file: {str(exc).strip().rstrip('.')}.",
                        "The file is damaged or not Parquet: write it again (e.g. DataFrame.to_parquet), "
                        "or use JSONL or CSV.") from None


def _read_saved(path: Path) -> Iterator[_Record]:
    number = 0
    for batch in _load_saved(path).with_format("arrow").iter(batch_size=1000):
        for row in batch.to_pylist():
            number += 1
            yield _Record(number, row)


def _load_saved(path: Path) -> Dataset:
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot load the saved dataset: {str(exc).strip().rstrip('.')}.",
                        "Save it again with Dataset.save_to_disk, or give the data files themselves.") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded:
            return loaded["train"]
        if len(loaded) == 1:
            return next(iter(loaded.values()))
        raise DataError(f"{path}: the saved dataset has the splits {', '.join(loaded)} and none is called 'train'.",
                        "Save the training split on its own, or name it 'train'.")
    return loaded


_READERS = {"jsonl": _read_json_lines, "json": _read_json_array, "csv": _read_csv, "text": _read_text,
            "parquet": _read_parquet, "saved": _read_saved}


def _count_rows(src: _Source) -> int:
    if src.kind == "parquet":
        return _parquet_file(src.path).metadata.num_rows
    if src.kind == "saved":
        return len(_load_saved(src.path))
    if src.kind == "jsonl":  # counting lines is much cheaper than parsing them
        with open(src.path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    return sum(1 for _ in _iter_records(src))


# -------------------------------------------------------------------------- format detection, row checks


_FORMAT_HINT = (
    "Set data.format (text, prompt-completion, alpaca, chat, sharegpt) and map your columns with data.columns, "
    'e.g. columns = {prompt = "question", completion = "answer"}.'
)


@dataclass(frozen=True)
class _Detected:
    format: str
    mapping: dict[str, str]
    columns: list[str]
    samples: list[dict[str, Any]]


def _detect_file(src: _Source, cfg: DataConfig, *, check_rows: bool = False) -> _Detected:
    """Format and column mapping from the first rows. ``check_rows``: also check those rows as training will
    (``detect`` does, so a bad row among the first ones is reported before a run starts; ``load_raw`` checks
    every row itself, and counts them)."""
    records: list[_Record] = []
    columns: dict[str, None] = {}  # insertion-ordered set
    seen_any = False
    for record in _iter_records(src):
        seen_any = True
        if record.problem:
            if cfg.skip_bad_rows:
                continue
            raise DataError(str(BadRow(str(src.path), record.row, src.unit, record.field, record.problem)), _SKIP_HINT)
        records.append(record)
        columns.update(dict.fromkeys(record.data))
        if len(records) == _DETECT_ROWS:
            break
    if not records:
        raise DataError(f"{src.path}: the file has no rows." if not seen_any else f"{src.path}: no row can be read.",
                        "Add examples to it (a CSV file needs rows below its header line)." if not seen_any else _SKIP_HINT)
    fmt, mapping = _resolve_format(src, list(columns), cfg)
    # The rows read are checked as training will check them, so a bad row among the first ones is reported now
    # (before a run starts) rather than after the model has loaded.
    for record in records if check_rows else ():
        try:
            _normalize(record.data, fmt, mapping)
        except _RowProblem as problem:
            if not cfg.skip_bad_rows:
                raise DataError(str(BadRow(str(src.path), record.row, src.unit, problem.field, problem.reason)),
                                _SKIP_HINT) from None
    return _Detected(fmt, mapping, list(columns), [r.data for r in records[:5]])


def _resolve_format(src: _Source, columns: list[str], cfg: DataConfig) -> tuple[str, dict[str, str]]:
    known = [role for required, optional in _ROLES.values() for role in required + optional]
    unknown = [role for role in cfg.columns if role not in known]
    if unknown:
        raise DataError(f"data.columns: unknown role {unknown[0]!r}.", f"The roles are: {', '.join(known)}.")
    if src.kind == "text":
        if cfg.format not in ("auto", "text"):
            raise DataError(f"{src.path}: a .txt file holds plain text, not {cfg.format} rows.",
                            "Use data.format = 'text' (or 'auto'), or give JSONL, JSON, CSV or Parquet files.")
        return "text", {"text": "text"}
    fmt = cfg.format if cfg.format != "auto" else _guess_format(columns, cfg.columns)
    if fmt is None:
        raise DataError(f"{src.path}: cannot tell the data format from the columns: {', '.join(columns)}.",
                        _FORMAT_HINT)
    required, optional = _ROLES[fmt]
    foreign = [role for role in cfg.columns if role not in required + optional]
    if foreign:
        raise DataError(f"data.columns: the role {foreign[0]!r} does not belong to the {fmt} format.",
                        f"The {fmt} roles are: {', '.join(required + optional)}.")
    mapping = {role: cfg.columns.get(role, role) for role in required + optional}
    if src.kind in ("csv", "parquet", "saved"):  # every row has the same columns: a missing one is the file's fault
        missing = [mapping[role] for role in required if mapping[role] not in columns]
        if missing:
            where = f"{src.path}: line 1: the header" if src.kind == "csv" else f"{src.path}: the data"
            raise DataError(f"{where} has no column {missing[0]!r} (columns: {', '.join(columns)}).", _FORMAT_HINT)
    return fmt, mapping


def _guess_format(columns: list[str], roles: dict[str, str]) -> str | None:
    if roles:
        formats = [fmt for fmt, (required, optional) in _ROLES.items() if set(roles) & set(required + optional)]
        if len(formats) > 1:
            raise DataError(f"data.columns mixes roles of the {' and '.join(formats)} formats.", _FORMAT_HINT)
        return formats[0]
    present = set(columns)
    for fmt, needed in (("chat", {"messages"}), ("sharegpt", {"conversations"}), ("alpaca", {"instruction", "output"}),
                        ("prompt-completion", {"prompt", "completion"}), ("text", {"text"})):
        if needed <= present:
            return fmt
    return None


def _check_same_format(first: str, fmt: str, src: _Source) -> None:
    if _CANONICAL[fmt] != _CANONICAL[first]:
        raise DataError(f"{src.path} holds {fmt} rows but the first training file holds {first} rows.",
                        "Use files of one format, or convert them.")


def _normalize(data: dict[str, Any], fmt: str, mapping: dict[str, str]) -> dict[str, Any]:
    """The row in canonical columns; raises ``_RowProblem`` naming the row's own column."""
    for column in mapping.values():
        bad = _bad_utf8(data.get(column))
        if bad is not None:
            path, byte = bad
            raise _RowProblem(column + path, f"is not valid UTF-8 (byte 0x{byte:02X}); save the file as UTF-8")
    if fmt == "text":
        return {"text": _text(data, mapping["text"])}
    if fmt == "prompt-completion":
        return {"prompt": _text(data, mapping["prompt"], allow_empty=True),
                "completion": _text(data, mapping["completion"])}
    if fmt == "alpaca":
        return {"instruction": _text(data, mapping["instruction"]),
                "input": _text(data, mapping["input"], allow_empty=True, optional=True),
                "output": _text(data, mapping["output"])}
    return {"messages": _messages(data, mapping["messages" if fmt == "chat" else "conversations"])}


def _text(data: dict[str, Any], column: str, *, allow_empty: bool = False, optional: bool = False) -> str:
    value = data.get(column)
    if value is None:
        if optional:
            return ""
        raise _RowProblem(column, "is missing" if column not in data else "is null")
    if not isinstance(value, str):
        raise _RowProblem(column, f"expected text, found {_kind_of(value)}")
    if not allow_empty and not value.strip():
        raise _RowProblem(column, "is empty")
    return value


def _messages(data: dict[str, Any], column: str) -> list[dict[str, str]]:
    turns = data.get(column)
    if turns is None:
        raise _RowProblem(column, "is missing" if column not in data else "is null")
    if not isinstance(turns, list):
        raise _RowProblem(column, f"expected a list of messages, found {_kind_of(turns)}")
    messages = []
    for i, turn in enumerate(turns):
        where = f"{column}[{i}]"
        if not isinstance(turn, dict):
            raise _RowProblem(where, f"expected an object with role and content, found {_kind_of(turn)}")
        role_key = "from" if turn.get("role") is None and "from" in turn else "role"  # chat or ShareGPT style
        content_key = "value" if turn.get("content") is None and "value" in turn else "content"
        speaker = turn.get(role_key)
        if not isinstance(speaker, str) or speaker.lower() not in _SPEAKERS:
            raise _RowProblem(f"{where}.{role_key}", f"unknown role {speaker!r}; expected system, user or assistant "
                                                     "(ShareGPT: system, human or gpt)")
        content = turn.get(content_key)
        if not isinstance(content, str):
            found = "is missing" if content is None else f"expected text, found {_kind_of(content)}"
            raise _RowProblem(f"{where}.{content_key}", found)
        role = _SPEAKERS[speaker.lower()]
        if role == "assistant" and not content.strip():
            raise _RowProblem(f"{where}.{content_key}", "the assistant message is empty")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise _RowProblem(column, "has no assistant message, so there is nothing to train on")
    return messages


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    return "null" if value is None else type(value).__name__


def _bad_utf8(value: Any) -> tuple[str, int] | None:
    """(path inside the value, first bad byte) when some text in ``value`` was not UTF-8 in the file."""
    if isinstance(value, str):
        match = _BAD_BYTE.search(value)
        return ("", ord(match.group()) - 0xDC00) if match else None
    if isinstance(value, list):
        items = [(f"[{i}]", item) for i, item in enumerate(value)]
    elif isinstance(value, dict):
        items = [(f".{key}", item) for key, item in value.items()]
    else:
        return None
    for label, item in items:
        bad = _bad_utf8(item)
        if bad is not None:
            return label + bad[0], bad[1]
    return None


# ---------------------------------------------------------------------------------- raw datasets (cached)


def _read_file(src: _Source, index: int, detected: _Detected, cache_dir: str | Path | None) -> Dataset:
    """All rows of one file as a cached Arrow dataset: canonical columns, origin, and what is wrong (if anything)."""
    features = Features({**_CANONICAL[detected.format], **_ORIGIN, **_PROBLEM})
    fingerprint = _fingerprint("rows", str(src.path.resolve()), _identity(src.path), src.kind, detected.format,
                               detected.mapping, index)
    try:
        return Dataset.from_generator(
            _generate_rows, features=features, cache_dir=str(cache_dir) if cache_dir else None,
            fingerprint=fingerprint,
            gen_kwargs={"path": str(src.path), "kind": src.kind, "fmt": detected.format,
                        "mapping": detected.mapping, "source": index},
        )
    except DatasetGenerationError as exc:  # datasets wraps what the generator raises
        if isinstance(exc.__cause__, DataError):
            raise exc.__cause__ from None
        raise


def _generate_rows(path: str, kind: str, fmt: str, mapping: dict[str, str], source: int) -> Iterator[dict[str, Any]]:
    blank = {name: [] if name == "messages" else "" for name in _CANONICAL[fmt]}
    for record in _READERS[kind](Path(path)):
        row = {"_source": source, "_row": record.row, "_field": "", "_problem": ""}
        try:
            if record.problem:
                raise _RowProblem(record.field, record.problem)
            row.update(_normalize(record.data, fmt, mapping))
        except _RowProblem as problem:
            row.update(blank, _field=problem.field or "", _problem=problem.reason)
        yield row


def _identity(path: Path) -> list[Any]:
    """Size and modification time of the file, or of every file in the folder: a change invalidates the cache."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(p.relative_to(path)) if p != path else "", p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _fingerprint(*parts: Any) -> str:
    text = json.dumps([_CODE_VERSION, *parts], default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _dataset_fingerprint(ds: Dataset) -> str:
    # datasets keeps a deterministic fingerprint per dataset version but exposes it only as this attribute.
    return ds._fingerprint


def _problems(ds: Dataset) -> np.ndarray:
    return ds.select_columns(["_problem"]).with_format("numpy")[:]["_problem"] != ""


def _bad_rows(ds: Dataset, indices: np.ndarray, files: list[SourceFile]) -> list[BadRow]:
    rows = ds.select(indices[:_MAX_REPORTED_BAD_ROWS]).select_columns(["_source", "_row", "_field", "_problem"])
    bad = []
    for row in rows:
        src = files[row["_source"]]
        field_name = _source_field(row["_field"], src.mapping) or None
        bad.append(BadRow(src.path, row["_row"], src.unit, field_name, row["_problem"]))
    return bad


def _source_field(field_name: str, mapping: dict[str, str]) -> str:
    """Rendering reports chat problems on the canonical ``messages`` column; name the file's column instead.
    (Fields found while reading already are the file's columns; for them this changes nothing.)"""
    column = mapping.get("messages") or mapping.get("conversations")
    if column is not None and (field_name == "messages" or field_name.startswith(("messages[", "messages."))):
        return column + field_name[len("messages"):]
    return field_name


def _first_bad_error(bad: list[BadRow], count: int) -> DataError:
    more = f" (and {count - 1} more bad row{'s' if count > 2 else ''})" if count > 1 else ""
    return DataError(f"{bad[0]}{more}", _SKIP_HINT)


def _concatenate(parts: list[Dataset]) -> Dataset:
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _validation_size(rows: int, fraction: float) -> int:
    return max(1, round(rows * fraction))


def _list_bad(bad: list[BadRow]) -> str:
    return "\n".join(str(b) for b in bad[:5])


# ------------------------------------------------------------------------------------ rendering, labels


@dataclass(frozen=True)
class _Rendered:
    text: str
    spans: tuple[tuple[int, int], ...]  # character ranges trained on with train_on = "completion"
    add_eos: bool  # append EOS (trained): the example ends with a completion the model must learn to stop after


@dataclass(frozen=True)
class _Encoded:
    ids: np.ndarray  # int32
    labels: np.ndarray  # int32, -100 where there is no loss
    offsets: np.ndarray  # (tokens, 2): character range of each token in the rendered text; empty if it has none
    full_length: int  # before truncation
    loss_tokens: int


def _render(row: dict[str, Any], fmt: str, tokenizer: Any, template: str | None, train_on: str) -> _Rendered:
    if fmt == "text":
        return _Rendered(row["text"], ((0, len(row["text"])),), add_eos=True)
    if fmt == "prompt-completion":
        prompt = row["prompt"]
        completion = row["completion"]
    elif fmt == "alpaca":
        template_text = ALPACA_PROMPT if row["input"].strip() else ALPACA_PROMPT_NO_INPUT
        prompt = template_text.format(instruction=row["instruction"], input=row["input"])
        completion = row["output"]
    else:
        return _render_chat(row["messages"], tokenizer, template, find_spans=train_on == "completion")
    return _Rendered(prompt + completion, ((len(prompt), len(prompt) + len(completion)),), add_eos=True)


def _render_chat(messages: list[dict[str, str]], tokenizer: Any, template: str | None, find_spans: bool) -> _Rendered:
    """Render with the chat template; each assistant span runs from the end of the generation prompt that
    precedes the turn to the end of the rendering that includes the turn (content plus end-of-turn text)."""

    def render(turns: list[dict[str, str]], generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt,
                                             chat_template=template)

    try:
        text = render(messages)
        spans = []
        for i, message in enumerate(messages if find_spans else ()):
            if message["role"] != "assistant":
                continue
            if i == 0:
                raise _RowProblem("messages[0]", "the conversation starts with an assistant message; "
                                                 "a user (or system) message must come first")
            before = render(messages[:i], generation_prompt=True)
            through = render(messages[: i + 1])
            if not (through.startswith(before) and text.startswith(through)):
                raise _RowProblem("messages", "the chat template renders earlier turns differently once later "
                                              "turns are added, so the assistant turns cannot be located; "
                                              "use train_on = 'all' or set data.chat_template")
            spans.append((len(before), len(through)))
    except (jinja2.TemplateError, ValueError, TypeError) as exc:  # the template rejected this conversation
        raise _RowProblem("messages", f"the chat template cannot render it: {exc}") from None
    return _Rendered(text, tuple(spans), add_eos=False)


def _trained_tokens(offsets: np.ndarray, spans: tuple[tuple[int, int], ...]) -> np.ndarray:
    """A token is trained when any of its characters lies in a span. A token without characters counts with
    the character before it: tokenizers that trim offsets give whitespace tokens an empty range at their end,
    and a BOS at 0 then has no character and stays untrained."""
    trained = np.zeros(len(offsets), dtype=bool)
    if not spans:
        return trained
    span_starts, span_ends = np.asarray(spans).T
    ends = offsets[:, 1]
    starts = np.minimum(offsets[:, 0], ends - 1)
    first = np.searchsorted(span_ends, starts, side="right")  # the first span ending after the token starts
    inside = first < len(spans)
    trained[inside] = span_starts[first[inside]] < ends[inside]
    return trained


class _Encoder:
    """Tokenizes rendered examples into ids, labels and lengths, for ``prepare`` (in batches) and ``preview``."""

    def __init__(self, tokenizer: Any, fmt: str, template: str | None, max_length: int, train_on: str):
        self.tokenizer = tokenizer
        self.format = fmt
        self.template = template
        self.max_length = max_length
        self.train_on = train_on
        # Chat templates write their own BOS; other formats get the tokenizer's usual special tokens.
        self.add_special_tokens = fmt not in _CHAT_FORMATS
        # What the tokenized output depends on, besides the rows and this module's code.
        self.cache_key = _fingerprint(
            type(tokenizer).__name__, tokenizer.backend_tokenizer.to_str(), tokenizer.special_tokens_map,
            getattr(tokenizer, "add_bos_token", None), getattr(tokenizer, "add_eos_token", None),
            template if template is not None else tokenizer.chat_template, fmt, max_length, train_on,
        )

    def encode(self, rendered: list[_Rendered]) -> list[_Encoded]:
        batch = self.tokenizer([r.text for r in rendered], add_special_tokens=self.add_special_tokens,
                               return_offsets_mapping=True, return_attention_mask=False, verbose=False)
        return [self._label(r, ids, offsets)
                for r, ids, offsets in zip(rendered, batch["input_ids"], batch["offset_mapping"])]

    def _label(self, rendered: _Rendered, ids: list[int], offsets: list[tuple[int, int]]) -> _Encoded:
        ids = np.asarray(ids, dtype=np.int32)
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        trained = np.ones(len(ids), bool) if self.train_on == "all" else _trained_tokens(offsets, rendered.spans)
        eos = self.tokenizer.eos_token_id
        if rendered.add_eos and eos is not None:
            if not len(ids) or ids[-1] != eos:  # some tokenizers already end every text with EOS
                end = len(rendered.text)
                ids = np.append(ids, np.int32(eos))
                offsets = np.vstack([offsets, [end, end]])
                trained = np.append(trained, True)
            trained[-1] = True
        full_length = len(ids)
        ids, offsets, trained = ids[: self.max_length], offsets[: self.max_length], trained[: self.max_length]
        labels = np.where(trained, ids, np.int32(-100))
        labels[:1] = -100  # nothing precedes the first token, so it is never a target
        return _Encoded(ids, labels, offsets, full_length, int(np.count_nonzero(labels != -100)))


def _tokenize_rows(batch: dict[str, list], encoder: _Encoder) -> dict[str, list]:
    """``Dataset.map`` function: canonical rows → tokens; rows the template rejects get ``_problem`` set."""
    count = len(batch["_row"])
    problems = [("", "")] * count
    rendered, positions = [], []
    for i in range(count):
        row = {name: batch[name][i] for name in _CANONICAL[encoder.format]}
        try:
            rendered.append(_render(row, encoder.format, encoder.tokenizer, encoder.template, encoder.train_on))
            positions.append(i)
        except _RowProblem as problem:
            problems[i] = (problem.field or "", problem.reason)
    encoded = dict(zip(positions, encoder.encode(rendered))) if rendered else {}
    out: dict[str, list] = {name: [] for name in _TOKENIZED}
    nothing = np.zeros(0, dtype=np.int32)
    for i in range(count):
        e = encoded.get(i)
        out["input_ids"].append(e.ids if e else nothing)
        out["labels"].append(e.labels if e else nothing)
        out["length"].append(len(e.ids) if e else 0)
        out["full_length"].append(e.full_length if e else 0)
        out["loss_tokens"].append(e.loss_tokens if e else 0)
        out["_field"].append(problems[i][0])
        out["_problem"].append(problems[i][1])
    out["_source"] = batch["_source"]
    out["_row"] = batch["_row"]
    return out


def _segments(text: str, encoded: _Encoded, tokenizer: Any) -> list[tuple[str, bool]]:
    """(text, trained) pieces in token order, merged where the flag does not change. Each token shows the text
    from the end of the previous one to its own end, so whitespace that a tokenizer leaves out of its offsets
    is shown too."""
    added = set(tokenizer.added_tokens_decoder)  # BOS, EOS and other tokens that are not spelled out in text
    segments: list[tuple[str, bool]] = []
    cursor = 0

    def extend_last(extra: str) -> None:  # text no token's offsets cover belongs with the token before it
        if extra and segments:
            segments[-1] = (segments[-1][0] + extra, segments[-1][1])

    for token, (start, end), label in zip(encoded.ids.tolist(), encoded.offsets.tolist(), encoded.labels.tolist()):
        if end > cursor:
            piece = text[cursor:end]
            cursor = end
        elif start == end and token in added:  # BOS/EOS added by the tokenizer or by us: show the token
            extend_last(text[cursor:start])
            cursor = max(cursor, start)
            piece = tokenizer.convert_ids_to_tokens(token)
        else:  # several byte-level tokens share one character, which is already shown
            continue
        trained = label != -100
        if segments and segments[-1][1] == trained:
            segments[-1] = (segments[-1][0] + piece, trained)
        else:
            segments.append((piece, trained))
    if len(encoded.ids) == encoded.full_length:  # not truncated: the whole text is shown
        extend_last(text[cursor:])
    return segments


# -------------------------------------------------------------------------------------- splits, packing


def _prepare_split(
    name: str, rows: Dataset, raw: RawData, encoder: _Encoder, cfg: DataConfig, packed: bool, sink: Any
) -> tuple[Dataset, DataStats, list[BadRow]]:
    tokenized = rows.map(
        _tokenize_rows, batched=True, fn_kwargs={"encoder": encoder}, remove_columns=rows.column_names,
        features=_TOKENIZED, new_fingerprint=_fingerprint("tokens", _dataset_fingerprint(rows), encoder.cache_key),
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
            new_fingerprint=_fingerprint("packed", _dataset_fingerprint(result), cfg.max_length),
            desc=f"Packing {name} data",
        ).with_format(None)
    skipped = raw.skipped_count[name] + int(bad.sum())
    stats = _stats(columns, keep, len(result), skipped, int(without_loss.sum()), cfg.max_length)
    return result, stats, bad_rows


def _pack_rows(batch: dict[str, list], capacity: int) -> dict[str, list]:
    """``Dataset.map`` function (numpy format): pack a chunk of examples into rows of at most ``capacity`` tokens."""
    lengths = [int(n) for n in batch["length"]]
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
    for members in _best_fit_decreasing(lengths, capacity):
        out["input_ids"].append(np.concatenate([batch["input_ids"][i] for i in members]))
        # Each example's first label is already -100, so no token learns to predict across a boundary.
        out["labels"].append(np.concatenate([batch["labels"][i] for i in members]))
        out["position_ids"].append(np.concatenate([np.arange(lengths[i], dtype=np.int32) for i in members]))
        out["length"].append(sum(lengths[i] for i in members))
    return out


def _best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of example indices: longest examples first, each into the fullest row it still fits in.
    Rows end up nearly full, which matters because a batch is padded to its longest row."""
    rows: list[list[int]] = []
    by_space: dict[int, list[int]] = {}  # free space → rows with exactly that much room
    spaces = _FreeSpaces(capacity)
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):  # stable: ties keep the data order
        need = lengths[i]
        space = spaces.smallest_at_least(need)
        if space is None:
            row = len(rows)
            rows.append([i])
            free = capacity - need
        else:
            row = by_space[space].pop()
            if not by_space[space]:
                del by_space[space]
                spaces.set(space, False)
            rows[row].append(i)
            free = space - need
        if free > 0:
            by_space.setdefault(free, []).append(row)
            spaces.set(free, True)
    return rows


class _FreeSpaces:
    """The set of free-space amounts (1..capacity) some row has, answering "smallest amount ≥ n" in
    O(log capacity): a max segment tree whose leaf s holds s while present, else 0."""

    def __init__(self, capacity: int):
        self.leaves = 1 << capacity.bit_length()  # > capacity
        self.tree = [0] * (2 * self.leaves)

    def set(self, space: int, present: bool) -> None:
        node = self.leaves + space
        self.tree[node] = space if present else 0
        node //= 2
        while node:
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])
            node //= 2

    def smallest_at_least(self, n: int) -> int | None:
        if self.tree[1] < n:
            return None
        node = 1
        while node < self.leaves:  # the leftmost leaf holding ≥ n holds the smallest such amount
            node = 2 * node if self.tree[2 * node] >= n else 2 * node + 1
        return self.tree[node]


def _stats(columns: dict[str, np.ndarray], keep: np.ndarray, rows: int, skipped: int, without_loss: int,
           max_length: int) -> DataStats:
    full = columns["full_length"][keep]
    tokens = int(columns["length"][keep].sum())
    loss_tokens = int(columns["loss_tokens"][keep].sum())
    truncated = int((full > max_length).sum())
    width = max(1, -(-int(full.max()) // 20))  # at most 20 bins of equal, whole-token width
    edges = np.arange(0, int(full.max()) + width, width)
    counts, _ = np.histogram(full, bins=edges)
    return DataStats(
        examples=len(full), rows=rows, tokens=tokens, loss_tokens=loss_tokens, loss_share=loss_tokens / tokens,
        truncated=truncated, truncated_share=truncated / len(full), skipped=skipped, without_loss=without_loss,
        max_length=max_length, length_histogram=LengthHistogram(edges.tolist(), counts.tolist()),
    )


def _require_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"The tokenizer ({type(tokenizer).__name__}) reports no character offsets, which the loss "
                        "masks need.", "Use the model's fast tokenizer (tokenizer.json); most models ship one.")


def _chat_template(cfg: DataConfig, tokenizer: Any) -> str | None:
    """The template to pass to apply_chat_template: the configured one, None for the tokenizer's own, or
    the ChatML fallback for a tokenizer without one."""
    if cfg.chat_template is None:
        return None if tokenizer.chat_template else FALLBACK_CHAT_TEMPLATE
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    try:
        tokenizer.apply_chat_template(probe, tokenize=False, chat_template=cfg.chat_template)
    except jinja2.TemplateSyntaxError as exc:
        raise _template_syntax_error(exc) from None
    except (jinja2.TemplateError, ValueError, TypeError):
        pass  # it parses; a template that rejects particular conversations is reported per row
    return cfg.chat_template


def _template_syntax_error(exc: jinja2.TemplateSyntaxError) -> DataError:
    """One message for a configured template that does not parse, whether ``detect`` (no tokenizer) or the
    preparation (with one) finds it."""
    return DataError(f"data.chat_template: not a valid Jinja template: {exc.message} (line {exc.lineno}).",
                     "Fix the template's syntax, or remove data.chat_template to use the tokenizer's own template.")


def _check_template_syntax(template: str) -> None:
    """Parse a configured chat template as transformers will (no tokenizer needed), so ``detect`` reports a
    syntax error before a run starts."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # a private helper; without it the template is checked when the data is prepared
        return
    try:
        _compile_jinja_template(template)
    except jinja2.TemplateSyntaxError as exc:
        raise _template_syntax_error(exc) from None
    except Exception:  # anything else is left to apply_chat_template, which reports it per row
        pass
