"""What sets compared runs apart, in plain Python: their settings flattened to ``section.key`` rows, the rows that
differ, the distinct part of near-identical run names, and a legend entry per run built from both (the Runs
tab's overlay and difference table use them; ``runs_panel`` re-exports every name)."""

from __future__ import annotations

import re


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_difference(configs: dict[str, dict]) -> list[tuple[str, list[object]]]:
    """(flattened key, value per run) for every key whose value is not the same in all runs."""
    flat = {name: flatten(c) for name, c in configs.items()}
    keys = sorted(set().union(*(f.keys() for f in flat.values()))) if flat else []
    rows = []
    for key in keys:
        values = [f.get(key, "—") for f in flat.values()]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, values))
    return rows


def distinct_parts(names: list[str]) -> list[str]:
    """Each name without the start and end that all share, cut at separators: run names are often long,
    near-identical time stamps ("llama-2026-03-01-1200-a", "…-1207-a"), of which only a few characters differ."""
    if len(names) < 2:
        return list(names)
    pieces = [re.split(r"([-_. ])", n) for n in names]
    start = 0
    while all(len(p) > start + 1 for p in pieces) and len({p[start] for p in pieces}) == 1:
        start += 1
    end = 0
    while all(len(p) - end - 1 > start for p in pieces) and len({p[len(p) - end - 1] for p in pieces}) == 1:
        end += 1
    out = ["".join(p[start:len(p) - end]).strip("-_. ") for p in pieces]
    return [o or n for o, n in zip(out, names)]


# The settings people compare runs by, named first in a legend when they differ; others follow alphabetically.
LEGEND_FIRST = ("lora.r", "training.learning_rate", "lora.alpha", "lora.preset", "lora.target_modules",
                "lora.use_dora", "lora.use_rslora", "training.max_steps", "training.epochs", "training.batch_size",
                "data.train_files", "model.source")


def legend_labels(names: list[str], difference: list[tuple[str, list[object]]], settings: int = 2) -> list[str]:
    """A legend entry per run that says what sets it apart: the distinct part of its name and the settings that
    differ, the usual suspects (rank, learning rate, …) first; not the output folder, which differs by
    construction."""
    ranked = sorted((row for row in difference if not row[0].startswith("output.")),
                    key=lambda row: (LEGEND_FIRST.index(row[0]) if row[0] in LEGEND_FIRST else len(LEGEND_FIRST),
                                     row[0]))
    shown = ranked[:settings]
    labels = []
    for i, part in enumerate(distinct_parts(names)):
        settings_text = ", ".join(f"{key.split('.')[-1]} {values[i]}" for key, values in shown)
        labels.append(f"{part} ({settings_text})" if settings_text else part)
    return labels
