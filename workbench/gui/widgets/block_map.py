"""The block map: the whole layer choice at a glance, one row per module kind, one column per block.

Rows are read from the model's tree (``q_proj`` … ``down_proj`` for a Llama, ``c_attn`` … ``c_proj`` for GPT-2,
whatever the architecture has), never from a list here. A cell is filled when its module is adapted, darker
for a higher rank, with the rank written in it when there is room. Click a cell to toggle it, drag to paint
(every cell the drag crosses takes the state the first one took), click a row label or a block number to
toggle the whole row or column; hovering shows the module's shape, parameters and LoRA parameters.

For a trained adapter the map can instead be coloured by what changed (``show_change``: ‖ΔW‖/‖W‖ per module
from the Inspect tab's report, on the same grid), so "what I chose" and "what changed" are one picture; clicks
still edit the selection.

The map edits the same ``LayerSelection`` as the tree; it keeps no state of its own beyond the grid's layout,
and repaints when the selection says it changed, whoever changed it. It draws a few hundred rectangles (80
blocks × 7 kinds = 560: 4-8 ms of the GUI thread, 15-20 ms the first time) into a pixmap that later paints only
copy (a hover card, a window moved over it, the tree's repaints beside it): the cells are drawn again only when
what they show changes (the selection, the colouring, the size, the palette or the font).
"""

from __future__ import annotations

import shiboken6
from PySide6.QtCore import QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

from workbench.core.layers import LayerTree

from .layer_tree_model import human_count
from .names import short_kind_labels
from .selection import LayerSelection

ROW_HEIGHT = 20
HEADER_HEIGHT = 18
MIN_CELL_WIDTH = 4
MAX_CELL_WIDTH = 40
SELECTED = QColor(30, 100, 220)


class BlockGrid:
    """Which module sits in which cell: ``names[row][block]`` (None where a block has no such module)."""

    def __init__(self, tree: LayerTree):
        self.tree = tree
        self.prefix = tree.blocks_prefix or ""
        cells: dict[tuple[str, int], str] = {}
        kinds: list[str] = []
        blocks: set[int] = set()
        adaptable = tree.adaptable()
        if self.prefix:
            start = self.prefix + "."
            for node in adaptable:
                if not node.name.startswith(start):
                    continue
                index, _, kind = node.name[len(start):].partition(".")
                if not index.isdigit() or not kind:
                    continue
                if kind not in kinds:
                    kinds.append(kind)
                cells[(kind, int(index))] = node.name
                blocks.add(int(index))
        self.kinds = kinds
        self.labels = short_kind_labels(kinds)
        self.blocks = sorted(blocks)
        self.names: list[list[str | None]] = [[cells.get((k, b)) for b in self.blocks] for k in kinds]
        in_cells = set(cells.values())  # once: built per module, it made an 80-block grid cost ~20 ms
        self.outside = [n.name for n in adaptable if n.name not in in_cells]
        self.outside_set = frozenset(self.outside)
        self.cells = len(in_cells)

    def row(self, r: int) -> list[str]:
        return [n for n in self.names[r] if n]

    def column(self, c: int) -> list[str]:
        return [row[c] for row in self.names if row[c]]


