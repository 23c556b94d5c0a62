"""Module names as people read them: numbers in order (``layers.2`` before ``layers.10``) and short kind labels
(``q`` for ``self_attn.q_proj``) where a narrow axis or a map's row header has room for a few characters only."""

from __future__ import annotations

import re

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key comparing runs of digits as numbers: "layers.2" < "layers.10" (plain sorting puts 10 first)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower())
                 for part in _DIGITS.split(text) if part)


def short_kind_labels(kinds: list[str]) -> list[str]:
    """The last part of each module kind without the "_proj" most architectures append ("self_attn.q_proj" →
    "q"); a kind whose short form another kind shares gets a longer one ("attn.c_proj" beside "mlp.c_proj")."""
    def forms(kind: str) -> list[str]:
        last = kind.rsplit(".", 1)[-1]
        return [re.sub(r"_?proj$", "", last) or last, last, kind]

    levels = [0] * len(kinds)
    while True:
        labels = [forms(k)[level] for k, level in zip(kinds, levels)]
        clashing = [i for i, label in enumerate(labels) if labels.count(label) > 1 and levels[i] < 2]
        if not clashing:
            return labels
        for i in clashing:
            levels[i] += 1
