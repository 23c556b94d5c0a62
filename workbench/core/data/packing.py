"""Packing examples into rows of at most ``max_length`` tokens, and which architectures keep packed examples apart.

Packing
    With ``packing = true`` examples are packed best-fit-decreasing into rows of at most ``max_length`` tokens.
    A packed row carries ``position_ids`` that restart at 0 for every example, and the first label of every
    example is -100, so no token is trained to predict across a boundary. ``PackedCollator`` passes no
    attention mask and no KV cache: for the architectures in ``PADDING_FREE_MODEL_TYPES`` transformers then
    builds a block-diagonal causal mask from the position ids, so examples never attend to each other and the
    loss equals the unpacked loss (tests/core/test_data.py checks every listed type with sdpa and eager
    attention). Other architectures (OPT, Falcon, Bloom, MPT...) ignore those boundaries; ``prepare`` then
    trains unpacked and says so.
"""

from __future__ import annotations

import numpy as np

# Model types whose attention honours example boundaries given only by restarting position_ids (the model
# passes position_ids to transformers' create_causal_mask, which then builds a per-example causal mask).
# Each one is verified on a tiny model by tests/core/test_data.py (packed loss == unpacked loss). Known not to
# work in transformers 5.23: opt (positions and mask come from the attention mask), falcon, bloom, mpt (alibi).
PADDING_FREE_MODEL_TYPES = frozenset({
    "cohere", "gemma", "gemma2", "gemma3_text", "gpt2", "gpt_bigcode", "gpt_neox", "granite", "llama", "mistral",
    "mixtral", "olmo2", "phi", "phi3", "qwen2", "qwen2_moe", "qwen3", "smollm3", "stablelm", "starcoder2",
})
_PACK_CHUNK = 10_000  # examples packed together; a larger chunk packs a little tighter and holds more in memory


def supports_padding_free(model_type: str) -> bool:
    """Whether packed rows (restarting ``position_ids``, no attention mask) keep examples apart in this model."""
    return model_type in PADDING_FREE_MODEL_TYPES


def _pack_rows(batch: dict[str, list], capacity: int) -> dict[str, list]:
    """``Dataset.map`` function (numpy format): pack a chunk of examples into rows of at most ``capacity`` tokens."""
    lengths = [int(n) for n in batch["length"]]
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
    for members in _best_fit_decreasing(lengths, capacity):
        out["input_ids"].append(np.concatenate([batch["input_ids"][i] for i in members]))
        # Each example's first label is already -100, so no token learns to predict across a boundary.
        out["labels"].append(np.concatenate([batch["labels"][i] for i in members]))
        out["position_ids"].append(np.concatenate([np.arange(lengths[i], dtype=np.int32) for i in members]))
        out["length"].append(sum(lengths[i] for i in members))
    return out


def _best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of example indices: longest examples first, each into the fullest row it still fits in.
    Rows end up nearly full, which matters because a batch is padded to its longest row."""
    rows: list[list[int]] = []
    by_space: dict[int, list[int]] = {}  # free space → rows with exactly that much room
    spaces = _FreeSpaces(capacity)
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):  # stable: ties keep the data order
        need = lengths[i]
        space = spaces.smallest_at_least(need)
        if space is None:
            row = len(rows)
            rows.append([i])
            free = capacity - need
        else:
            row = by_space[space].pop()
            if not by_space[space]:
                del by_space[space]
                spaces.set(space, False)
            rows[row].append(i)
            free = space - need
        if free > 0:
            by_space.setdefault(free, []).append(row)
            spaces.set(free, True)
    return rows


class _FreeSpaces:
    """The set of free-space amounts (1..capacity) some row has, answering "smallest amount ≥ n" in
    O(log capacity): a max segment tree whose leaf s holds s while present, else 0."""

    def __init__(self, capacity: int):
        self.leaves = 1 << capacity.bit_length()  # > capacity
        self.tree = [0] * (2 * self.leaves)

    def set(self, space: int, present: bool) -> None:
        node = self.leaves + space
        self.tree[node] = space if present else 0
        node //= 2
        while node:
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])
            node //= 2

    def smallest_at_least(self, n: int) -> int | None:
        if self.tree[1] < n:
            return None
        node = 1
        while node < self.leaves:  # the leftmost leaf holding ≥ n holds the smallest such amount
            node = 2 * node if self.tree[2 * node] >= n else 2 * node + 1
        return self.tree[node]
