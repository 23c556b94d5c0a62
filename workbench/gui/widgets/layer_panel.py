"""The layer tree view with its tools: filter, presets, block range, "this module in every block", summary.

The panel edits the selection through ``LayerTreeModel`` and writes it to the run configuration as exact
module names (``lora.target_modules``) with exact-name ``rank_pattern`` / ``alpha_pattern`` overrides, the
form PEFT applies without any pattern guessing.

A model is shown in pieces (``set_model``, then ``show_piece`` for each of ``ModelController``'s later pieces, a
quick event-loop turn each): the tree's top rows, its rows down to the first block, the block map's cells. The
first paint of all three at once was the longest stall of opening an 80-block model. The map's grid (its size and
caption) is set with the tree, so that the cells' piece draws into room already laid out.
"""

from __future__ import annotations

import re

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QMenu, QProgressBar, QPushButton,
    QSplitter, QStackedWidget, QStyle, QStyleOptionComboBox, QStylePainter, QTreeView, QVBoxLayout, QWidget,
)

from workbench.core.config import PRESETS, parse_block_spec

from .block_map import BlockMap
from .layer_tree_model import (
    COL_ALPHA, COL_LORA, COL_NAME, COL_PARAMS, COL_RANK, COL_SHAPE, COL_TYPE, NAME_ROLE, LayerTreeModel,
)
from .summary_bar import SummaryBar


class StateComboBox(QComboBox):
    """A combo box whose placeholder (shown at current index -1) is drawn as ordinary text, not greyed: here it
    names a real state ("custom selection"), not a prompt to choose something."""

    def paintEvent(self, event) -> None:
        # QComboBox.paintEvent, less the line that paints the placeholder in the palette's PlaceholderText.
        painter = QStylePainter(self)
        option = QStyleOptionComboBox()
        self.initStyleOption(option)
        painter.drawComplexControl(QStyle.ComplexControl.CC_ComboBox, option)
        if self.currentIndex() < 0:
            option.currentText = self.placeholderText()
        painter.drawControl(QStyle.ControlElement.CE_ComboBoxLabel, option)


class NameFilter:
    """Which rows a filter text shows: modules whose full name contains the text (or matches the regex), and
    their ancestors.

    The view hides the other rows itself (``setRowHidden``) instead of reading the model through a
    ``QSortFilterProxyModel``: a proxy maps every cell's every role back to the source model, which made each
    repaint of an 80-block tree cost ~10,000 calls into Python instead of ~2,500.
    """

    def __init__(self):
        self._test = None

    def set_pattern(self, text: str, regex: bool) -> None:
        """Raises ``re.error`` for a bad regex, leaving the previous filter in place."""
        if not text:
            test = None
        elif regex:
            compiled = re.compile(text)
            test = lambda name: compiled.search(name) is not None  # noqa: E731
        else:
            lowered = text.lower()
            test = lambda name: lowered in name.lower()  # noqa: E731
        self._test = test

    @property
    def active(self) -> bool:
        return self._test is not None

    def matches(self, name: str) -> bool:
        return self._test is None or self._test(name)


