"""Validation rows that are also training rows: an evaluation loss measured on them says how well the model
remembers, not how well it generalises, so a run whose validation files share rows with its training files is
warned, with the count (the same file given as both is the extreme case). Rows are compared in their canonical
columns, so a row written once as JSON and once as CSV counts as shared."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from datasets import Dataset

from ..config import DataConfig
from .results import RawData

_BATCH = 1024


def overlap_warnings(cfg: DataConfig, raw: RawData) -> list[str]:
    """Warnings for validation files that repeat training rows (nothing when validation is a split of the
    training rows, which cannot overlap them, or when there is no validation data)."""
    if not cfg.validation_files or raw.validation is None or len(raw.validation) == 0:
        return []
    warnings = []
    both = sorted(set(map(_resolved, cfg.train_files)) & set(map(_resolved, cfg.validation_files)))
    if both:
        warnings.append(f"{', '.join(both)} {'is' if len(both) == 1 else 'are'} both a training and a validation "
                        "file: the evaluation loss will measure rows the model trains on. Give validation rows of "
                        "their own (data.validation_files), or set data.validation_split instead.")
    train = set(_row_digests(raw.train))
    shared = sum(1 for digest in _row_digests(raw.validation) if digest in train)
    if shared:
        warnings.append(f"{shared} of the {len(raw.validation)} validation rows are also training rows, so the "
                        "evaluation loss partly measures memorisation. Remove them from the validation files "
                        "(or from the training files).")
    return warnings


def _resolved(name: str) -> str:
    try:
        return str(Path(name).expanduser().resolve())
    except (OSError, RuntimeError):
        return name


def _row_digests(rows: Dataset):
    columns = [c for c in rows.column_names if not c.startswith("_")]  # _source, _row: where, not what
    for batch in rows.select_columns(columns).iter(batch_size=_BATCH):
        for values in zip(*(batch[c] for c in columns)):
            text = json.dumps(values, sort_keys=True, ensure_ascii=False, default=str)
            yield hashlib.blake2b(text.encode(), digest_size=8).digest()
