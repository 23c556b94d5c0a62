"""Sequence classification and regression: labelled rows, the label set, tokenized data and metrics.

The rows are read with the same readers as the language-modelling data (``core/data/readers.py``: JSONL, JSON,
CSV, Parquet, saved datasets), but each row holds a ``text`` (and optionally a ``text_pair``, for sentence pairs)
and a ``label``; ``data.columns`` maps these roles to other column names (``{text = "sentence", label =
"sentiment"}``). What a label is depends on ``model.problem_type``:

``single-label``  a class name (text) or a whole number; the classes are ``model.labels`` or, when that is empty,
                  every label found in the training rows, sorted (numerically when all are numbers).
``multi-label``   a list of class names (in CSV one cell, names separated by commas); the model predicts each class
                  independently (sigmoid), as transformers' ``multi_label_classification`` does.
``regression``    a number; the model has one output trained with the mean squared error.

The label set is fixed before the model is built (it sets ``num_labels``, ``id2label`` and ``label2id`` in the
model configuration) and written beside the adapter as ``labels.json``, so the adapter and its head can be
loaded again with the right names. Bad labels stop the run with the row named: a validation label the training
rows never show, a missing label, a fractional number for a single-label class, text for a regression target, a
training set with a single class.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .classification_metrics import ClassificationMetrics
from .config import DataConfig, ModelConfig
from .errors import DataError
from .fsutil import atomic_write_text

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "LABELS_FILE",
    "TRANSFORMERS_PROBLEM_TYPES",
    "LabelledRow",
    "LabelSet",
    "ClassificationData",
    "read_labelled_rows",
    "discover_labels",
    "label_set_for",
    "inspect_labels",
    "apply_to_model_config",
    "prepare_classification",
    "ClassificationMetrics",
    "write_label_file",
    "read_label_file",
]

LABELS_FILE = "labels.json"
_Row = TypeVar("_Row")
# model.problem_type → transformers' PretrainedConfig.problem_type (which picks the loss in *ForSequenceClassification)
TRANSFORMERS_PROBLEM_TYPES = {
    "single-label": "single_label_classification",
    "multi-label": "multi_label_classification",
    "regression": "regression",
}
_MULTI_LABEL_SEPARATOR = ","
_LABEL_HINT = ("Each row needs a label in the column data.columns.label (default 'label'); set model.problem_type "
               "(single-label, multi-label or regression) to what the labels are.")


@dataclass(frozen=True)
class LabelledRow:
    text: str
    text_pair: str | None
    label: Any  # a class name (str), a list of class names, or a float (regression)
    where: str  # "file: line N", for messages


@dataclass(frozen=True)
class LabelSet:
    """The classes of a classification run (empty for regression) and how often each occurs in the training rows."""

    problem_type: str  # model.problem_type
    names: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)  # training rows per class (the Data tab's bars)

    @property
    def num_labels(self) -> int:
        return 1 if self.problem_type == "regression" else len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names)) if self.names else {0: "value"}

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    def majority_share(self) -> float | None:
        """Share of training rows in the commonest class: the accuracy a model that learned nothing reaches."""
        total = sum(self.counts.values())
        return max(self.counts.values()) / total if total and self.problem_type == "single-label" else None

    def to_json(self) -> dict[str, Any]:
        return {"problem_type": self.problem_type, "id2label": {str(i): n for i, n in self.id2label.items()},
                "label2id": self.label2id, "counts": self.counts}


@dataclass
class ClassificationData:
    """Tokenized rows for the HF Trainer: ``input_ids``, ``attention_mask`` (``token_type_ids`` for BERT-style
    tokenizers) and ``labels``. ``packed`` is always False (examples are never packed for classification)."""

    train: "Dataset"
    validation: "Dataset | None"
    labels: LabelSet
    truncated: int  # training and validation examples longer than data.max_length, cut to it
    packed: bool = False


# ---------------------------------------------------------------------------------------------- reading


def read_labelled_rows(cfg: DataConfig, files: list[str], setting: str, problem_type: str) -> list[LabelledRow]:
    """Every row of ``files`` as text (+ pair) and a label checked for ``problem_type``. Bad rows raise
    ``DataError`` naming the file, the row and the column, or are skipped with ``data.skip_bad_rows``."""
    from .data.readers import checked_rows

    text_col = cfg.columns.get("text", "text")
    pair_col = cfg.columns.get("text_pair")
    label_col = cfg.columns.get("label", "label")

    def build(data: dict[str, Any], where: str) -> LabelledRow:
        return LabelledRow(text=_text_field(data, text_col, where),
                           text_pair=_text_field(data, pair_col, where) if pair_col else None,
                           label=_checked_label(data, label_col, problem_type, where), where=where)

    return checked_rows(files, setting, cfg.skip_bad_rows, _LABEL_HINT, build)


def _text_field(data: dict[str, Any], column: str, where: str) -> str:
    if column not in data:
        raise DataError(f"{where}: there is no column '{column}' (columns: {', '.join(map(str, data)) or 'none'}).",
                        "Map the text column with data.columns, e.g. columns = {text = \"sentence\"}.")
    value = data[column]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: column '{column}' must hold non-empty text, found {_shown(value)}.",
                        "Fix or remove the row, or set data.skip_bad_rows = true.")
    return value


def _checked_label(data: dict[str, Any], column: str, problem_type: str, where: str) -> Any:
    value = data.get(column)
    if column not in data or value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: the label (column '{column}') is missing.",
                        "Give every row a label, map the label column with data.columns "
                        "(e.g. columns = {label = \"sentiment\"}), or set data.skip_bad_rows = true.")
    if problem_type == "regression":
        number = _as_number(value)
        if number is None or not math.isfinite(number):
            raise DataError(f"{where}: the label {_shown(value)} (column '{column}') is not a number, and "
                            "model.problem_type = \"regression\" predicts a number.",
                            "Give a number in every row, or set model.problem_type = \"single-label\" for classes.")
        return number
    if problem_type == "multi-label":
        names = value.split(_MULTI_LABEL_SEPARATOR) if isinstance(value, str) else value
        if not isinstance(names, list):
            raise DataError(f"{where}: the label {_shown(value)} (column '{column}') is not a list of classes, and "
                            "model.problem_type = \"multi-label\" gives each text a list.",
                            'Write the classes as a list (["sports", "politics"]) or, in CSV, separated by commas.')
        return sorted({_class_name(n, column, where) for n in names if not (isinstance(n, str) and not n.strip())})
    return _class_name(value, column, where)


def _class_name(value: Any, column: str, where: str) -> str:
    """A class as the text it is known by: names stay, whole numbers (1, 1.0, "1") become "1"."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: the label {_shown(value)} (column '{column}') is not a class name or a whole number.",
                        _LABEL_HINT)
    if isinstance(value, str):
        value = value.strip()
        number = _as_number(value)
        if number is None:
            return value
    else:
        number = float(value)
    if not number.is_integer():
        raise DataError(f"{where}: the label {_shown(value)} (column '{column}') is a fractional number, which cannot "
                        "be a class.", "For a numeric target set model.problem_type = \"regression\"; for classes "
                        "give names or whole numbers.")
    return str(int(number))


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -------------------------------------------------------------------------------------------- label set


