"""Reading the data: ``detect`` looks at the first rows of every file; ``load_raw`` reads and checks every row into
cached datasets of canonical columns and holds out the validation rows.

Bad data
    Every problem raises ``DataError`` naming the file, the line (text files) or row (JSON arrays, Parquet,
    saved datasets), 1-based, and the field. With ``skip_bad_rows`` bad rows are left out instead, counted in
    the statistics, listed in ``PreparedData.skipped`` and reported to the event sink as a warning.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
from datasets import Dataset

from ..config import DataConfig
from ..errors import DataError
from .cache import _read_file
from .formats import _check_same_format, _detect_file
from .readers import _count_rows, _open_source, _require_train_files, open_data_files
from .rendering import _check_template_syntax
from .results import _MAX_REPORTED_BAD_ROWS, _SKIP_HINT, BadRow, DataInfo, FileSummary, RawData, SourceFile


def detect(cfg: DataConfig) -> DataInfo:
    """Open the files, detect the format and column mapping, count rows and return a few samples.

    Reads only the first rows of each file to detect its format (and streams files to count rows); no tokenizer
    is needed. Raises ``DataError`` for missing, empty or unreadable files, a bad row among the first rows
    (unless ``skip_bad_rows``), files of different formats, or columns that fit no format.
    """
    train, validation = open_data_files(cfg)
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
                            "rows for training.", _split_hint(cfg))
    else:
        validation_rows = 0
    return DataInfo(first.format, first.columns, first.mapping, train_summaries, validation_summaries, train_rows,
                    validation_rows, first.samples, first.mapping_file)


def load_raw(cfg: DataConfig, *, seed: int = 42, cache_dir: str | Path | None = None) -> RawData:
    """Read and check every row of the training and validation files into canonical columns.

    Each file becomes a cached ``datasets`` Arrow file (under ``cache_dir``, default: the ``datasets`` cache).
    Bad rows raise ``DataError`` (naming the first one and counting the rest) or, with ``skip_bad_rows``, are
    left out and listed. Without validation files, ``validation_split`` holds out a seeded random fraction.
    """
    train_sources = [_open_source(p, "train_files", cfg.text_split) for p in _require_train_files(cfg)]
    sources = train_sources + [_open_source(p, "validation_files", cfg.text_split) for p in cfg.validation_files]
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
                            "for training.", _split_hint(cfg))
        split = train.train_test_split(test_size=held_out, seed=seed)
        train, validation = split["train"], split["test"]
    return RawData(train, validation, fmt, files, skipped[:_MAX_REPORTED_BAD_ROWS], skipped_count)


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


def _split_hint(cfg: DataConfig) -> str:
    whole_files = cfg.text_split != "paragraphs" and all(Path(p).suffix.lower() == ".txt" for p in cfg.train_files)
    if whole_files:  # a plain-text file read whole is one row, however long it is
        return ("With data.text_split = 'chunks' or 'whole' each text file is one row: give a validation file in "
                "data.validation_files instead, or set data.validation_split = 0.")
    return "Lower data.validation_split or add rows."


def _validation_size(rows: int, fraction: float) -> int:
    return max(1, round(rows * fraction))


def _list_bad(bad: list[BadRow]) -> str:
    return "\n".join(str(b) for b in bad[:5])
