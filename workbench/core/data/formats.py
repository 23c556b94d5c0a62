"""Data formats: which format a file holds, how its columns map to the format's roles, and each row checked and
normalised into the format's canonical columns. Pure Python (no ``datasets``), so the window can import the role
names at start-up.

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
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import DataError
from .readers import _READERS, _iter_records, _kind_of, _Record, _Source
from .results import _SKIP_HINT, BadRow, _RowProblem

# The role names of each format, in the order the window shows them. Every role is required except these.
FORMAT_ROLES: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "prompt-completion": ("prompt", "completion"),
    "alpaca": ("instruction", "input", "output"),
    "chat": ("messages",),
    "sharegpt": ("conversations",),
}
OPTIONAL_ROLES = frozenset({"input"})
# Role names per format; the first tuple is required, the second optional.
_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    fmt: (tuple(r for r in roles if r not in OPTIONAL_ROLES), tuple(r for r in roles if r in OPTIONAL_ROLES))
    for fmt, roles in FORMAT_ROLES.items()
}
# Which format ``auto`` picks when a file's columns hold the required roles of several.
_GUESS_ORDER = ("chat", "sharegpt", "alpaca", "prompt-completion", "text")
_CHAT_FORMATS = ("chat", "sharegpt")
# The columns a checked row of each format has: its roles, except that both chat styles become ``messages``.
CANONICAL_COLUMNS: dict[str, tuple[str, ...]] = {
    fmt: ("messages",) if fmt in _CHAT_FORMATS else roles for fmt, roles in FORMAT_ROLES.items()
}
_SPEAKERS = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
_DETECT_ROWS = 20  # rows read to detect the format and show samples
_BAD_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8

_FORMAT_HINT = (
    f"Set data.format ({', '.join(FORMAT_ROLES)}) and map your columns with data.columns, "
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
    if src.kind in ("json", "jsonl") and cfg.format == "auto" and not cfg.columns:
        _refuse_mixed_formats(src, records)
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


def _refuse_mixed_formats(src: _Source, records: list[_Record]) -> None:
    """JSON rows each carry their own keys: a file whose rows are of different formats (chat rows, then
    prompt/completion rows) is named at the first row that differs from the first one — not at line 1, which
    is valid, as the union of all columns would have it."""
    first = _guess_format(list(records[0].data), {})
    for record in records[1:]:
        fmt = _guess_format(list(record.data), {})
        if first and fmt and CANONICAL_COLUMNS[fmt] != CANONICAL_COLUMNS[first]:
            raise DataError(f"{src.path}: {src.unit} {record.row} holds a {fmt} row, but {src.unit} "
                            f"{records[0].row} holds a {first} row: a file must hold rows of one format.",
                            "Split the file into one file per format (each can be a training file of its own run), "
                            "or convert the rows to one format.")


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
    return next((fmt for fmt in _GUESS_ORDER if set(_ROLES[fmt][0]) <= present), None)


def _check_same_format(first: str, fmt: str, src: _Source) -> None:
    if CANONICAL_COLUMNS[fmt] != CANONICAL_COLUMNS[first]:
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


def _generate_rows(path: str, kind: str, fmt: str, mapping: dict[str, str], source: int) -> Iterator[dict[str, Any]]:
    """Every record of one file as a checked row in canonical columns, with its origin and what is wrong with it
    ("" when nothing is): the generator ``cache._read_file`` turns into a cached Arrow dataset."""
    blank = {name: [] if name == "messages" else "" for name in CANONICAL_COLUMNS[fmt]}
    for record in _READERS[kind](Path(path)):
        row = {"_source": source, "_row": record.row, "_field": "", "_problem": ""}
        try:
            if record.problem:
                raise _RowProblem(record.field, record.problem)
            row.update(_normalize(record.data, fmt, mapping))
        except _RowProblem as problem:
            row.update(blank, _field=problem.field or "", _problem=problem.reason)
        yield row