def discover_labels(rows: list[LabelledRow], problem_type: str, given: list[str] | None = None) -> LabelSet:
    """The label set of the training ``rows``: ``given`` (model.labels) when set, else every class found, sorted
    numerically when all are whole numbers and alphabetically otherwise. Raises ``DataError`` for a training
    label outside ``given`` and for a single class."""
    if problem_type == "regression":
        return LabelSet(problem_type, (), {})
    counts: Counter[str] = Counter()
    for row in rows:
        counts.update(row.label if problem_type == "multi-label" else [row.label])
    if given:
        unknown = [row for row in rows if any(n not in given for n in _names(row.label))]
        if unknown:
            bad = next(n for n in _names(unknown[0].label) if n not in given)
            raise DataError(f"{unknown[0].where}: the label {bad!r} is not one of model.labels ({', '.join(given)}); "
                            f"{len(unknown)} training row{'s' if len(unknown) > 1 else ''} have labels outside it.",
                            "Add the label to model.labels, or leave model.labels empty to use the labels found in "
                            "the training data.")
        names = tuple(given)
    else:
        names = tuple(sorted(counts, key=_class_order(counts)))
    if len(names) < 2:
        found = f"only the class {names[0]!r}" if names else "no class"
        raise DataError(f"The training data has {found}: a classifier needs at least two classes.",
                        "Add rows of the other classes (check the label column, data.columns.label), or list the "
                        "classes in model.labels.")
    return LabelSet(problem_type, names, {n: counts.get(n, 0) for n in names})


def _names(label: Any) -> list[str]:
    return label if isinstance(label, list) else [label]


def _class_order(counts: Counter[str]):
    if all(_as_number(n) is not None for n in counts):
        return lambda n: (float(n), n)
    return lambda n: (0.0, n)


def check_validation_labels(rows: list[LabelledRow], labels: LabelSet) -> None:
    """A validation label the model cannot predict would be scored as always wrong: refuse it, naming the row."""
    if labels.problem_type == "regression":
        return
    known = set(labels.names)
    for row in rows:
        bad = [n for n in _names(row.label) if n not in known]
        if bad:
            raise DataError(f"{row.where}: the validation label {bad[0]!r} does not occur in the training data "
                            f"(classes: {', '.join(labels.names)}).",
                            "Add training rows with that label, fix the validation row, or list every class in "
                            "model.labels.")


