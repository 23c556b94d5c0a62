"""Reading data files: which files are data, opening them, checking their encoding, and one reader per file kind
that yields numbered records (the row number a bad row is reported by). Nothing here imports ``datasets`` or
``pyarrow`` until a Parquet file or a saved dataset is read, so the window can use the file facts at start-up.

Files
    ``.jsonl`` (one JSON object per line), ``.json`` (an array of objects, or JSON Lines), ``.csv`` (UTF-8 with
    a header row), ``.parquet``, ``.txt`` (plain text; ``DataConfig.text_split``: one example per paragraph,
    paragraphs separated by a blank line, so multi-line documents stay whole; or the whole file, as one example
    or cut into ``max_length``-token chunks by the rendering stage) and folders written by ``datasets.save_to_disk`` (a
    ``Dataset``, or a ``DatasetDict`` with a ``train`` split or a single split). Several files are
    concatenated. Validation rows come from ``validation_files`` or, when there are none, from a seeded random
    ``validation_split`` fraction of the training rows.
"""

from __future__ import annotations

import codecs
import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DataConfig
from ..errors import DataError
from ..paths import require_regular_file

if TYPE_CHECKING:
    import pyarrow.parquet as pq
    from datasets import Dataset

# File suffix → kind of file. The one list of data files: the window's file dialog and drop filter use it too.
SUFFIX_KINDS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
DATA_SUFFIXES = tuple(SUFFIX_KINDS)


@dataclass(frozen=True)
class _Source:
    path: Path
    kind: str
    unit: str  # "line" or "row"
    text_split: str = "paragraphs"  # DataConfig.text_split; used by plain-text files only


@dataclass(frozen=True)
class _Record:
    row: int  # 1-based line (line-based files) or row number
    data: dict[str, Any] | None  # None when the row could not be read at all
    field: str | None = None
    problem: str | None = None


def _require_train_files(cfg: DataConfig) -> list[str]:
    if not cfg.train_files:
        raise DataError("No training files are set.", "Add one or more files to data.train_files.")
    return cfg.train_files


def open_data_files(cfg: DataConfig) -> tuple[list[_Source], list[_Source]]:
    """The training and validation files, each opened and checked: it exists, is an ordinary readable file of a
    known kind (or a saved dataset), is not empty and is UTF-8 text where text is due. Reads a few bytes of each
    and imports neither ``datasets`` nor torch, so a run can refuse a missing file before it imports them; the
    errors are those of ``detect``, which starts with this."""
    train = [_open_source(p, "train_files", cfg.text_split) for p in _require_train_files(cfg)]
    validation = [_open_source(p, "validation_files", cfg.text_split) for p in cfg.validation_files]
    return train, validation


def _open_source(name: str, setting: str, text_split: str = "paragraphs") -> _Source:
    path = Path(name).expanduser()
    # A FIFO, socket or device would block forever in open() or read garbage; a symbolic-link loop never resolves.
    require_regular_file(path, "data file", DataError, f"Give an ordinary data file in data.{setting}.")
    if not path.exists():
        raise DataError(f"{path}: file not found.", f"Check the path in data.{setting}.")
    if path.is_dir():
        if not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
            raise DataError(f"{path}: this folder is not a dataset saved with datasets' save_to_disk.",
                            "Pick a data file, or a folder written by Dataset.save_to_disk.")
        return _Source(path, "saved", "row")
    kind = SUFFIX_KINDS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'.",
                        f"Use {', '.join(DATA_SUFFIXES)}, or a folder saved with datasets.")
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
    if kind == "json" and path.name == "dataset_info.json" and first == b"{":
        raise _dataset_list_error(path)
    if kind == "json":  # an array of objects, or JSON Lines under a .json name
        return _Source(path, "json", "row") if first == b"[" else _Source(path, "jsonl", "line")
    return _Source(path, kind, "row" if kind == "parquet" else "line", text_split)


