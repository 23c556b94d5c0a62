"""What an adapter changes, module by module: ``||ΔW||_F``, its singular values and effective rank, and with the
base model ``||W||_F`` — the numbers behind ``workbench inspect-adapter`` and the window's heatmap.

``ΔW = s · B @ A`` (GUIDE §1) is never formed: its singular values are those of a small r × r core
(``lowrank_singular_values``), and the base weights are read one tensor at a time.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.core.adapters import LoraAdapter, check_adapter, load_adapter
from workbench.core.base_model import BaseCheckpoint, open_base_model
from workbench.core.events import Progress, SinkLike, as_sink

__all__ = [
    "lowrank_singular_values",
    "effective_rank",
    "ModuleStats",
    "Heatmap",
    "HEATMAP_METRICS",
    "AdapterReport",
    "inspect_adapter",
]


def lowrank_singular_values(lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> torch.Tensor:
    """Singular values of ``ΔW = scale · B @ A`` (descending, float64) without forming ΔW.

    With ``Aᵀ = Q_A R_A`` and ``B = Q_B R_B`` (thin QR, Q with orthonormal columns),
    ``ΔW = Q_B (scale · R_B R_Aᵀ) Q_Aᵀ``; multiplying by matrices with orthonormal columns keeps singular
    values, so ΔW has those of the small r × r core. Cost O((in + out) r²) instead of O(out · in · min).
    """
    _, r_a = torch.linalg.qr(lora_A.double().T)
    _, r_b = torch.linalg.qr(lora_B.double())
    return torch.linalg.svdvals(scale * (r_b @ r_a.T))


def effective_rank(singular_values: torch.Tensor, energy: float = 0.9) -> int:
    """How many singular values carry ``energy`` of ``||ΔW||_F² = Σ σᵢ²``; 0 for ΔW = 0."""
    power = singular_values.double() ** 2
    total = float(power.sum())
    if total == 0.0:
        return 0
    cumulative = torch.cumsum(power, 0) / total
    return int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=torch.float64) - 1e-12)) + 1


_BLOCK = re.compile(r"^(?P<stack>.*?)\.(?P<index>\d+)\.(?P<kind>.+)$")


@dataclass(frozen=True)
class ModuleStats:
    """What the adapter does to one layer. All numbers are of ``ΔW = s · B @ A``; for DoRA this is the
    directional update, before the learned magnitude rescales each output row."""

    name: str
    stack: str | None  # "model.layers" for "model.layers.3.self_attn.q_proj"; None outside numbered blocks
    block: int | None  # 3
    kind: str  # "self_attn.q_proj" (the whole name outside blocks)
    rank: int
    scale: float
    delta_norm: float  # ||ΔW||_F
    weight_norm: float | None  # ||W||_F, when the base model was given
    singular_values: tuple[float, ...]
    effective_rank: int  # singular values carrying 90 % of the energy

    @property
    def relative_norm(self) -> float | None:
        """``||ΔW||_F / ||W||_F``: how large the change is compared to the weight it changes."""
        if self.weight_norm is None or self.weight_norm == 0.0:
            return None
        return self.delta_norm / self.weight_norm

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "singular_values": list(self.singular_values),
                "relative_norm": self.relative_norm}


@dataclass(frozen=True)
class Heatmap:
    """One metric over blocks × module kinds: ``values[i][j]`` belongs to ``blocks[i]`` and ``kinds[j]``
    (None where that block has no adapter of that kind). Modules outside numbered blocks are left out."""

    metric: str
    blocks: list[int]
    kinds: list[str]
    values: list[list[float | None]]


HEATMAP_METRICS = ("relative_norm", "delta_norm", "effective_rank")


@dataclass(frozen=True)
class AdapterReport:
    adapter: str
    base: str | None
    method: str
    modules: list[ModuleStats]

    def heatmap(self, metric: str = "relative_norm") -> Heatmap:
        """Grid for the window's heatmap. A model with several numbered stacks (encoder and decoder) gets
        one column per stack and kind, so no two modules share a cell."""
        if metric not in HEATMAP_METRICS:
            raise ValueError(f"metric must be one of {HEATMAP_METRICS}, not {metric!r}")
        in_blocks = [m for m in self.modules if m.block is not None]
        several = len({m.stack for m in in_blocks}) > 1
        label = (lambda m: f"{m.stack}.{m.kind}") if several else (lambda m: m.kind)
        blocks = sorted({m.block for m in in_blocks})
        kinds = list(dict.fromkeys(label(m) for m in in_blocks))
        values: list[list[float | None]] = [[None] * len(kinds) for _ in blocks]
        for m in in_blocks:
            values[blocks.index(m.block)][kinds.index(label(m))] = getattr(m, metric)
        return Heatmap(metric, blocks, kinds, values)

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "base": self.base, "method": self.method,
                "modules": [m.to_dict() for m in self.modules]}


def inspect_adapter(adapter: str | Path | LoraAdapter, base: str | Path | BaseCheckpoint | None = None,
                    *, sink: SinkLike = None) -> AdapterReport:
    """Per adapted module: ``||ΔW||_F``, its singular values and effective rank, and with a base model
    ``||W||_F`` (read one tensor at a time, after checking that the adapter fits)."""
    lora = adapter if isinstance(adapter, LoraAdapter) else load_adapter(adapter)
    fit = None
    if base is not None:
        fit = check_adapter(lora, base if isinstance(base, BaseCheckpoint) else open_base_model(base))
    sink = as_sink(sink)
    names = list(lora.modules)  # natural order of names, the best guess without the model
    if fit is not None:
        names.sort(key=fit.base.module_order.__getitem__)
    stats = []
    for i, name in enumerate(names):
        mod = lora.modules[name]
        sv = lowrank_singular_values(mod.lora_A, mod.lora_B, mod.scale)
        weight_norm = None
        if fit is not None:
            weight = fit.base.read(fit.base.stored_key(fit.targets[name].weight_key))
            weight_norm = float(torch.linalg.vector_norm(weight.double()))
            sink.emit(Progress("inspect", i + 1, len(names), unit="modules", detail=name))
        m = _BLOCK.match(name)
        stats.append(ModuleStats(
            name=name,
            stack=m["stack"] if m else None,
            block=int(m["index"]) if m else None,
            kind=m["kind"] if m else name,
            rank=mod.rank,
            scale=mod.scale,
            delta_norm=float(torch.linalg.vector_norm(sv)),
            weight_norm=weight_norm,
            singular_values=tuple(float(s) for s in sv),
            effective_rank=effective_rank(sv),
        ))
    return AdapterReport(str(lora.path), str(fit.base.path) if fit else None, lora.method, stats)
