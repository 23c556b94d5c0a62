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
    A message's content is text, or a list of text parts: OpenAI's ``{"type": "text", "text": ...}`` or
    LLaMA-Factory's ``{"type": "text", "value": ...}`` (joined as they are). A message's ``loss_weight``
    (LLaMA-Factory v1) says whether it is trained: 0 leaves an assistant message out of the loss, 1 trains it;
    other messages are never trained, so they take only 0.
    A LLaMA-Factory ``dataset_info.json`` beside a data file that names it (``file_name``) gives that file's
    format (``formatting``: alpaca or sharegpt), its ``columns`` and, for sharegpt, its message ``tags``, unless
    ``DataConfig.format`` or ``DataConfig.columns`` are set.
    ``DataConfig.columns`` maps these role names to other column names, e.g. ``{prompt = "question",
    completion = "answer"}``; it also selects the format when ``format`` is ``auto``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import DataError
from .readers import _iter_records, _kind_of, _read, _Record, _Source
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
# The columns a checked row of each format has: its roles, except that both chat styles become ``messages``
# plus the indices of the assistant messages left out of the loss (``loss_weight`` 0).
CANONICAL_COLUMNS: dict[str, tuple[str, ...]] = {
    fmt: ("messages", "untrained_turns") if fmt in _CHAT_FORMATS else roles for fmt, roles in FORMAT_ROLES.items()
}
_SPEAKERS = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
_DETECT_ROWS = 20  # rows read to detect the format and show samples
_BAD_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8

_FORMAT_HINT = (
    f"Set data.format ({', '.join(FORMAT_ROLES)}) and map your columns with data.columns, "
    'e.g. columns = {prompt = "question", completion = "answer"}.'
)


@dataclass(frozen=True)
class _Tags:
    """How the messages of a conversation are spelled: the keys of speaker and text, and speaker → role. The
    default accepts both the chat style (role/content) and the ShareGPT style (from/value)."""

    role_key: str | None = None  # None: "role", or "from" when a message has no role
    content_key: str | None = None  # None: "content", or "value" when a message has no content
    speakers: tuple[tuple[str, str], ...] = tuple(_SPEAKERS.items())


_DEFAULT_TAGS = _Tags()


@dataclass(frozen=True)
class _Detected:
    format: str
    mapping: dict[str, str]
    columns: list[str]
    samples: list[dict[str, Any]]
    tags: _Tags = _DEFAULT_TAGS
    mapping_file: str | None = None  # the dataset_info.json the format and columns were read from


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
    described = _described_format(src, cfg)
    fmt, mapping = described[:2] if described else _resolve_format(src, list(columns), cfg)
    tags = described[2] if described else _DEFAULT_TAGS
    # The rows read are checked as training will check them, so a bad row among the first ones is reported now
    # (before a run starts) rather than after the model has loaded.
    for record in records if check_rows else ():
        try:
            _normalize(record.data, fmt, mapping, tags)
        except _RowProblem as problem:
            if not cfg.skip_bad_rows:
                raise DataError(str(BadRow(str(src.path), record.row, src.unit, problem.field, problem.reason)),
                                _SKIP_HINT) from None
    return _Detected(fmt, mapping, list(columns), [r.data for r in records[:5]], tags,
                     str(src.path.parent / _DATASET_LIST) if described else None)


_DATASET_LIST = "dataset_info.json"  # LLaMA-Factory's list of data files with their format and columns
# LLaMA-Factory's column names → (format, role) here. Its other columns (system, tools, images, history, chosen,
# rejected, kto_tag...) carry data this format cannot hold; a file that uses them is refused, not half-read.
_DESCRIBED_ROLES = {
    "alpaca": {"prompt": ("instruction", "instruction"), "query": ("input", "input"),
               "response": ("output", "output")},
    "sharegpt": {"messages": ("conversations", "conversations")},
}


def _described_format(src: _Source, cfg: DataConfig) -> tuple[str, dict[str, str], _Tags] | None:
    """Format, column mapping and tags from a LLaMA-Factory dataset_info.json beside the file that names it, or
    None (no such list, the list does not name this file, or the user set the format or columns)."""
    if cfg.format != "auto" or cfg.columns or src.kind == "text" or src.kind == "saved":
        return None
    listing = src.path.parent / _DATASET_LIST
    try:
        entries = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no list (or not one we can read): the columns decide, as for any file
    if not isinstance(entries, dict):
        return None
    for name, entry in entries.items():
        if isinstance(entry, dict) and isinstance(entry.get("file_name"), str) \
                and (src.path.parent / entry["file_name"]).resolve() == src.path.resolve():
            return _read_entry(listing, name, entry)
    return None


def _read_entry(listing: Path, name: str, entry: dict[str, Any]) -> tuple[str, dict[str, str], _Tags]:
    where = f"{listing}: dataset {name!r}"
    formatting = entry.get("formatting", "alpaca")
    if formatting not in _DESCRIBED_ROLES or entry.get("ranking"):
        kind = "preference (ranking) data" if entry.get("ranking") else f"formatting {formatting!r}"
        raise DataError(f"{where}: {kind} is not supported here.",
                        "Use alpaca or sharegpt data without ranking, or set data.format and data.columns yourself.")
    columns = entry.get("columns") or {}
    roles = _DESCRIBED_ROLES[formatting]
    unsupported = [key for key in columns if key not in roles]
    if unsupported:
        raise DataError(f"{where}: the column {unsupported[0]!r} ({columns[unsupported[0]]!r}) is not supported here.",
                        f"The supported {formatting} columns are: {', '.join(roles)}. Remove the others from the "
                        "entry (their data would be ignored), or convert the file.")
    fmt = "alpaca" if formatting == "alpaca" else "sharegpt"
    mapping = {role: columns.get(key, default) for key, (role, default) in roles.items()}
    tags = _DEFAULT_TAGS
    if formatting == "sharegpt":
        given = entry.get("tags") or {}
        speakers = {given.get("user_tag", "human"): "user", given.get("assistant_tag", "gpt"): "assistant",
                    given.get("system_tag", "system"): "system"}
        tags = _Tags(given.get("role_tag", "from"), given.get("content_tag", "value"),
                     tuple((speaker.lower(), role) for speaker, role in speakers.items()))
    return fmt, mapping, tags


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


