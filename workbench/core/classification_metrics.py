"""``compute_metrics`` for classification runs: accuracy, macro F1 and the confusion matrix (single-label), micro
F1 and exact-match accuracy (multi-label), MSE and MAE (regression). ``classification`` re-exports it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .classification import LabelSet


class ClassificationMetrics:
    """``compute_metrics`` for the HF Trainer: accuracy, macro F1 and the confusion matrix (single-label), micro
    F1 and exact-match accuracy (multi-label), MSE and MAE (regression). The Trainer logs the numbers; the last
    confusion matrix is kept in ``confusion`` (rows: true class, columns: predicted) for the run folder."""

    def __init__(self, labels: LabelSet):
        self.labels = labels
        self.confusion: list[list[int]] | None = None

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        import numpy as np

        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        logits, truth = np.asarray(logits), np.asarray(eval_pred.label_ids)
        if self.labels.problem_type == "regression":
            error = logits.reshape(-1).astype(np.float64) - truth.reshape(-1)
            return {"mse": float(np.mean(error ** 2)), "mae": float(np.mean(np.abs(error)))}
        if self.labels.problem_type == "multi-label":
            chosen, wanted = logits > 0, truth > 0.5  # a class is predicted where sigmoid(logit) > 0.5
            return {"exact_match": float(np.mean(np.all(chosen == wanted, axis=1))),
                    "f1": _f1(int(np.sum(chosen & wanted)), int(np.sum(chosen & ~wanted)), int(np.sum(~chosen & wanted)))}
        return self.single_label(truth.astype(np.int64), logits.argmax(axis=-1))

    def single_label(self, truth: Any, predicted: Any) -> dict[str, float]:
        import numpy as np

        n = self.labels.num_labels
        confusion = np.bincount(truth * n + predicted, minlength=n * n).reshape(n, n)
        self.confusion = confusion.tolist()
        hits = np.diag(confusion)
        f1s = [_f1(int(hits[k]), int(confusion[:, k].sum() - hits[k]), int(confusion[k].sum() - hits[k]))
               for k in range(n) if confusion[k].sum() or confusion[:, k].sum()]  # classes absent from both: no F1
        return {"accuracy": float(hits.sum() / max(1, confusion.sum())), "f1": float(np.mean(f1s)) if f1s else 0.0}

    def confusion_text(self) -> str:
        """The confusion matrix as a small table for the log."""
        if self.confusion is None:
            return ""
        names = list(self.labels.names)
        width = max(5, *(len(n) for n in names))
        head = " " * width + " | " + " ".join(f"{n:>{width}}" for n in names)
        lines = [f"{names[i]:>{width}} | " + " ".join(f"{v:>{width}}" for v in row) for i, row in enumerate(self.confusion)]
        return "\n".join(["confusion matrix (rows: true class, columns: predicted)", head, *lines])


def _f1(true_pos: int, false_pos: int, false_neg: int) -> float:
    denominator = 2 * true_pos + false_pos + false_neg
    return 2 * true_pos / denominator if denominator else 0.0
