"""The Inspect tab: what an adapter changed, as a heatmap over blocks × module kinds and a table per module.

Works on any PEFT LoRA adapter folder. With a base model, ``||ΔW|| / ||W||`` (the change relative to the
weight it changes) is available; without one, only ``||ΔW||`` and effective ranks. The numbers come from
``core.adapters.inspect_adapter`` in a worker started by the window; this panel only draws the report.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QHeaderView, QLabel, QPushButton, QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from .names import natural_key, short_kind_labels
from .path_edit import PathEdit
from .lazy_plot import LazyPlot, follow_palette

METRICS = (("relative_norm", "||ΔW|| / ||W||"), ("delta_norm", "||ΔW||"), ("effective_rank", "effective rank"))
TABLE_COLUMNS = ("Module", "Block", "Kind", "Rank", "Scale", "||ΔW||", "||W||", "||ΔW|| / ||W||", "Effective rank")


class NaturalItem(QTableWidgetItem):
    """A table cell whose text sorts with numbers in order: layers.2 before layers.10."""

    def __lt__(self, other: QTableWidgetItem) -> bool:
        return natural_key(self.text()) < natural_key(other.text())


def heatmap_plot():
    """One cell per block and module kind, coloured by the chosen measure, with its colour bar."""
    import pyqtgraph as pg

    widget = pg.PlotWidget()
    plot = widget.getPlotItem()
    plot.setLabel("left", "block")
    plot.setLabel("bottom", "module kind")
    plot.getAxis("bottom").enableAutoSIPrefix(False)
    plot.getAxis("left").enableAutoSIPrefix(False)
    plot.invertY(True)
    plot.setMouseEnabled(x=False, y=False)
    widget.image = pg.ImageItem()
    plot.addItem(widget.image)
    widget.colorbar = pg.ColorBarItem(colorMap=pg.colormap.get("viridis"), interactive=False, width=14)
    widget.colorbar.setImageItem(widget.image, insert_in=plot)
    follow_palette(widget, [plot])
    return widget


class InspectionPanel(QWidget):
    inspectRequested = Signal(str, str)  # adapter folder, base model ("" for none)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.report = None
        self.adapter_edit = PathEdit()
        self.adapter_edit.setPlaceholderText("a PEFT LoRA adapter folder")
        self.base_edit = PathEdit()
        self.base_edit.setPlaceholderText("its base model folder (optional; needed for ||ΔW|| / ||W||)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._choose)
        self.inspect_button = QPushButton("Inspect")
        self.inspect_button.clicked.connect(self.request)
        self.metric_combo = QComboBox()
        for key, text in METRICS:
            self.metric_combo.addItem(text, key)
        self.metric_combo.currentIndexChanged.connect(lambda _: self.draw())
        self.status = QLabel("Choose an adapter folder and press Inspect.")
        self.status.setWordWrap(True)

        row = QHBoxLayout()
        row.addWidget(self.adapter_edit, 1)
        row.addWidget(browse)
        form = QFormLayout()
        form.addRow("Adapter", row)
        form.addRow("Base model", self.base_edit)
        controls = QHBoxLayout()
        controls.addWidget(QLabel("Colour by"))
        controls.addWidget(self.metric_combo)
        controls.addWidget(self.inspect_button)
        controls.addStretch(1)
        form.addRow(controls)

        self.plot_widget = LazyPlot(heatmap_plot)  # built when first shown or drawn on
        self.cells = None  # the drawn values, a numpy array (blocks × kinds)

        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(TABLE_COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSortingEnabled(True)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        # The module's name takes what the numbers leave, shortened from the left (its block and kind have columns
        # of their own): sized to its longest name it pushed the last column ("Effective rank") out of view.
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setMinimumSectionSize(40)
        self.table.setTextElideMode(Qt.TextElideMode.ElideLeft)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.plot_widget)
        split.addWidget(self.table)
        split.setSizes([520, 680])
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addWidget(split, 1)

    @property
    def plot(self):
        """The heatmap's PlotItem."""
        return self.plot_widget.getPlotItem()

    @property
    def image(self):
        return self.plot_widget.image

    @property
    def colorbar(self):
        return self.plot_widget.colorbar

    def set_paths(self, adapter: str, base: str = "") -> None:
        self.adapter_edit.setText(adapter)
        if base:
            self.base_edit.setText(base)

    def _choose(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Adapter folder", self.adapter_edit.text())
        if path:
            self.adapter_edit.setText(path)

    def request(self) -> None:
        adapter = self.adapter_edit.text().strip()
        if not adapter:
            self.status.setText("Choose an adapter folder first.")
            return
        self.inspect_button.setEnabled(False)
        self.status.setText("Inspecting…")
        self.inspectRequested.emit(adapter, self.base_edit.text().strip())

    def show_error(self, message: str) -> None:
        self.inspect_button.setEnabled(True)
        self.status.setText(f"<span style='color:#c83232'>{message}</span>")

    def show_report(self, report) -> None:
        self.inspect_button.setEnabled(True)
        self.report = report
        base = f" against {report.base}" if report.base else " (no base model: relative norms unavailable)"
        self.status.setText(f"{report.method} adapter {report.adapter}{base} — {len(report.modules)} modules")
        if report.base is None and self.metric_combo.currentData() == "relative_norm":
            self.metric_combo.setCurrentIndex(1)
        self.draw()
        self._fill_table()

    def draw(self) -> None:
        if self.report is None:
            return
        import numpy as np  # imported with the plot, built below at the latest

        hm = self.report.heatmap(self.metric_combo.currentData())
        values = np.array([[np.nan if v is None else float(v) for v in row] for row in hm.values], dtype=float)
        self.cells = values
        if values.size == 0:
            self.image.clear()
            return
        # ImageItem indexes [x, y]: x = module kind (columns), y = block (rows).
        self.image.setImage(values.T, autoLevels=False)
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        self.colorbar.setLevels((low, high if high > low else low + 1e-12))
        # Short labels ("q", "gate"): the full kinds ("self_attn.q_proj") overlapped, and pyqtgraph drops a
        # label that would overlap, so some columns had none. The full names are in the table.
        self.plot.getAxis("bottom").setTicks([[(j + 0.5, k) for j, k in enumerate(short_kind_labels(hm.kinds))]])
        # Every block's number while they fit, then every few: pyqtgraph draws a level's labels only if all fit.
        every = max(1, -(-len(hm.blocks) // 32))
        self.plot.getAxis("left").setTicks([[(i + 0.5, str(b)) for i, b in enumerate(hm.blocks) if i % every == 0]])
        title = dict(METRICS)[hm.metric] + " per block and module kind"
        self.plot.setProperty("plot_title", title)  # follow_palette colours it (pyqtgraph's default is a pale grey)
        follow_palette(self.plot_widget, [self.plot])
        self.plot.setRange(xRange=(0, len(hm.kinds)), yRange=(0, len(hm.blocks)), padding=0)

    def _fill_table(self) -> None:
        self.table.setSortingEnabled(False)
        mods = self.report.modules
        self.table.setRowCount(len(mods))
        for r, m in enumerate(mods):
            values = (m.name, m.block, m.kind, m.rank, m.scale, m.delta_norm, m.weight_norm, m.relative_norm,
                      m.effective_rank)
            for c, v in enumerate(values):
                item = NaturalItem() if c == 0 else QTableWidgetItem()
                if isinstance(v, float):
                    item.setData(Qt.ItemDataRole.DisplayRole, float(f"{v:.4g}"))
                elif v is None:
                    item.setText("–")
                else:
                    item.setData(Qt.ItemDataRole.DisplayRole, v)
                self.table.setItem(r, c, item)
        self.table.setSortingEnabled(True)
        self.table.sortItems(0, Qt.SortOrder.AscendingOrder)  # by name, numbers in order (model order)
