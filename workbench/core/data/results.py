"""What the data functions return: detection results, checked rows, prepared data, statistics, previews, and the
record of a bad row. Plain dataclasses; the ``datasets`` types appear in annotations only, so the window can use
these without importing ``datasets``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

_MAX_REPORTED_BAD_ROWS = 1000  # bad rows kept in detail; all of them are counted
_SKIP_HINT = "Fix the row, or set data.skip_bad_rows = true to leave bad rows out (they are counted and reported)."


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
    mapping_file: str | None = None  # a LLaMA-Factory dataset_info.json the format and columns came from


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
    # The same text cut where tokens begin: one (text, trained) piece per token that shows text of its own.
    token_pieces: list[tuple[str, bool]] = field(default_factory=list)


class _RowProblem(Exception):
    """What is wrong with one row: raised while checking or rendering it, turned into a ``BadRow`` (or a
    ``DataError``) by the caller, which knows the file and the row."""

    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason
