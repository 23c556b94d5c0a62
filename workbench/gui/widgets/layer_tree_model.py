"""Qt item model over ``core.layers.LayerTree``: the module tree with tristate checks and rank/alpha overrides.

The tree itself (names, types, shapes, parameter counts) stays in the core object; this adapter only maps
``LayerNode`` objects to rows. The user's choice — the set of selected module names and the per-module
rank / alpha overrides, all keyed by exact module name (what ``config.lora.target_modules``, ``rank_pattern``
and ``alpha_pattern`` receive) — lives in a ``LayerSelection``, which the block map shows too; this model
edits it and repaints what its ``changed`` signal names.

Only adaptable modules (Linear / Conv1D) carry their own selection. A parent's check state is derived from
the adaptable modules below it — checked, unchecked or partly checked — and setting it sets all of them.
Counts of selected descendants are kept per node and updated along the ancestor path of each change, so a
click costs O(depth), not O(tree), even for a 70B model.
"""

from __future__ import annotations

from typing import Any, Iterable

from PySide6.QtCore import QAbstractItemModel, QModelIndex, Qt, Signal
from PySide6.QtGui import QFont

from workbench.core.layers import LayerNode, LayerTree

from .selection import LayerSelection

COLUMNS = ("Module", "Type", "Shape", "Parameters", "LoRA parameters", "Rank", "Alpha")
COL_NAME, COL_TYPE, COL_SHAPE, COL_PARAMS, COL_LORA, COL_RANK, COL_ALPHA = range(len(COLUMNS))
NAME_ROLE = Qt.ItemDataRole.UserRole + 1  # full dotted module name of a row
_NCOLS = len(COLUMNS)
# The roles data() answers, as plain ints: a repaint asks each visible cell for seven roles, most of which
# (decoration, size hint, colours) the model leaves to the style; those return at once.
_DISPLAY, _EDIT = int(Qt.ItemDataRole.DisplayRole), int(Qt.ItemDataRole.EditRole)
_CHECK, _TOOLTIP = int(Qt.ItemDataRole.CheckStateRole), int(Qt.ItemDataRole.ToolTipRole)
_ALIGN, _FONT = int(Qt.ItemDataRole.TextAlignmentRole), int(Qt.ItemDataRole.FontRole)
_ANSWERED = frozenset({_DISPLAY, _EDIT, _CHECK, _TOOLTIP, _ALIGN, _FONT, int(NAME_ROLE)})
_RIGHT = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


class LayerTreeModel(QAbstractItemModel):
    selectionChanged = Signal()  # the set of selected modules or an override changed (edited or loaded)

    def __init__(self, tree: LayerTree, rank: int = 16, alpha: float = 32.0, parent=None,
                 selection: LayerSelection | None = None):
        super().__init__(parent)
        self.tree = tree
        self.selection = selection or LayerSelection(tree, rank, alpha, self)
        self.selection.changed.connect(self._selection_changed)
        self._parent: dict[str, LayerNode | None] = {tree.root.name: None}
        self._row: dict[str, int] = {tree.root.name: 0}
        self._adaptable_below: dict[str, int] = {}
        self._selected_below: dict[str, int] = {}
        self._lora_cache: dict[str, int] = {}
        self._index_nodes(tree.root)

    # The selection's state, read through (the model keeps no copy of it).
    @property
    def selected(self) -> set[str]:
        return self.selection.selected

    @property
    def rank_overrides(self) -> dict[str, int]:
        return self.selection.rank_overrides

    @property
    def alpha_overrides(self) -> dict[str, float]:
        return self.selection.alpha_overrides

    @property
    def _rank(self) -> int:
        return self.selection.rank

    @property
    def _alpha(self) -> float:
        return self.selection.alpha

    def _index_nodes(self, node: LayerNode) -> int:
        count = 1 if node.adaptable else 0
        for row, child in enumerate(node.children):
            self._parent[child.name] = node
            self._row[child.name] = row
            count += self._index_nodes(child)
        self._adaptable_below[node.name] = count
        self._selected_below[node.name] = 0
        return count

    # -- structure ------------------------------------------------------------------------------------
    def node(self, index: QModelIndex) -> LayerNode:
        return index.internalPointer() if index.isValid() else self.tree.root

    def index(self, row: int, column: int, parent: QModelIndex = QModelIndex()) -> QModelIndex:
        # The bounds checked here rather than by hasIndex(): that calls rowCount() and columnCount() back
        # through Python, and a repaint of the tree asks for ~2,700 indexes.
        if parent.isValid():
            if parent.column() != 0:
                return QModelIndex()
            children = parent.internalPointer().children
        else:
            children = self.tree.root.children
        if 0 <= row < len(children) and 0 <= column < _NCOLS:
            return self.createIndex(row, column, children[row])
        return QModelIndex()

    def parent(self, index: QModelIndex = QModelIndex()) -> QModelIndex:  # type: ignore[override]
        if not index.isValid():
            return QModelIndex()
        up = self._parent[index.internalPointer().name]
        if up is None or up is self.tree.root:
            return QModelIndex()
        return self.createIndex(self._row[up.name], 0, up)

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:
        if parent.column() > 0:
            return 0
        return len(self.node(parent).children)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:
        return len(COLUMNS)

    def parent_of(self, name: str) -> LayerNode | None:
        """The node one level up (the root for a top-level module, None for the root)."""
        return self._parent[name]

    def index_of(self, name: str, column: int = 0) -> QModelIndex:
        node = self.tree.nodes[name]
        return self.createIndex(self._row[name], column, node)

    # -- display --------------------------------------------------------------------------------------
    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole and 0 <= section < len(COLUMNS):
            return COLUMNS[section]
        return None

    def flags(self, index: QModelIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        node = self.node(index)
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if index.column() == COL_NAME and self._adaptable_below[node.name]:
            flags |= Qt.ItemFlag.ItemIsUserCheckable
        if index.column() in (COL_RANK, COL_ALPHA) and node.adaptable and node.name in self.selected:
            flags |= Qt.ItemFlag.ItemIsEditable
        return flags

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role not in _ANSWERED or not index.isValid():
            return None
        node, col = index.internalPointer(), index.column()
        if role == _DISPLAY:
            return self._cell(node, col, edit=False)
        if role == _CHECK:
            return self.check_state(node.name) if col == COL_NAME and self._adaptable_below[node.name] else None
        if role == NAME_ROLE:
            return node.name
        if role == _ALIGN:
            return _RIGHT if col >= COL_PARAMS else None
        if role == _FONT:
            if col in (COL_RANK, COL_ALPHA):
                overrides = self.rank_overrides if col == COL_RANK else self.alpha_overrides
                if node.name in overrides:  # an override stands out from the global value
                    font = QFont()
                    font.setBold(True)
                    return font
            return None
        if role == _TOOLTIP:
            if col == COL_NAME:
                return node.name
            if col in (COL_RANK, COL_ALPHA) and node.name in self.selected:
                return "Double-click to override for this module; clear the cell to use the global value."
            if col == COL_TYPE and node.quantized:
                return quantized_tooltip(node)
            return None
        return self._cell(node, col, edit=True)  # EditRole

    def _cell(self, node: LayerNode, col: int, edit: bool) -> Any:
        if col == COL_NAME:
            return node.short
        if col == COL_TYPE:  # a quantized base's modules say what they are held in (core.quantization.mark_tree)
            return f"{node.type} · {node.quantized}" if node.quantized else node.type
        if col == COL_SHAPE:
            return " × ".join(str(d) for d in node.shape) if node.shape else ""
        if col == COL_PARAMS:
            return human_count(node.params)
        if col == COL_LORA:
            lora = self._lora_params_below(node)
            return human_count(lora) if lora else ""
        if not node.adaptable or node.name not in self.selected:
            return ""
        if col == COL_RANK:
            value = self.rank_overrides.get(node.name)
            return ("" if edit else str(self._rank)) if value is None else str(value)
        if col == COL_ALPHA:
            value = self.alpha_overrides.get(node.name)
            return ("" if edit else f"{self._alpha:g}") if value is None else f"{value:g}"
        return None

    def _lora_params_below(self, node: LayerNode) -> int:
        # Memoised: the view asks for every visible row on each repaint; any edit clears the cache.
        cached = self._lora_cache.get(node.name)
        if cached is not None:
            return cached
        if node.adaptable:
            value = node.lora_params(self.rank_overrides.get(node.name, self._rank)) if node.name in self.selected else 0
        elif not self._selected_below[node.name]:
            value = 0
        else:
            value = sum(self._lora_params_below(c) for c in node.children)
        self._lora_cache[node.name] = value
        return value

    def check_state(self, name: str) -> Qt.CheckState:
        chosen, total = self._selected_below[name], self._adaptable_below[name]
        if chosen == 0:
            return Qt.CheckState.Unchecked
        return Qt.CheckState.Checked if chosen == total else Qt.CheckState.PartiallyChecked

    # -- editing --------------------------------------------------------------------------------------
    def setData(self, index: QModelIndex, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if not index.isValid():
            return False
        node, col = self.node(index), index.column()
        if role == Qt.ItemDataRole.CheckStateRole and col == COL_NAME:
            checked = Qt.CheckState(value) != Qt.CheckState.Unchecked
            names = [n.name for n in node.walk() if n.adaptable]
            self.set_selected(names, checked)
            return True
        if role == Qt.ItemDataRole.EditRole and col in (COL_RANK, COL_ALPHA) and node.adaptable:
            return self._set_override(node.name, col, str(value).strip())
        return False

    def _set_override(self, name: str, col: int, text: str) -> bool:
        rank = col == COL_RANK
        if not text:
            self.selection.set_override(name, clear_rank=rank, clear_alpha=not rank)
            return True
        try:
            number = int(text) if rank else float(text)
        except ValueError:
            return False
        if number <= 0:  # a rank of 0 or a negative alpha is refused, as the config would refuse it
            return False
        if rank:
            self.selection.set_override(name, rank=int(number))
        else:
            self.selection.set_override(name, alpha=float(number))
        return True

    # Edits, as the tools and tests make them: each is the user's, so the configuration follows.
    def set_selected(self, names: Iterable[str], checked: bool) -> None:
        """Select or deselect the given adaptable modules (non-adaptable names are ignored)."""
        self.selection.set_selected(names, checked)

    def replace_selection(self, names: Iterable[str]) -> None:
        self.selection.replace(names)

    def set_overrides(self, ranks: dict[str, int], alphas: dict[str, float]) -> None:
        self.selection.set_overrides(ranks, alphas)

    def set_defaults(self, rank: int, alpha: float) -> None:
        """The global rank/alpha from the settings form: shown in un-overridden rows and in LoRA parameters."""
        self.selection.set_defaults(rank, alpha)

    def set_quantization(self, model_config) -> None:
        """Mark the modules a run with these ``model.*`` settings holds quantized, with their stored size
        (``core.quantization.mark_tree``), and repaint the Type cells. Selection and counts are untouched: the
        trainable parameters of a quantized base are the same."""
        from workbench.core.quantization import mark_tree

        before = {name: (node.quantized, node.stored_bytes) for name, node in self.tree.nodes.items()}
        mark_tree(self.tree, model_config)
        if any((node.quantized, node.stored_bytes) != before[name] for name, node in self.tree.nodes.items()):
            # One repaint of every row (a whole-model change); no persistent index moves.
            self.layoutAboutToBeChanged.emit()
            self.layoutChanged.emit()

    def _selection_changed(self, added: list[str], removed: list[str], touched: list[str]) -> None:
        """Keep the per-node counts of selected modules below (for the tristate checks), then repaint."""
        for names, step in ((added, 1), (removed, -1)):
            for name in names:
                node: LayerNode | None = self.tree.nodes[name]
                while node is not None:
                    self._selected_below[node.name] += step
                    node = self._parent[node.name]
        if touched:
            self._changed(touched)

    def _changed(self, names: list[str]) -> None:
        """Repaint the changed rows and every ancestor (their check state and LoRA sums moved too).

        One ``dataChanged`` per parent, spanning its changed rows: a preset on an 80-block model touches
        ~1,600 rows, and one signal per row costs the GUI thread more than the whole rest of the update.
        """
        self._lora_cache.clear()
        rows_by_parent: dict[str, list[int]] = {}
        seen: set[str] = set()
        for name in names:
            node: LayerNode | None = self.tree.nodes[name]
            while node is not None and node is not self.tree.root and node.name not in seen:
                seen.add(node.name)
                parent = self._parent[node.name]
                rows_by_parent.setdefault(parent.name, []).append(self._row[node.name])
                node = parent
        last_column = len(COLUMNS) - 1
        for parent_name, rows in rows_by_parent.items():
            parent = self.tree.nodes[parent_name] if parent_name else self.tree.root
            first, last = min(rows), max(rows)
            parent_index = QModelIndex() if parent is self.tree.root else self.index_of(parent_name)
            self.dataChanged.emit(self.index(first, 0, parent_index), self.index(last, last_column, parent_index))
        self.selectionChanged.emit()


def quantized_tooltip(node: LayerNode) -> str:
    """What a quantized module costs as stored, against the same weights in 16 bits."""
    from .summary_bar import human_bytes

    weights = node.in_features * node.out_features
    bits = 8 * node.stored_bytes / weights if weights else 0.0
    return (f"Held in {node.quantized} while training: {human_bytes(node.stored_bytes)} as stored "
            f"({bits:.2f} bits per weight with its scales), against {human_bytes(2 * weights)} in bfloat16. "
            "The adapter trains in full precision; merges use the original weights.")
