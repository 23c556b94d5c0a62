"""The knowledge-retention meter: what the base model knew, measured before, during and after training on data the
user did not train on (``[eval] retention = true``).

Two measures, both computed at every evaluation and relative to the base model itself (the adapter switched off):

* **general text**: the loss on a small reference text shipped with the app (``resources/retention/general.txt``:
  short statements of common knowledge, so it works offline) or on the user's own file (``eval.retention_file``,
  one text per line). ``retention_text_loss`` is the mean token loss now; ``retention_ppl_ratio`` is
  exp(loss now − loss of the base), 1.0 meaning nothing was forgotten, 1.2 a perplexity 20 % higher.
* **the base model's own answers**: the base answers general prompts (``resources/retention/prompts.txt``) once,
  greedily; ``retention_agreement`` is the share of those answer tokens the model now predicts the same
  (teacher-forced top-1), 1.0 for the base itself. This needs no data at all: it measures drift from the model's
  own distribution.

When agreement falls below ``eval.retention_warn_below`` (or perplexity rises by more than its inverse) a warning
names the mitigations that exist: fewer target modules or a lower rank (``workbench sweep`` shows the trade-off),
mixing general data into the training files, or stopping earlier (``eval.early_stopping_patience``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import DataError

__all__ = ["RetentionProbe", "reference_texts", "general_prompts"]

MAX_TEXTS = 256  # enough for a stable mean; the probe runs at every evaluation


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def reference_texts(user_file: str | None = None) -> list[str]:
    """The general reference texts: the user's file (one text per line) or the shipped set."""
    from .demo import resources_dir

    if user_file:
        path = Path(user_file).expanduser()
        try:
            texts = _lines(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"eval.retention_file {path}: cannot read it ({exc})",
                            "give a UTF-8 text file with one reference text per line") from None
        if not texts:
            raise DataError(f"eval.retention_file {path} holds no text", "put one reference text per line in it")
        return texts[:MAX_TEXTS]
    return _lines(resources_dir() / "retention" / "general.txt")[:MAX_TEXTS]


def general_prompts() -> list[str]:
    from .demo import resources_dir

    return _lines(resources_dir() / "retention" / "prompts.txt")


@dataclass
class RetentionProbe:
    texts: list[list[int]]  # token ids of each reference text
    answers: list[tuple[list[int], list[int]]]  # (prompt ids, the base model's own greedy answer ids)
    base_text_loss: float
    batch_size: int = 8

    @classmethod
    def build(cls, model: Any, tokenizer: Any, texts: Sequence[str], prompts: Sequence[str], *,
              max_new_tokens: int = 32, batch_size: int = 8) -> "RetentionProbe":
        """Tokenize the texts and let the *base* model (a PEFT model's adapter switched off) answer the prompts."""
        import torch

        from .evaluation import generate_answers, render_user_prompt

        encoded = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
        rendered = [render_user_prompt(tokenizer, p) for p in prompts]
        with _base_only(model):
            generated = generate_answers(model, tokenizer, rendered, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, token_ids=True)
            answers = [(tokenizer(prompt, add_special_tokens=False)["input_ids"], answer_ids)
                       for prompt, answer_ids in zip(rendered, generated) if answer_ids]
            probe = cls(encoded, answers, math.nan, batch_size)
            with torch.no_grad():
                probe.base_text_loss = probe.text_loss(model)
        return probe

    def text_loss(self, model: Any) -> float:
        """Mean token loss over the reference texts (every token after the first of each text)."""
        total, count = _token_losses(model, [(ids, 1) for ids in self.texts], self.batch_size)
        return total / max(count, 1)

    def agreement(self, model: Any) -> float:
        """The share of the base's own answer tokens the model predicts the same (teacher-forced top-1)."""
        hits, count = _token_agreement(model, self.answers, self.batch_size)
        return hits / max(count, 1)

    def measure(self, model: Any) -> dict[str, float]:
        import torch

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                loss = self.text_loss(model)
                agreement = self.agreement(model) if self.answers else math.nan
        finally:
            if was_training:
                model.train()
        ratio = math.exp(min(loss - self.base_text_loss, 700.0))
        return {"retention_text_loss": loss, "retention_ppl_ratio": ratio, "retention_agreement": agreement}


class _base_only:
    """The base model: a PEFT model's adapters switched off for the block (a plain model is its own base)."""

    def __init__(self, model: Any):
        self.context = model.disable_adapter() if hasattr(model, "disable_adapter") else None

    def __enter__(self) -> None:
        if self.context is not None:
            self.context.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.context is not None:
            self.context.__exit__(*exc)


def _batches(items: Sequence[Any], size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _padded(model: Any, sequences: Sequence[list[int]]):
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    device = next(model.parameters()).device
    return ids.to(device), mask.to(device)


def _token_losses(model: Any, items: Sequence[tuple[list[int], int]], batch_size: int) -> tuple[float, int]:
    """Summed cross-entropy and token count over the tokens of each sequence from its ``start`` on."""
    import torch

    total, count = 0.0, 0
    for batch in _batches([i for i in items if len(i[0]) > 1], batch_size):
        ids, mask = _padded(model, [seq for seq, _ in batch])
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        for row, (seq, start) in enumerate(batch):
            targets = ids[row, max(start, 1): len(seq)]
            predicted = logits[row, max(start, 1) - 1: len(seq) - 1]
            total += float(torch.nn.functional.cross_entropy(predicted, targets, reduction="sum"))
            count += int(targets.numel())
    return total, count


def _token_agreement(model: Any, answers: Sequence[tuple[list[int], list[int]]], batch_size: int) -> tuple[int, int]:
    hits = count = 0
    for batch in _batches(list(answers), batch_size):
        ids, mask = _padded(model, [p + a for p, a in batch])
        logits = model(input_ids=ids, attention_mask=mask).logits
        for row, (prompt, answer) in enumerate(batch):
            start = len(prompt)
            predicted = logits[row, start - 1: start - 1 + len(answer)].argmax(-1)
            targets = ids[row, start: start + len(answer)]
            hits += int((predicted == targets).sum())
            count += len(answer)
    return hits, count
