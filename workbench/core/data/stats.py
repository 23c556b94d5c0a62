"""Statistics of prepared data: token and loss-token counts, truncation, and the histogram of example lengths."""

from __future__ import annotations

import numpy as np

from .results import DataStats, LengthHistogram


def _stats(columns: dict[str, np.ndarray], keep: np.ndarray, rows: int, skipped: int, without_loss: int,
           max_length: int) -> DataStats:
    full = columns["full_length"][keep]
    tokens = int(columns["length"][keep].sum())
    loss_tokens = int(columns["loss_tokens"][keep].sum())
    truncated = int((full > max_length).sum())
    width = max(1, -(-int(full.max()) // 20))  # at most 20 bins of equal, whole-token width
    edges = np.arange(0, int(full.max()) + width, width)
    counts, _ = np.histogram(full, bins=edges)
    return DataStats(
        examples=len(full), rows=rows, tokens=tokens, loss_tokens=loss_tokens, loss_share=loss_tokens / tokens,
        truncated=truncated, truncated_share=truncated / len(full), skipped=skipped, without_loss=without_loss,
        max_length=max_length, length_histogram=LengthHistogram(edges.tolist(), counts.tolist()),
    )