def _normalize(data: dict[str, Any], fmt: str, mapping: dict[str, str],
               tags: _Tags = _DEFAULT_TAGS) -> dict[str, Any]:
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
    messages, untrained = _messages(data, mapping["messages" if fmt == "chat" else "conversations"], tags)
    return {"messages": messages, "untrained_turns": untrained}


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


def _messages(data: dict[str, Any], column: str, tags: _Tags = _DEFAULT_TAGS) -> tuple[list[dict[str, str]], list[int]]:
    """The conversation as ``{"role", "content"}`` messages, and the indices of the assistant messages that
    ``loss_weight`` 0 leaves out of the loss."""
    turns = data.get(column)
    if turns is None:
        raise _RowProblem(column, "is missing" if column not in data else "is null")
    if not isinstance(turns, list):
        raise _RowProblem(column, f"expected a list of messages, found {_kind_of(turns)}")
    speakers = dict(tags.speakers)
    messages: list[dict[str, str]] = []
    untrained: list[int] = []
    for i, turn in enumerate(turns):
        where = f"{column}[{i}]"
        if not isinstance(turn, dict):
            raise _RowProblem(where, f"expected an object with role and content, found {_kind_of(turn)}")
        role_key = tags.role_key or ("from" if turn.get("role") is None and "from" in turn else "role")
        content_key = tags.content_key or ("value" if turn.get("content") is None and "value" in turn else "content")
        speaker = turn.get(role_key)
        if not isinstance(speaker, str) or speaker.lower() not in speakers:
            expected = ("system, user or assistant (ShareGPT: system, human or gpt)" if tags is _DEFAULT_TAGS
                        else ", ".join(speakers) + " (the tags of dataset_info.json)")
            raise _RowProblem(f"{where}.{role_key}", f"unknown role {speaker!r}; expected {expected}")
        content = _content_text(turn.get(content_key), f"{where}.{content_key}")
        role = speakers[speaker.lower()]
        if role == "assistant" and not content.strip():
            raise _RowProblem(f"{where}.{content_key}", "the assistant message is empty")
        if not _trained_by_weight(turn, role, f"{where}.loss_weight"):
            untrained.append(i)
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise _RowProblem(column, "has no assistant message, so there is nothing to train on")
    if all(m["role"] != "assistant" or i in untrained for i, m in enumerate(messages)):
        raise _RowProblem(column, "every assistant message has loss_weight 0, so there is nothing to train on")
    return messages, untrained


def _content_text(content: Any, where: str) -> str:
    """A message's text: a string, or a list of text parts (OpenAI ``{"type": "text", "text"}``, LLaMA-Factory
    ``{"type": "text", "value"}``) joined as they are, as both of them join parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _RowProblem(where, "is missing" if content is None else f"expected text, found {_kind_of(content)}")
    pieces = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise _RowProblem(f"{where}[{j}]", f"expected a part like {{\"type\": \"text\", \"text\": ...}}, "
                                               f"found {_kind_of(part)}")
        if part.get("type", "text") != "text":
            raise _RowProblem(f"{where}[{j}]", f"is a {part.get('type')!r} part: only text can be trained "
                                               "here; leave images and other media out of the data")
        text = part.get("text", part.get("value"))
        if not isinstance(text, str):
            raise _RowProblem(f"{where}[{j}]", "a text part needs its text in 'text' (OpenAI) or 'value' "
                                               "(LLaMA-Factory)")
        pieces.append(text)
    return "".join(pieces)


def _trained_by_weight(turn: dict[str, Any], role: str, where: str) -> bool:
    """Whether a message is trained: assistant messages are unless ``loss_weight`` is 0. The loss here is
    not weighted per token, so a weight other than 0 or 1 is refused rather than rounded."""
    weight = turn.get("loss_weight")
    if weight is None:
        return role == "assistant"
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight not in (0, 1):
        raise _RowProblem(where, f"is {weight!r}; only 0 (not trained) and 1 (trained) are supported")
    if weight == 1 and role != "assistant":
        raise _RowProblem(where, f"is 1 on a {role} message; only assistant messages can be trained "
                                 "(use train_on = 'all' to train on every token)")
    return weight == 1


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


def _generate_rows(path: str, kind: str, fmt: str, mapping: dict[str, str], source: int,
                   tags: _Tags = _DEFAULT_TAGS, text_split: str = "paragraphs") -> Iterator[dict[str, Any]]:
    """Every record of one file as a checked row in canonical columns, with its origin and what is wrong with it
    ("" when nothing is): the generator ``cache._read_file`` turns into a cached Arrow dataset."""
    blank = {name: [] if name in ("messages", "untrained_turns") else "" for name in CANONICAL_COLUMNS[fmt]}
    for record in _read(kind, Path(path), text_split):
        row = {"_source": source, "_row": record.row, "_field": "", "_problem": ""}
        try:
            if record.problem:
                raise _RowProblem(record.field, record.problem)
            row.update(_normalize(record.data, fmt, mapping, tags))
        except _RowProblem as problem:
            row.update(blank, _field=problem.field or "", _problem=problem.reason)
        yield row