class LayerPanel(QWidget):
    selectionEdited = Signal()  # the user changed the selection or an override

    def __init__(self, parent=None):
        super().__init__(parent)
        self.model: LayerTreeModel | None = None
        self.name_filter = NameFilter()
        self._hidden: set[str] = set()  # module names whose rows the filter hides

        self.filter_edit = QLineEdit(placeholderText="Filter modules, e.g. q_proj or layers.1.")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.setToolTip("Shows modules whose full name contains this text (or matches it, with Regex on).")
        self.regex_box = QCheckBox("Regex")
        self.check_matching = QPushButton("Check shown")
        self.check_matching.setToolTip("Select every adaptable module that the filter shows.")
        self.uncheck_matching = QPushButton("Uncheck shown")
        self.preset_combo = StateComboBox()
        for name, description in PRESETS.items():
            self.preset_combo.addItem(name, name)
            self.preset_combo.setItemData(self.preset_combo.count() - 1, description, Qt.ItemDataRole.ToolTipRole)
        self.preset_combo.addItem("none", "none")
        # Shown (current index -1) once the ticks are no longer the named preset's: the box never claims a preset
        # that is not what will be trained. Drawn as ordinary text (StateComboBox): it is a state, not a prompt.
        self.preset_combo.setPlaceholderText("custom selection")
        self.preset_button = QPushButton("Apply preset")
        self.preset_button.setToolTip("Replace the selection with the preset's modules.")
        self.blocks_edit = QLineEdit(placeholderText="e.g. 8-15 or 0,2,4-6")
        self.blocks_edit.setToolTip("Keep the selection only in these transformer blocks.")
        self.blocks_button = QPushButton("Keep only blocks")
        self.problem_label = QLabel()
        self.problem_label.setStyleSheet("color: #d9534f")
        self.problem_label.setWordWrap(True)
        self.problem_label.hide()

        self.view = QTreeView()
        self.view.setUniformRowHeights(True)  # lets the view skip measuring rows: smooth with thousands
        self.view.setAlternatingRowColors(True)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.setEditTriggers(QTreeView.EditTrigger.DoubleClicked | QTreeView.EditTrigger.EditKeyPressed
                                  | QTreeView.EditTrigger.SelectedClicked)
        self.view.setToolTip("Tick modules to adapt. Double-click Rank or Alpha of a ticked module to override it; "
                             "clear the cell to go back to the global value.")
        self.summary = SummaryBar()
        # In the tree's place while there is no tree: what is happening (a model opening, with a busy bar) or what
        # to do, instead of an empty white box.
        self.placeholder_label = QLabel("Open a model (above) to see its layers here.")
        self.placeholder_label.setWordWrap(True)
        self.placeholder_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder_busy = QProgressBar()
        self.placeholder_busy.setRange(0, 0)
        self.placeholder_busy.setTextVisible(False)
        self.placeholder_busy.setMinimumWidth(360)
        self.placeholder_detail = QLabel()
        self.placeholder_detail.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder_detail.setWordWrap(True)
        placeholder = QWidget()
        placeholder_layout = QVBoxLayout(placeholder)
        placeholder_layout.addStretch(1)
        placeholder_layout.addWidget(self.placeholder_label)
        placeholder_layout.addWidget(self.placeholder_busy, 0, Qt.AlignmentFlag.AlignHCenter)
        placeholder_layout.addWidget(self.placeholder_detail)
        placeholder_layout.addStretch(2)
        self.placeholder_busy.hide()
        # The block map above the tree: the same selection, one cell per module of each block (block_map.py).
        self.block_map = BlockMap()
        self.map_caption = QLabel()
        self.map_caption.setWordWrap(True)
        self.map_colour = QComboBox()
        self.map_colour.addItem("Colour: chosen rank", False)
        self.map_colour.addItem("Colour: what the inspected adapter changed", True)
        self.map_colour.setToolTip("After Inspect adapter (for this model): colour the cells by ‖ΔW‖/‖W‖; "
                                   "the chosen modules are framed.")
        self.map_colour.setEnabled(False)
        self.map_colour.currentIndexChanged.connect(
            lambda _: self.block_map.set_colour_by_change(self.map_colour.currentData()))
        caption_row = QHBoxLayout()
        caption_row.addWidget(self.map_caption, 1)
        caption_row.addWidget(self.map_colour)
        map_box = QWidget()
        map_layout = QVBoxLayout(map_box)
        map_layout.setContentsMargins(0, 0, 0, 4)
        map_layout.addLayout(caption_row)
        map_layout.addWidget(self.block_map)
        self.map_box = map_box
        self.tree_page = QSplitter(Qt.Orientation.Vertical)
        self.tree_page.addWidget(map_box)
        self.tree_page.addWidget(self.view)
        self.tree_page.setStretchFactor(1, 1)
        self.tree_page.setChildrenCollapsible(True)
        self.stack = QStackedWidget()
        self.stack.addWidget(placeholder)
        self.stack.addWidget(self.tree_page)

        filter_row = QHBoxLayout()
        filter_row.addWidget(self.filter_edit, 1)
        filter_row.addWidget(self.regex_box)
        filter_row.addWidget(self.check_matching)
        filter_row.addWidget(self.uncheck_matching)
        tools_row = QHBoxLayout()
        tools_row.addWidget(QLabel("Preset:"))
        tools_row.addWidget(self.preset_combo)
        tools_row.addWidget(self.preset_button)
        tools_row.addSpacing(16)
        tools_row.addWidget(QLabel("Blocks:"))
        tools_row.addWidget(self.blocks_edit)
        tools_row.addWidget(self.blocks_button)
        tools_row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(tools_row)
        layout.addLayout(filter_row)
        layout.addWidget(self.problem_label)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.summary)

        self.filter_edit.textChanged.connect(self._apply_filter)
        self.regex_box.toggled.connect(self._apply_filter)
        self.check_matching.clicked.connect(lambda: self._check_shown(True))
        self.uncheck_matching.clicked.connect(lambda: self._check_shown(False))
        self.preset_button.clicked.connect(self.apply_preset)
        self.blocks_button.clicked.connect(self.keep_blocks)
        self.blocks_edit.returnPressed.connect(self.keep_blocks)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self._set_tools_enabled(False)

    # -- model ----------------------------------------------------------------------------------------
    def show_waiting(self, text: str) -> None:
        """No tree yet: say what is happening, with a busy bar (the first start converts the built-in model)."""
        if self.model is None:
            self.placeholder_label.setText(text)
            self.placeholder_detail.clear()
            self.placeholder_busy.setRange(0, 0)
            self.placeholder_busy.setTextVisible(False)
            self.placeholder_busy.show()
            self.stack.setCurrentIndex(0)

    def show_progress(self, done: float, total: float, detail: str) -> None:
        """A step of a long open, in the tree's place too (the picker's bar is small and easy to miss)."""
        if self.model is None and self.placeholder_busy.isVisible():
            if total > 0:
                self.placeholder_busy.setRange(0, int(total))
                self.placeholder_busy.setValue(int(done))
                self.placeholder_busy.setTextVisible(True)
                self.placeholder_busy.setFormat("%p%")
            if detail:
                self.placeholder_detail.setText(detail)

    def show_hint(self, text: str) -> None:
        if self.model is None:
            self.placeholder_label.setText(text)
            self.placeholder_detail.clear()
            self.placeholder_busy.hide()
            self.stack.setCurrentIndex(0)

    def clear_model(self) -> None:
        """No model (File → New run): no tree, no summary, and no filter or block range left from the last one."""
        old, self.model = self.model, None
        self.block_map.set_selection(None)
        old_selection = self.view.selectionModel()
        self.view.setModel(None)
        if old_selection is not None:
            old_selection.deleteLater()
        if old is not None:
            old.deleteLater()
        self._hidden = set()
        for edit in (self.filter_edit, self.blocks_edit):
            edit.blockSignals(True)
            edit.clear()
            edit.blockSignals(False)
        self.name_filter.set_pattern("", False)
        self._show_problem("")
        self.summary.clear()
        self._set_tools_enabled(False)
        self.show_hint("Open a model (above) to see its layers here.")

    def set_model(self, model: LayerTreeModel) -> None:
        old = self.model
        self.model = model
        self._hidden = set()  # a new model starts with every row shown (setModel forgets hidden rows)
        old_selection = self.view.selectionModel()
        self.view.setModel(model)
        if old_selection is not None:  # setModel leaves the previous selection model to its owner
            old_selection.deleteLater()
        if self.name_filter.active:
            self._hide_filtered()
        model.selection.edited.connect(self.selectionEdited)  # loads (a run file, a re-opened model) are not edits
        self.block_map.set_grid(model.tree)  # its cells: show_piece("map")
        # The counts come with the open's last piece (ModelController._land); until then not the "No model open"
        # of an empty window, or the previous model's counts, under this model's tree.
        self.summary.show_problem("Counting…")  # no longer than "No model open": no relayout of the bar for it
        self.block_map.clear_change()  # an adapter inspected for the previous model says nothing about this one
        self.map_colour.setCurrentIndex(0)
        self.map_colour.setEnabled(False)
        model.selection.changed.connect(self._update_map_caption)
        self.map_box.setVisible(bool(self.block_map.grid.blocks))
        self._update_map_caption()
        if old is not None:
            old.deleteLater()
        header = self.view.header()
        header.setStretchLastSection(False)  # the module names get the spare width, not the Alpha column
        header.setSectionResizeMode(COL_NAME, QHeaderView.ResizeMode.Stretch)
        # Fixed widths from the font, not ResizeToContents: that mode re-measures every row on each change,
        # which on an 80-block model cost the GUI thread more than everything else in a click.
        chars = {COL_TYPE: 24, COL_SHAPE: 13, COL_PARAMS: 11, COL_LORA: 15, COL_RANK: 6, COL_ALPHA: 7}
        width = self.view.fontMetrics().horizontalAdvance("0")
        for col, n in chars.items():
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Interactive)
            self.view.setColumnWidth(col, max(n * width + 16, header.sectionSizeHint(col)))
        self._set_tools_enabled(True)
        self.stack.setCurrentWidget(self.tree_page)

    def show_piece(self, model: LayerTreeModel, piece: str) -> None:
        """A later piece of showing ``model`` (``model_controller.VIEW_PIECES``): "rows" opens the tree down to the
        first block, "map" draws the block map's cells. A piece for a model no longer shown is dropped."""
        if model is not self.model:
            return
        if piece == "rows":
            self._expand_to_blocks()
        elif piece == "map":
            self.block_map.set_selection(model.selection)

    def show_change(self, report) -> None:
        """An inspected adapter's change per module, offered as the map's colouring when it fits this model."""
        matched = self.block_map.show_change(report) if self.model is not None else 0
        self.map_colour.setEnabled(bool(matched))
        if not matched:
            self.map_colour.setCurrentIndex(0)

    def _update_map_caption(self, *_changed) -> None:
        grid = self.block_map.grid
        if self.model is None or grid is None or not grid.blocks:
            return
        # Every selected module is a cell or one of the grid's others: counted by set, not per cell (a caption
        # follows each click).
        selected = self.model.selection.selected
        outside = len(selected & grid.outside_set)
        in_map, chosen = grid.cells, len(selected) - outside
        rest = f"; {outside} of {len(grid.outside)} outside the blocks (tree)" if grid.outside else ""
        self.map_caption.setText(
            f"<b>Block map</b> — {len(grid.blocks)} blocks × {len(grid.kinds)} module kinds, {chosen} of {in_map} "
            f"adapted{rest}. Click or drag to paint, click a row label or block number to toggle it all.")

    def _expand_to_blocks(self) -> None:
        """Open the path down to the block list and the first block (the template for all the others)."""
        tree = self.model.tree
        if not tree.blocks_prefix:
            self.view.expandToDepth(0)
            return
        index = self.model.index_of(tree.blocks_prefix)
        while index.isValid():
            self.view.expand(index)
            index = index.parent()
        if f"{tree.blocks_prefix}.0" in tree.nodes:
            self.view.expandRecursively(self.model.index_of(f"{tree.blocks_prefix}.0"))

    def _set_tools_enabled(self, enabled: bool) -> None:
        for w in (self.filter_edit, self.regex_box, self.check_matching, self.uncheck_matching, self.preset_combo,
                  self.preset_button, self.blocks_edit, self.blocks_button):
            w.setEnabled(enabled)

    def _show_problem(self, text: str) -> None:
        self.problem_label.setText(text)
        self.problem_label.setVisible(bool(text))

    # -- tools ----------------------------------------------------------------------------------------
    def _apply_filter(self) -> None:
        try:
            self.name_filter.set_pattern(self.filter_edit.text(), self.regex_box.isChecked())
            self._show_problem("")
        except re.error as exc:
            self._show_problem(f"Filter: not a valid regular expression ({exc}).")
        if self.model is not None:
            self._hide_filtered()
        if self.filter_edit.text():
            self.view.expandAll()

    def _hide_filtered(self) -> None:
        """Hide the rows the filter leaves out: a module is shown if it or any module below it matches."""
        model = self.model
        shown: set[str] = set()
        if self.name_filter.active:
            for name in model.tree.nodes:
                if name and name not in shown and self.name_filter.matches(name):
                    node = model.tree.nodes[name]
                    while node is not None and node.name not in shown:
                        shown.add(node.name)
                        node = model.parent_of(node.name)
            hidden = {name for name in model.tree.nodes if name and name not in shown}
        else:
            hidden = set()
        for name in hidden ^ self._hidden:  # only the rows whose state changes
            index = model.index_of(name)
            self.view.setRowHidden(index.row(), index.parent(), name in hidden)
        self._hidden = hidden

    def _check_shown(self, checked: bool) -> None:
        if self.model is None:
            return
        names = [n.name for n in self.model.tree.adaptable() if self.name_filter.matches(n.name)]
        self.model.set_selected(names, checked)

    def apply_preset(self) -> None:
        if self.model is None or self.preset_combo.currentData() is None:  # "custom selection": nothing to apply
            return
        self.model.replace_selection(self.model.tree.preset(self.preset_combo.currentData()))

    def matching_preset(self, names: list[str]) -> str | None:
        """The preset whose modules are exactly ``names`` (the one in the box first), or None for a hand-made
        selection."""
        if self.model is None:
            return None
        current = self.preset_combo.currentData()
        candidates = [current] if current else []
        candidates += [self.preset_combo.itemData(i) for i in range(self.preset_combo.count())]
        wanted = set(names)
        return next((p for p in candidates if set(self.model.tree.preset(p)) == wanted), None)

    def show_preset(self, preset: str | None) -> None:
        """Name ``preset`` in the box, or "custom selection" for None."""
        index = self.preset_combo.findData(preset) if preset else -1
        if index != self.preset_combo.currentIndex():
            self.preset_combo.setCurrentIndex(index)

    def keep_blocks(self) -> None:
        if self.model is None:
            return
        tree = self.model.tree
        try:
            blocks = parse_block_spec(self.blocks_edit.text())
        except ValueError as exc:
            self._show_problem(f"Blocks: {exc}.")
            return
        if not tree.blocks_prefix:
            self._show_problem("Blocks: this model has no repeated transformer blocks.")
            return
        outside = [b for b in blocks if b >= tree.num_blocks]
        if outside:
            self._show_problem(f"Blocks: the model has blocks 0–{tree.num_blocks - 1} only.")
            return
        self._show_problem("")
        self.model.replace_selection(tree.in_blocks(self.model.selected, blocks))

    def _context_menu(self, pos) -> None:
        if self.model is None:
            return
        index = self.view.indexAt(pos)
        if not index.isValid():
            return
        name = index.data(NAME_ROLE)
        node = self.model.tree.nodes[name]
        menu = QMenu(self)
        if node.adaptable and node.block is not None:
            same = self.model.tree.same_in_every_block(name)
            menu.addAction(f"Select {node.short} in every block",
                           lambda: self.model.set_selected(same, True))
            menu.addAction(f"Deselect {node.short} in every block",
                           lambda: self.model.set_selected(same, False))
            menu.addSeparator()
        menu.addAction("Expand all", self.view.expandAll)
        menu.addAction("Collapse all", self.view.collapseAll)
        menu.popup(self.view.viewport().mapToGlobal(pos))
