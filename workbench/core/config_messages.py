"""What the run configuration says when it refuses something: ``ConfigError`` (one line per bad field, and what
to do about it by where the configuration came from), pydantic's validation errors said in TOML terms, and the
block-range syntax (``"8-15"``, ``"0,2,4-6"``) the schema and the layer panel parse. Split from ``config`` (the
schema itself), which re-exports every name."""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import WorkbenchError


class ConfigError(WorkbenchError, ValueError):
    """A run configuration that cannot be used. ``problems`` holds one line per bad field."""

    def __init__(self, problems: list[str], source: str | None = None, hint: str | None = None):
        self.problems = problems
        self.source = source
        head = f"invalid run configuration{f' in {source}' if source else ''}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in problems)]), _config_hint(source) if hint is None else hint)


def _config_hint(source: str | None) -> str:
    """What to do about a configuration error, by where the configuration came from."""
    if source == "--set":
        return "fix the --set KEY=VALUE option named above (values are TOML: numbers bare, text in quotes)"
    if source == "command line":
        return "fix the option named above; `workbench inspect --help` lists them"
    if source:
        return f"edit {source}: each line above names a field, the value found and what is allowed"
    return "each line above names a field, the value found and what is allowed"


def parse_block_spec(spec: str) -> list[int]:
    """'8-15' → [8..15]; '0,2,4-6' → [0, 2, 4, 5, 6]. Raises ValueError with the bad part named."""
    blocks: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:[-–:](\d+))?", part)
        if not m:
            raise ValueError(f"block range {part!r} is not N or A-B (e.g. '8-15' or '0,2,4-6')")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise ValueError(f"block range {part!r} ends before it starts")
        blocks.update(range(a, b + 1))
    if not blocks:
        raise ValueError("empty block range; write e.g. '8-15'")
    return sorted(blocks)


def describe_validation_error(exc: ValidationError, prefix: str = "") -> list[str]:
    """One readable line per problem: ``section.field: got VALUE — what is allowed``."""
    problems = []
    for err in exc.errors():
        loc = prefix + ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if not err["loc"] and err["msg"].startswith("Value error, "):  # a rule across sections: it names its fields
            problems.append(err["msg"].removeprefix("Value error, "))
            continue
        value = err.get("input")
        if kind == "extra_forbidden":
            section = ".".join(str(p) for p in err["loc"][:-1])
            allowed = _allowed_keys(err["loc"][:-1])
            problems.append(
                f"{loc}: unknown key{f' in [{section}]' if section else ''}; allowed: {', '.join(allowed)}"
            )
            continue
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if kind == "literal_error":
            msg = "must be one of " + msg.removeprefix("Input should be ")
        elif isinstance(value, float) and math.isnan(value):
            msg = "must be a number (nan is not one)"
        elif kind in _TYPE_MESSAGES:
            msg = _TYPE_MESSAGES[kind]
        elif kind == "model_type" or (kind == "dict_type" and len(err["loc"]) == 1):
            msg = f"must be a [{loc}] table of settings"
        elif msg.startswith("Input should be "):  # range and choice errors: "must be greater than 0", …
            msg = "must be " + msg.removeprefix("Input should be ")
        problems.append(f"{loc}: got {value!r} — {msg}")
    return problems


# Type errors, said in TOML terms (strict mode: "8" is not a rank, 8.5 is not a batch size, true is not 1).
_TYPE_MESSAGES = {
    "int_type": "must be a whole number (an integer such as 8: no quotes, no decimal point)",
    "float_type": "must be a number such as 0.0002 (without quotes)",
    "bool_type": "must be true or false (without quotes)",
    "string_type": 'must be text in quotes, e.g. "value"',
    "list_type": 'must be a list, e.g. ["a", "b"]',
    "dict_type": 'must be a table, e.g. {name = "value"}',
}


def _allowed_keys(loc: tuple) -> list[str]:
    from .config import RunConfig  # the schema imports this module: named here, at call time

    cls: Any = RunConfig
    for part in loc:
        f = cls.model_fields.get(part)
        if f is None or not isinstance(f.annotation, type) or not issubclass(f.annotation, BaseModel):
            return []
        cls = f.annotation
    return list(cls.model_fields)