def label_set_for(model: ModelConfig, data: DataConfig) -> LabelSet:
    """The label set a run trains with, read from the training files (the model is built from it)."""
    from .data.readers import _require_train_files

    rows = read_labelled_rows(data, _require_train_files(data), "train_files", model.problem_type)
    if not rows:
        raise DataError("The training files have no usable rows.", _LABEL_HINT)
    # model.num_labels is not compared: the label set decides it (run.toml records the count found), and a copied
    # configuration cannot tell a count the user wrote from the default
    return discover_labels(rows, model.problem_type, model.labels)


def inspect_labels(model: ModelConfig, data: DataConfig) -> dict[str, Any]:
    """What the window's Data tab shows for a classification run: ``{"labels": LabelSet, "train_rows",
    "validation_rows", "columns", "samples"}`` (``columns``: those of the first training file, for the role mapping;
    ``samples``: the first rows as (text, label, where)). Raises the
    ``DataError`` training would raise (a bad label, a single class, a validation label not in training)."""
    from .data.readers import _iter_records, _open_source, _require_train_files

    files = _require_train_files(data)
    first = next((r.data for r in _iter_records(_open_source(files[0], "train_files")) if r.data), None) or {}
    unmapped = [f"'{column}' for the {role}" for role, column in
                (("text", data.columns.get("text", "text")), ("label", data.columns.get("label", "label")))
                if first and column not in first]
    if unmapped:  # not an error yet: the tab offers the file's columns to map
        return {"labels": None, "train_rows": 0, "validation_rows": 0, "columns": list(first), "samples": [],
                "problem": f"{Path(files[0]).name} has no column {', nor '.join(unmapped)}: choose the columns below "
                           f"(the file has {', '.join(map(str, first))})."}
    rows = read_labelled_rows(data, files, "train_files", model.problem_type)
    if not rows:
        raise DataError("The training files have no usable rows.", _LABEL_HINT)
    labels = discover_labels(rows, model.problem_type, model.labels)
    validation = read_labelled_rows(data, data.validation_files, "validation_files", model.problem_type)
    check_validation_labels(validation, labels)
    samples = [(r.text if r.text_pair is None else f"{r.text}\n{r.text_pair}", r.label, r.where) for r in rows[:5]]
    return {"labels": labels, "train_rows": len(rows), "validation_rows": len(validation), "columns": list(first),
            "samples": samples}


def apply_to_model_config(hf_config: Any, labels: LabelSet) -> None:
    """Write the label set into a transformers model configuration before the model is built from it."""
    hf_config.num_labels = labels.num_labels
    hf_config.id2label = labels.id2label
    hf_config.label2id = labels.label2id
    hf_config.problem_type = TRANSFORMERS_PROBLEM_TYPES[labels.problem_type]


# The head of *ForSequenceClassification models; PEFT's SEQ_CLS task trains and saves it in full (modules_to_save).
HEAD_MODULES = ("classifier", "score")


def configure_model(hf_config: Any, tokenizer: Any, labels: LabelSet) -> None:
    """The label set in the model configuration, and a padding token the model knows (a decoder's head reads the
    last token that is not padding, so the model must know which id pads)."""
    apply_to_model_config(hf_config, labels)
    ensure_pad_token(tokenizer)
    if getattr(hf_config, "pad_token_id", None) is None:
        hf_config.pad_token_id = tokenizer.pad_token_id


def freshly_initialised_modules(loading_info: dict[str, Any], module_names: Any) -> list[str]:
    """Modules outside the head whose weights the base checkpoint lacks (or has in another shape), so transformers
    initialised them at random: BERT's pooler when the base was saved as a masked LM, say. They must be trained
    and saved with the adapter like the head, or the adapter gives other logits on a freshly loaded base."""
    keys = [*loading_info.get("missing_keys", ()), *(k[0] for k in loading_info.get("mismatched_keys", ()))]
    modules = {key.rsplit(".", 1)[0] for key in keys}
    # Not the head itself nor anything inside it (ResNet's head is classifier.1 in a Sequential): the head is
    # saved whole, and PEFT cannot save a module inside another saved one.
    return sorted(m for m in modules if m in module_names and not set(m.split(".")) & set(HEAD_MODULES))


def write_label_file(folder: Path, labels: LabelSet) -> Path:
    path = Path(folder) / LABELS_FILE
    atomic_write_text(path, json.dumps(labels.to_json(), indent=2, ensure_ascii=False) + "\n")
    return path


