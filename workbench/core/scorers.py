"""Task metrics: how good the generated answers are, not only how low the loss is.

Each scorer compares a generated completion with the reference completion of a validation row and gives a
number in [0, 1] per row; the metric is the mean over the rows scored. They are plain functions, so they are
tested on hand-made predictions with known answers, and run the same during training (``core/evaluation.py``)
and afterwards.

``exact_match``   the completion equals the reference after trimming whitespace (and, with ``normalize``,
                  case and inner runs of whitespace).
``regex``         the completion matches ``[eval] regex`` (a task-specific answer format: "^Answer: [A-D]$").
``json_valid``    the completion is one JSON value (the first line, when the model rambles on after it).
``json_exact``    the completion, trimmed, is one JSON value equal to the reference's (same keys, same values; key
                  order and spacing do not matter): the demo's "exactly right". Nothing may follow it.
``json_fields``   the share of the reference JSON object's fields the completion's JSON object has with the
                  same value (0 for a completion that is not a JSON object): partial credit where exact match
                  gives none — the demo's task.
``label``         the first word of the completion equals the reference label (classification as generation).
``perplexity``    exp(evaluation loss), from the loss the evaluation computes anyway (no generation).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Sequence

__all__ = ["SCORERS", "GENERATIVE_SCORERS", "exact_match", "regex_match", "json_valid", "json_exact", "json_fields", "label_match",
           "perplexity", "score_all", "parse_json"]


def _norm(text: str, normalize: bool) -> str:
    text = text.strip()
    return re.sub(r"\s+", " ", text).casefold() if normalize else text


def exact_match(prediction: str, reference: str, *, normalize: bool = False) -> float:
    return float(_norm(prediction, normalize) == _norm(reference, normalize))


def regex_match(prediction: str, reference: str, *, pattern: str) -> float:
    return float(re.search(pattern, prediction.strip()) is not None)


def parse_json(text: str) -> tuple[bool, Any]:
    """(True, value) when ``text`` — or its first non-empty line — is one JSON value; else (False, None)."""
    text = text.strip()
    for candidate in (text, text.split("\n", 1)[0].strip()):
        if not candidate:
            continue
        try:
            return True, json.loads(candidate)
        except (ValueError, RecursionError):
            continue
    return False, None


def json_valid(prediction: str, reference: str) -> float:
    return float(parse_json(prediction)[0])


def json_exact(prediction: str, reference: str) -> float:
    """1.0 when the whole trimmed completion is one JSON value equal to the reference's JSON value. Unlike
    ``json_valid`` it does not forgive words after the value: an extractor's output must be the record alone."""
    try:
        want = json.loads(reference.strip())
        got = json.loads(prediction.strip())
    except (ValueError, RecursionError):
        return 0.0
    return float(type(got) is type(want) and got == want)


def json_fields(prediction: str, reference: str) -> float:
    ok_ref, ref = parse_json(reference)
    if not ok_ref or not isinstance(ref, dict) or not ref:
        return exact_match(prediction, reference)  # not a JSON task after all: fall back to exact match
    ok, value = parse_json(prediction)
    if not ok or not isinstance(value, dict):
        return 0.0
    return sum(1 for key, want in ref.items() if key in value and value[key] == want) / len(ref)


def label_match(prediction: str, reference: str) -> float:
    words = prediction.strip().split()
    first = words[0].strip(".,:;!?\"'").casefold() if words else ""
    return float(first == reference.strip().casefold())


def perplexity(eval_loss: float) -> float:
    """exp(loss), capped where it overflows (a loss of 710+ means the model assigns the answers no probability)."""
    return math.exp(eval_loss) if eval_loss < 709 else math.inf


SCORERS: dict[str, Callable[..., float]] = {
    "exact_match": exact_match,
    "regex": regex_match,
    "json_valid": json_valid,
    "json_exact": json_exact,
    "json_fields": json_fields,
    "label": label_match,
}
GENERATIVE_SCORERS = frozenset(SCORERS)  # perplexity needs no generation: it comes with the evaluation loss


def score_all(names: Sequence[str], predictions: Sequence[str], references: Sequence[str], *,
              regex: str | None = None, normalize: bool = False) -> dict[str, float]:
    """The mean of every generative scorer in ``names`` over the rows (``{name: value}``)."""
    if len(predictions) != len(references):
        raise ValueError("one prediction per reference")
    results = {}
    for name in names:
        if name not in SCORERS:
            continue
        fn = SCORERS[name]
        kwargs: dict[str, Any] = {}
        if name == "regex":
            kwargs["pattern"] = regex or ""
        elif name == "exact_match":
            kwargs["normalize"] = normalize
        values = [fn(p, r, **kwargs) for p, r in zip(predictions, references)]
        results[name] = sum(values) / len(values) if values else math.nan
    return results
