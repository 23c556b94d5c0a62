"""The one owner of the layer choice: which modules get an adapter, and per-module rank / alpha overrides.

The tree view (``LayerTreeModel``) and the block map (``BlockMap``) are two views bound to one
``LayerSelection``; neither keeps a copy. Every change says what it touched (``changed``), so each view
repaints only that, and whether it was an *edit* — a user's click, preset or filter action — or a *load*
of a choice that already is the configuration's (a run file opened, a model re-opened, new global defaults).
Only edits emit ``edited``, which the window writes to the configuration. That distinction used to be a flag
the window set around its own calls (``_syncing_selection``); a flag forgotten on one path wrote the open
tree's ticks into a just-opened run file meant for another model.
"""

from __future__ import annotations

from typing import Iterable

from PySide6.QtCore import QObject, Signal

from workbench.core.layers import LayerTree


class LayerSelection(QObject):
    # (selected now, deselected now, touched: every name whose row or cell shows something new)
    changed = Signal(list, list, list)
    edited = Signal()  # a change made by the user: the configuration should follow

    def __init__(self, tree: LayerTree, rank: int = 16, alpha: float = 32.0, parent=None):
        super().__init__(parent)
        self.tree = tree
        self.rank, self.alpha = rank, alpha  # the global values from the settings
        self.selected: set[str] = set()
        self.rank_overrides: dict[str, int] = {}
        self.alpha_overrides: dict[str, float] = {}

    # -- reading -------------------------------------------------------------------------------------------
    def rank_of(self, name: str) -> int:
        return self.rank_overrides.get(name, self.rank)

    def alpha_of(self, name: str) -> float:
        return self.alpha_overrides.get(name, self.alpha)

    def lora_params(self, name: str) -> int:
        """``r · (in + out)`` of one module if it is selected, else 0 (core.layers counts the same way)."""
        return self.tree.nodes[name].lora_params(self.rank_of(name)) if name in self.selected else 0

    def ordered(self) -> list[str]:
        """The selected names in model order (what the run file lists)."""
        return sorted(self.selected, key=self.tree._order)

    # -- changing ------------------------------------------------------------------------------------------
    def set_selected(self, names: Iterable[str], checked: bool, *, edit: bool = True) -> None:
        """Select or deselect these adaptable modules (other names are ignored); deselecting drops overrides."""
        flipped = []
        for name in names:
            if not self.tree.nodes[name].adaptable or (name in self.selected) == checked:
                continue
            (self.selected.add if checked else self.selected.discard)(name)
            if not checked:
                self.rank_overrides.pop(name, None)
                self.alpha_overrides.pop(name, None)
            flipped.append(name)
        if flipped:
            self._emit(flipped if checked else [], [] if checked else flipped, flipped, edit)

    def replace(self, names: Iterable[str], *, edit: bool = True) -> None:
        """Exactly these modules selected (one change, one signal)."""
        wanted = {n for n in names if n in self.tree.nodes and self.tree.nodes[n].adaptable}
        removed = sorted(self.selected - wanted, key=self.tree._order)
        added = sorted(wanted - self.selected, key=self.tree._order)
        for name in removed:
            self.rank_overrides.pop(name, None)
            self.alpha_overrides.pop(name, None)
        self.selected = wanted
        if added or removed:
            self._emit(added, removed, added + removed, edit)

    def set_override(self, name: str, rank: int | None = None, alpha: float | None = None, *,
                     clear_rank: bool = False, clear_alpha: bool = False, edit: bool = True) -> None:
        """One module's own rank and/or alpha (``clear_*``: back to the global value)."""
        if name not in self.selected:
            return
        before = (self.rank_overrides.get(name), self.alpha_overrides.get(name))
        if clear_rank:
            self.rank_overrides.pop(name, None)
        elif rank is not None:
            self.rank_overrides[name] = rank
        if clear_alpha:
            self.alpha_overrides.pop(name, None)
        elif alpha is not None:
            self.alpha_overrides[name] = alpha
        if (self.rank_overrides.get(name), self.alpha_overrides.get(name)) != before:
            self._emit([], [], [name], edit)

    def set_overrides(self, ranks: dict[str, int], alphas: dict[str, float], *, edit: bool = True) -> None:
        ranks = {k: v for k, v in ranks.items() if k in self.selected}
        alphas = {k: v for k, v in alphas.items() if k in self.selected}
        touched = {k for k in set(ranks) | set(self.rank_overrides) if ranks.get(k) != self.rank_overrides.get(k)}
        touched |= {k for k in set(alphas) | set(self.alpha_overrides) if alphas.get(k) != self.alpha_overrides.get(k)}
        self.rank_overrides, self.alpha_overrides = ranks, alphas
        if touched:
            self._emit([], [], sorted(touched, key=self.tree._order), edit)

    def load(self, names: Iterable[str], ranks: dict[str, int], alphas: dict[str, float]) -> None:
        """Show a choice that already is the configuration's: not an edit, so nothing is written back."""
        self.replace(names, edit=False)
        self.set_overrides(ranks, alphas, edit=False)

    def set_defaults(self, rank: int, alpha: float) -> None:
        """The global rank/alpha from the settings form (never an edit: they live in the form's own fields)."""
        if (rank, alpha) != (self.rank, self.alpha):
            self.rank, self.alpha = rank, alpha
            self._emit([], [], self.ordered(), edit=False)

    def _emit(self, added: list[str], removed: list[str], touched: list[str], edit: bool) -> None:
        self.changed.emit(added, removed, touched)
        if edit:
            self.edited.emit()