def _dataset_list_error(path: Path) -> DataError:
    """LLaMA-Factory's dataset_info.json lists data files and their columns; it holds no examples itself."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        names = sorted({e["file_name"] for e in entries.values() if isinstance(e, dict) and "file_name" in e})
    except (OSError, ValueError, AttributeError):
        names = []
    listed = f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else ""
    return DataError(f"{path}: this is a LLaMA-Factory dataset list, not training data.",
                     f"Add the data files it lists{listed}: their format and columns are read from it.")


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
    return _read(src.kind, src.path, src.text_split)


def _read(kind: str, path: Path, text_split: str = "paragraphs") -> Iterator[_Record]:
    if kind == "text" and text_split != "paragraphs":
        return _read_whole_text(path)
    return _READERS[kind](path)


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
        except RecursionError:
            yield _Record(number, None, None, _TOO_DEEP)
            continue
        yield _object_record(number, obj)


def _read_json_array(path: Path) -> Iterator[_Record]:
    text = path.read_bytes().removeprefix(codecs.BOM_UTF8).decode("utf-8", "surrogateescape")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno}).",
                        "A .json file must hold one array of objects, or one object per line (JSON Lines).") from None
    except RecursionError:
        raise DataError(f"{path}: {_TOO_DEEP}.", "Flatten the data: a row is an object of text fields or a list "
                        "of messages.") from None
    del text
    for number, obj in enumerate(items, start=1):
        yield _object_record(number, obj)


# Python's JSON parser recurses once per nesting level and gives up near a thousand; no row of training data is
# nested that deeply.
_TOO_DEEP = "the JSON is nested too deeply to read (hundreds of levels of arrays or objects)"


def _object_record(number: int, obj: Any) -> _Record:
    if not isinstance(obj, dict):
        return _Record(number, None, None, f"expected a JSON object, found {_kind_of(obj)}")
    return _Record(number, obj)


def _read_csv(path: Path) -> Iterator[_Record]:
    # The csv module refuses values over 128 KiB by default; a whole document in one cell is ordinary data.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader((line for _, line in _lines(path)), delimiter=_csv_delimiter(path))
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


CSV_DELIMITERS = ",;\t|"  # comma first: what a header with several candidates most likely uses


def _csv_delimiter(path: Path) -> str:
    """The delimiter of a CSV file, told from its header line: spreadsheets in many locales save ';'-separated
    "CSV", and tab-separated files are often named .csv. A header with none of them is one column (comma)."""
    for _, line in _lines(path):
        header = line.rstrip("\r\n")
        try:
            return csv.Sniffer().sniff(header, delimiters=CSV_DELIMITERS).delimiter
        except csv.Error:  # one column, or no candidate appears in the header
            return ","
    return ","


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


def _read_whole_text(path: Path) -> Iterator[_Record]:
    """The whole file as one record (``text_split`` "whole" or "chunks"), line endings kept as they are."""
    text = "".join(line for _, line in _lines(path))
    if text.strip():
        yield _Record(1, {"text": text})


def _read_parquet(path: Path) -> Iterator[_Record]:
    number = 0
    for batch in _parquet_file(path).iter_batches(batch_size=1000):
        for row in batch.to_pylist():
            number += 1
            yield _Record(number, row)


def _parquet_file(path: Path) -> pq.ParquetFile:
    import pyarrow.parquet as pq

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
    import datasets

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


def checked_rows(files: list[str], setting: str, skip_bad_rows: bool, hint: str, build) -> list:
    """``build(data, where)`` for every record of ``files`` (``where`` names the file and row for messages).

    A record the reader could not parse, or a ``DataError`` from ``build``, stops the read with that message
    (``hint`` for an unparsable record), or skips the row with ``data.skip_bad_rows``. The labelled rows of
    classification and the pairs of preference training are read through it."""
    rows = []
    for name in files:
        src = _open_source(name, setting)
        for record in _iter_records(src):
            where = f"{src.path}: {src.unit} {record.row}"
            try:
                if record.data is None or record.problem:
                    raise DataError(f"{where}: {record.problem}", hint)
                rows.append(build(record.data, where))
            except DataError:
                if not skip_bad_rows:
                    raise
    return rows