class BlockMap(QWidget):
    hovered = Signal(str)  # the module under the pointer ("" when none)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.selection: LayerSelection | None = None
        self.grid: BlockGrid | None = None
        self.change: dict[str, float] = {}  # module → ‖ΔW‖/‖W‖ (or ‖ΔW‖) of an inspected adapter
        self.change_metric = ""
        self.colour_by_change = False
        self._label_width_for: tuple[object, int] = (None, 0)  # (grid and font it was measured for, width)
        self._drawn: QPixmap | None = None  # the cells as last drawn, and what they were drawn for
        self._drawn_for: tuple = ()
        self._paint_to: bool | None = None  # a drag's state: what every crossed cell becomes
        self._painted: set[str] = set()
        self.setMouseTracking(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("")

    # -- binding -----------------------------------------------------------------------------------------
    def set_selection(self, selection: LayerSelection | None) -> None:
        """Show ``selection`` (None: nothing). The grid is kept when ``set_grid`` made it for the same tree."""
        self._unbind()
        self.selection = selection
        if selection is None:
            self.grid = None
        elif self.grid is None or self.grid.tree is not selection.tree:
            self.grid = BlockGrid(selection.tree)
        if selection is not None:
            selection.changed.connect(self._selection_changed)
        self.updateGeometry()
        self.redraw()

    def set_grid(self, tree: LayerTree) -> None:
        """The grid of ``tree``, with no selection yet: the map takes its size (the window lays it out) and draws
        no cells, and clicks edit nothing, until ``set_selection`` gives it the selection of the same tree."""
        self._unbind()
        self.selection = None
        self.grid = BlockGrid(tree)
        self.updateGeometry()
        self.redraw()

    def _unbind(self) -> None:
        self._paint_to, self._painted = None, set()  # a drag begun on the previous selection ends here
        if self.selection is not None and shiboken6.isValid(self.selection):  # else gone with its model
            self.selection.changed.disconnect(self._selection_changed)

    def _selection_changed(self, *_names) -> None:
        self.redraw()

    def redraw(self) -> None:
        """What the cells show changed: draw them again at the next paint."""
        self._drawn = None
        self.update()

    def show_change(self, report) -> int:
        """Keep an adapter report's per-module change (``core.adapter_report.AdapterReport``): ‖ΔW‖/‖W‖ when it
        was measured against the base, else ‖ΔW‖. Returns how many of its modules are cells of this map (0: the
        adapter is for another model, and nothing is kept)."""
        metric = "relative_norm" if report.base else "delta_norm"
        values = {m.name: getattr(m, metric) for m in report.modules if getattr(m, metric) is not None}
        cells = {n for row in (self.grid.names if self.grid else []) for n in row if n}
        matched = len(cells & set(values))
        self.change = values if matched else {}
        self.change_metric = ("‖ΔW‖ / ‖W‖" if metric == "relative_norm" else "‖ΔW‖") if matched else ""
        if not matched:
            self.colour_by_change = False
        self.redraw()
        return matched

    def clear_change(self) -> None:
        self.change, self.change_metric, self.colour_by_change = {}, "", False
        self.redraw()

    def set_colour_by_change(self, on: bool) -> None:
        self.colour_by_change = bool(on and self.change)
        self.redraw()

    # -- geometry ----------------------------------------------------------------------------------------
    def _label_width(self) -> int:
        """The row labels' column, measured once per grid and font (it was measured for every cell painted, which
        made a repaint of 560 cells cost ~60 ms instead of ~1)."""
        key = (id(self.grid), self.font().key())
        if self._label_width_for[0] != key:
            width = (max(self.fontMetrics().horizontalAdvance(label) for label in self.grid.labels) + 12
                     if self.grid and self.grid.labels else 0)
            self._label_width_for = (key, width)
        return self._label_width_for[1]

    def cell_width(self) -> float:
        if not self.grid or not self.grid.blocks:
            return 0.0
        room = self.width() - self._label_width() - 4
        return max(MIN_CELL_WIDTH, min(MAX_CELL_WIDTH, room / len(self.grid.blocks)))

    def sizeHint(self) -> QSize:
        rows = len(self.grid.kinds) if self.grid else 0
        return QSize(600, HEADER_HEIGHT + rows * ROW_HEIGHT + 4)

    def minimumSizeHint(self) -> QSize:
        return QSize(200, self.sizeHint().height())

    def cell_rect(self, row: int, column: int, width: float | None = None, left: int | None = None) -> QRect:
        w = self.cell_width() if width is None else width
        x = (self._label_width() if left is None else left) + column * w
        return QRect(int(x), HEADER_HEIGHT + row * ROW_HEIGHT, max(1, int(x + w) - int(x) - 1), ROW_HEIGHT - 2)

    def hit(self, pos: QPoint) -> tuple[str, int]:
        """("cell", r·n + c), ("row", r), ("column", c) or ("", -1) for the point."""
        if not self.grid or not self.grid.blocks:
            return "", -1
        w, left = self.cell_width(), self._label_width()
        column = int((pos.x() - left) // w) if pos.x() >= left else -1
        row = (pos.y() - HEADER_HEIGHT) // ROW_HEIGHT if pos.y() >= HEADER_HEIGHT else -1
        columns, rows = len(self.grid.blocks), len(self.grid.kinds)
        if pos.y() < HEADER_HEIGHT and 0 <= column < columns:
            return "column", column
        if 0 <= row < rows and pos.x() < left:
            return "row", row
        if 0 <= row < rows and 0 <= column < columns:
            return "cell", row * columns + column
        return "", -1

    def name_at(self, pos: QPoint) -> str | None:
        what, i = self.hit(pos)
        if what != "cell":
            return None
        columns = len(self.grid.blocks)
        return self.grid.names[i // columns][i % columns]

    # -- painting ----------------------------------------------------------------------------------------
    def paintEvent(self, event) -> None:
        if not self.grid or not self.selection:
            return
        ratio = self.devicePixelRatioF()
        drawn_for = (self.size(), ratio, self.palette().cacheKey(), self.font().key())
        if self._drawn is None or self._drawn_for != drawn_for:
            self._drawn = QPixmap(self.size() * ratio)
            self._drawn.setDevicePixelRatio(ratio)
            self._drawn.fill(Qt.GlobalColor.transparent)
            self._drawn_for = drawn_for
            painter = QPainter(self._drawn)
            self._draw_cells(painter)
            painter.end()
        painter = QPainter(self)
        painter.drawPixmap(0, 0, self._drawn)
        painter.end()

    def _draw_cells(self, painter: QPainter) -> None:
        palette = self.palette()
        text = palette.color(QPalette.ColorRole.Text)
        empty = palette.color(QPalette.ColorRole.Mid)
        empty.setAlpha(70)
        selection = self.selection
        ranks = [selection.rank_of(n) for n in selection.selected] or [selection.rank]
        top_rank = max(ranks)
        by_change = self.colour_by_change and bool(self.change)
        if by_change:
            import pyqtgraph as pg  # the colour map the Inspect tab's heatmap uses

            colours = pg.colormap.get("viridis")
            top_change = max(self.change.values()) or 1.0
        w, left = self.cell_width(), self._label_width()
        metrics = self.fontMetrics()
        rank_widths: dict[int, int] = {}
        shades: dict[int, QColor] = {}
        painter.setPen(text)
        every = max(1, int(metrics.horizontalAdvance("000") // max(w, 1)) + 1)  # block numbers that fit
        for c, block in enumerate(self.grid.blocks):
            if c % every == 0:
                rect = self.cell_rect(0, c, w, left)
                painter.drawText(QRect(rect.x(), 0, int(w * every), HEADER_HEIGHT),
                                 int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), str(block))
        for r, label in enumerate(self.grid.labels):
            painter.setPen(text)
            painter.drawText(QRect(0, HEADER_HEIGHT + r * ROW_HEIGHT, left - 6, ROW_HEIGHT),
                             int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter), label)
            for c, name in enumerate(self.grid.names[r]):
                rect = self.cell_rect(r, c, w, left)
                if name is None:
                    continue
                if by_change:
                    value = self.change.get(name)
                    if value is None:
                        painter.fillRect(rect, empty)
                    else:
                        painter.fillRect(rect, colours.map(value / top_change, mode="qcolor"))
                    if name in selection.selected:  # the choice, as a frame around what changed
                        painter.setPen(text)
                        painter.drawRect(rect.adjusted(0, 0, -1, -1))
                elif name in selection.selected:
                    rank = selection.rank_of(name)
                    colour = shades.get(rank)
                    if colour is None:
                        # Lighter for a lower rank than the highest in the choice, never so light it reads as unset.
                        colour = shades[rank] = QColor(SELECTED)
                        colour.setAlphaF(0.35 + 0.65 * rank / top_rank)
                    painter.fillRect(rect, colour)
                    if rank not in rank_widths:
                        rank_widths[rank] = metrics.horizontalAdvance(str(rank)) + 4
                    if rect.width() >= rank_widths[rank]:
                        painter.setPen(QColor("white"))
                        painter.drawText(rect, int(Qt.AlignmentFlag.AlignCenter), str(rank))
                else:
                    painter.fillRect(rect, empty)

    # -- editing -----------------------------------------------------------------------------------------
    def mousePressEvent(self, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton or not self.selection:
            return super().mousePressEvent(event)
        what, i = self.hit(event.position().toPoint())
        if what == "row":
            self.toggle(self.grid.row(i))
        elif what == "column":
            self.toggle(self.grid.column(i))
        elif what == "cell":
            name = self.name_at(event.position().toPoint())
            if name:
                self._paint_to = name not in self.selection.selected
                self._painted = {name}
                self.selection.set_selected([name], self._paint_to)

    def mouseMoveEvent(self, event) -> None:
        pos = event.position().toPoint()
        name = self.name_at(pos)
        if self._paint_to is not None and name and name not in self._painted:
            self._painted.add(name)
            self.selection.set_selected([name], self._paint_to)
        self._show_card(name, event.globalPosition().toPoint())
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event) -> None:
        self._paint_to, self._painted = None, set()
        super().mouseReleaseEvent(event)

    def toggle(self, names: list[str]) -> None:
        """A whole row or column: all on, unless all are on already (then all off)."""
        if names and self.selection:
            everything = all(n in self.selection.selected for n in names)
            self.selection.set_selected(names, not everything)

    # -- hover card --------------------------------------------------------------------------------------
    def card(self, name: str) -> str:
        """What the hover card says about one module: shape, parameters, and its LoRA parameters."""
        node = self.selection.tree.nodes[name]
        shape = " × ".join(str(d) for d in node.shape) if node.shape else "–"
        rank = self.selection.rank_of(name)
        lora = node.lora_params(rank)
        if name in self.selection.selected:
            alpha = self.selection.alpha_of(name)
            state = f"adapted: rank {rank}, alpha {alpha:g} → {lora:,} LoRA parameters ({human_count(lora)})"
        else:
            state = f"not adapted (at rank {rank} it would add {lora:,} LoRA parameters)"
        changed = (f"<br>{self.change_metric} of the inspected adapter: {self.change[name]:.4g}"
                   if name in self.change else "")
        return f"<b>{name}</b><br>{node.type} · weight {shape} · {node.params:,} parameters<br>{state}{changed}"

    def _show_card(self, name: str | None, where: QPoint) -> None:
        if self.selection is None:  # the grid without its selection yet (set_grid): no card to show
            name = None
        self.hovered.emit(name or "")
        if name:
            QToolTip.showText(where, self.card(name), self)
        else:
            what, i = self.hit(self.mapFromGlobal(where))
            tips = {"row": "Click to toggle this module in every block",
                    "column": "Click to toggle every module of this block"}
            if what in tips:
                QToolTip.showText(where, tips[what], self)
            else:
                QToolTip.hideText()
