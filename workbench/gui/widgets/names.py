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
    "q"), falling back to longer forms where two kinds would read the same."""
    def shortest(kind: str) -> list[str]:
        last = kind.rsplit(".", 1)[-1]
        stripped = re.sub(r"_?proj$", "", last) or last
        return [stripped, last, kind]

    for level in range(3):
        labels = [shortest(k)[level] for k in kinds]
        if len(set(labels)) == len(labels):
            return labels
    return list(kinds)
