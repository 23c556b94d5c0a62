"""The headless command that reproduces a configuration edited since its run file was saved:
``workbench train RUN.toml --set …`` (the window's "Copy command line").

The run file on disk is the base; every setting changed since it was saved becomes one ``--set
section.field=value`` (values written as TOML literals, exactly what ``RunConfig.with_overrides`` parses back;
written here rather than by ``tomli_w``, which writes documents, not one inline value).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from .config import RunConfig


class NotExpressible(ValueError):
    """A change that ``--set`` cannot carry (clearing an optional field: TOML has no null)."""


def toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_literal(v)}" for k, v in value.items()) + "}"
    raise NotExpressible(f"cannot write {value!r} as a TOML value")


def overrides(base: RunConfig, current: RunConfig) -> list[str]:
    """``section.field=value`` for every field whose value differs between ``base`` and ``current``."""
    old, new = base.model_dump(mode="json"), current.model_dump(mode="json")
    out = []
    for section, fields in new.items():
        for name, value in fields.items():
            if old[section][name] == value:
                continue
            if value is None:
                raise NotExpressible(f"{section}.{name} was cleared; save the run file to carry that change")
            out.append(f"{section}.{name}={toml_literal(value)}")
    return out


def command_line(run_file: Path, current: RunConfig) -> str:
    parts = ["workbench", "train", str(run_file)]
    for assignment in overrides(RunConfig.from_toml(run_file), current):
        parts += ["--set", assignment]
    return shlex.join(parts)