def read_label_file(folder: Path) -> LabelSet | None:
    """The label set saved beside an adapter, or None for an adapter without one (a causal-LM adapter)."""
    path = Path(folder) / LABELS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    problem_type = data["problem_type"]
    id2label = {int(i): n for i, n in data["id2label"].items()}
    names = tuple(id2label[i] for i in sorted(id2label)) if problem_type != "regression" else ()
    return LabelSet(problem_type, names, dict(data.get("counts", {})))


# ------------------------------------------------------------------------------------------ tokenizing


def prepare_classification(model: ModelConfig, cfg: DataConfig, tokenizer: Any, labels: LabelSet, *,
                           seed: int = 42) -> ClassificationData:
    """Read, check and tokenize the training and validation rows (``validation_split`` when there are no
    validation files) for a classification head. Examples are truncated to ``data.max_length``, never packed."""
    from datasets import Dataset

    from .data.readers import _require_train_files

    train_rows = read_labelled_rows(cfg, _require_train_files(cfg), "train_files", model.problem_type)
    validation_rows = read_labelled_rows(cfg, cfg.validation_files, "validation_files", model.problem_type)
    train_rows, validation_rows = split_validation(train_rows, validation_rows, cfg, seed)
    check_validation_labels(validation_rows, labels)

    truncated = 0

    def encode(rows: list[LabelledRow]) -> "Dataset":
        nonlocal truncated
        texts = [r.text for r in rows]
        pairs = [r.text_pair for r in rows] if rows and rows[0].text_pair is not None else None
        full = tokenizer(texts, pairs, truncation=False)["input_ids"]
        truncated += sum(len(ids) > cfg.max_length for ids in full)
        encoded = dict(tokenizer(texts, pairs, truncation=True, max_length=cfg.max_length))
        encoded["labels"] = [_label_value(r.label, labels) for r in rows]
        return Dataset.from_dict(encoded)

    train = encode(train_rows)
    validation = encode(validation_rows) if validation_rows else None
    return ClassificationData(train, validation, labels, truncated)


def split_validation(train_rows: list[_Row], validation_rows: list[_Row], cfg: DataConfig,
                     seed: int) -> tuple[list[_Row], list[_Row]]:
    """Without validation files, ``validation_split`` holds out a seeded random share of the training rows."""
    if cfg.validation_files or cfg.validation_split <= 0:
        return train_rows, validation_rows
    import random

    order = list(range(len(train_rows)))
    random.Random(seed).shuffle(order)
    held = max(1, round(len(train_rows) * cfg.validation_split))
    if held >= len(train_rows):
        raise DataError(f"validation_split = {cfg.validation_split} leaves none of the {len(train_rows)} rows "
                        "for training.", "Lower data.validation_split or add rows.")
    return [train_rows[i] for i in sorted(order[held:])], [train_rows[i] for i in sorted(order[:held])]


def data_messages(data: ClassificationData) -> list[str]:
    """What the log says about classification data: rows, classes with their counts, the majority-class rate
    (the accuracy to beat) and truncation."""
    labels = data.labels
    lines = [f"{len(data.train)} training and {len(data.validation or [])} validation examples"]
    if labels.problem_type != "regression":
        counts = ", ".join(f"{name} {labels.counts.get(name, 0)}" for name in labels.names)
        lines.append(f"{labels.num_labels} classes ({labels.problem_type}): {counts}")
        share = labels.majority_share()
        if share is not None:
            lines.append(f"the commonest class is {share:.0%} of the training rows: accuracy must beat that")
    if data.truncated:
        lines.append(f"{data.truncated} examples are longer than data.max_length and were cut to it")
    return lines


def resolved_model_fields(labels: LabelSet) -> dict[str, Any]:
    """The [model] fields a run records once its label set is known: the classes in id order."""
    if labels.problem_type == "regression":
        return {"labels": []}
    return {"labels": list(labels.names), "num_labels": labels.num_labels}


def _label_value(label: Any, labels: LabelSet) -> Any:
    if labels.problem_type == "regression":
        return float(label)
    ids = labels.label2id
    if labels.problem_type == "multi-label":
        hot = [0.0] * labels.num_labels  # BCE-with-logits targets: floats
        for name in label:
            hot[ids[name]] = 1.0
        return hot
    return ids[label]


def make_classification_collator(tokenizer: Any):
    """Dynamic padding to the longest example of each batch (transformers' ``DataCollatorWithPadding``)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def ensure_pad_token(tokenizer: Any) -> None:
    """Batches of several texts need padding; decoder tokenizers often have no pad token, so EOS stands in (the
    classification head of a decoder reads the last token that is not padding)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise DataError("The tokenizer has neither a padding nor an end-of-sequence token, so texts of different "
                            "lengths cannot be batched.", "Use a model whose tokenizer defines pad_token or eos_token.")
        tokenizer.pad_token = tokenizer.eos_token
