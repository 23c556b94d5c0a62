"""Learning the built-in templates from the Hub config.json files of core/builtin_template_sources.py, exactly as
the runtime learns a user's template after a fresh build (core/tree_cache.py ``_learn``): each source is written
to a folder, opened through transformers on the meta device (``models.open_overview``) and handed with its
config.json, as ``checkpoint.read_json_object`` reads it, to ``tree_template.learn_template``.

Sources whose keys agree (the sizes of one family) share the template learned from the first of them; it is kept
only if it also gives every other one its fresh tree and memory fields exactly, so every source listed in a
template's ``sources`` was checked against transformers (the version each file names in ``transformers``).
"""

from __future__ import annotations

import json
import re
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

__all__ = ["TASKS", "learn_builtin", "problems", "write_templates"]

# The faces a model is opened with: inspect's default and the window's; a classifier as the CLI opens it (no label
# count) and as the window does (RunConfig's default of 2 labels). Each is its own key.
TASKS: tuple[tuple[str, int | None], ...] = (("causal-lm", None), ("sequence-classification", None),
                                             ("sequence-classification", 2))


def learn_builtin(sources: dict[str, dict[str, Any]], tasks: tuple[tuple[str, int | None], ...] = TASKS,
                  ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """({key: template}, notes on what gave no template or was not explained by its family's template)."""
    from ..checkpoint import CONFIG_JSON_FIELDS, read_json_object
    from ..models import open_overview
    from ..tree_cache import _raw_dtype
    from ..tree_template import learn_template, memory_of, node_facts, template_key, tree_from_template

    transformers_version = version("transformers")  # in every key too; here for people and the tests to read
    templates: dict[str, dict[str, Any]] = {}
    refused: set[str] = set()  # keys whose first source gave no template: the others are not tried again
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="builtin-templates-") as tmp:
        for name, config in sources.items():
            folder = Path(tmp) / re.sub(r"[^A-Za-z0-9._-]", "_", name)
            folder.mkdir()
            (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
            raw = read_json_object(folder / "config.json", fields=CONFIG_JSON_FIELDS)
            for task, num_labels in tasks:
                face = f"{name} ({task}{'' if num_labels is None else f', {num_labels} labels'})"
                key = template_key(raw, task, num_labels, builtin=True)
                if key is None:
                    notes.append(f"{face}: not templated (core/tree_template.py split_config)")
                    break  # the same for every task
                if key in refused:
                    continue
                fresh = open_overview(str(folder), task=task, num_labels=num_labels)
                if key in templates:
                    template = templates[key]
                    rebuilt = tree_from_template(template, raw)
                    if rebuilt is None or node_facts(rebuilt) != node_facts(fresh.tree) or \
                            memory_of(template, raw) != _memory(fresh):
                        notes.append(f"{face}: not explained by the template of {template['sources'][0]}")
                    else:
                        template["sources"].append(name)
                    continue
                learned = learn_template(raw, fresh, task, num_labels) if _raw_dtype(raw) == fresh.dtype else None
                if learned is None:
                    refused.add(key)
                    notes.append(f"{face}: no template (the probes or the fresh tree are not explained)")
                    continue
                templates[key] = {**learned, "sources": [name], "transformers": transformers_version}
    return templates, notes


def _memory(overview: Any) -> dict[str, Any]:
    from ..tree_template import MEMORY_FIELDS

    config = overview.hf_config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {k: getattr(text, k, None) for k in MEMORY_FIELDS}


def _text(template: dict[str, Any]) -> str:
    return json.dumps(template, sort_keys=True, separators=(",", ":")) + "\n"


def problems(templates: dict[str, dict[str, Any]], directory: Path, complete: bool = True) -> list[str]:
    """What differs between ``templates`` and the files in ``directory``: a missing or stale (different, damaged)
    file, and with ``complete`` (``templates`` is every template there should be, learned from every source) an
    extra one. Without ``complete`` (some sources only), a file may name more sources than its template."""
    found = []
    for key, template in templates.items():
        path = directory / f"{key}.json"
        expected = json.loads(_text(template))
        try:
            on_disk = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            found.append(f"missing: {path.name} ({', '.join(template['sources'])})")
            continue
        except (OSError, ValueError):
            on_disk = None
        if not isinstance(on_disk, dict) or {**on_disk, "sources": None} != {**expected, "sources": None} or (
                on_disk.get("sources") != expected["sources"] if complete else
                not isinstance(on_disk.get("sources"), list) or not set(expected["sources"]) <= set(on_disk["sources"])):
            found.append(f"stale: {path.name} ({', '.join(template['sources'])})")
    if complete:
        found += [f"extra: {p.name}" for p in sorted(directory.glob("*.json")) if p.stem not in templates]
    return found


def write_templates(templates: dict[str, dict[str, Any]], directory: Path) -> tuple[int, int]:
    """Write every template whose file differs and remove the JSON files of no template: (written, removed)."""
    from ..fsutil import atomic_write_text

    written = removed = 0
    for key, template in templates.items():
        path = directory / f"{key}.json"
        text = _text(template)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
            written += 1
    for path in directory.glob("*.json"):
        if path.stem not in templates:
            path.unlink()
            removed += 1
    return written, removed
