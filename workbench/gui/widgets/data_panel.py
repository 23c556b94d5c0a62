"""The Data tab: training files, detected format (overridable), column mapping, rendered preview with the
trained-on text highlighted, and the token-length histogram with the max-length cut.

The panel only displays: reading, detecting, rendering and counting are ``core.data`` calls made by a
worker the main window starts (``core.data.inspection.inspect_data``, which also keeps the model's tokenizer
loaded between inspections). Every change to the data settings asks for a fresh inspection through
``inspectRequested``; the window debounces it.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QListWidget, QPushButton,
    QSplitter, QTextBrowser, QVBoxLayout, QWidget,
)

from workbench.core.config import ConfigError, field_help
from workbench.core.data import DATA_SUFFIXES, FORMAT_ROLES
from workbench.core.data.inspection import inspect_data  # noqa: F401  (the window runs it in a worker)

from .plots import follow_palette

DATA_FILTER = f"Datasets ({' '.join('*' + suffix for suffix in DATA_SUFFIXES)});;All files (*)"
DEFAULT_COLUMN = "(same name)"


class ThemedPlotWidget(pg.PlotWidget):
    def changeEvent(self, event) -> None:
        # The first palette event arrives from the base class constructor, before the plot exists.
        if event.type() == QEvent.Type.PaletteChange and self.getPlotItem() is not None:  # light ↔ dark switch
            follow_palette(self, [self.getPlotItem()])
        super().changeEvent(event)


class DataPanel(QWidget):
    inspectRequested = Signal()
    problem = Signal(str)  # a setting the schema refused

    def __init__(self, store, parent=None):
        super().__init__(parent)
        self.store = store
        help_texts = field_help()
        self.files = QListWidget()
        self.files.setToolTip(help_texts["data.train_files"])
        self.add_button = QPushButton("Add files…")
        self.remove_button = QPushButton("Remove")
        self.format_combo = QComboBox()
        self.format_combo.addItems(["auto", *FORMAT_ROLES])
        self.format_combo.setToolTip(help_texts["data.format"])
        self.train_on_combo = QComboBox()
        self.train_on_combo.addItems(["completion", "all"])
        self.train_on_combo.setToolTip(help_texts["data.train_on"])
        self.detected_label = QLabel("No data chosen.")
        self.detected_label.setWordWrap(True)
        self.columns_box = QGroupBox("Columns")
        self.columns_form = QFormLayout(self.columns_box)
        self.column_combos: dict[str, QComboBox] = {}
        self.preview = QTextBrowser()
        self.preview.setOpenLinks(False)
        self.histogram = ThemedPlotWidget()
        self.histogram.setLabel("bottom", "tokens per example")
        self.histogram.setLabel("left", "examples")
        self.histogram.getPlotItem().setProperty("plot_title", "Token lengths")
        follow_palette(self.histogram, [self.histogram.getPlotItem()])
        self.bars = pg.BarGraphItem(x0=[], x1=[], height=[], brush=(90, 140, 220))
        self.histogram.addItem(self.bars)
        self.cut_line = pg.InfiniteLine(angle=90, pen=pg.mkPen((217, 83, 79), width=2), label="max length",
                                        labelOpts={"position": 0.95, "color": (217, 83, 79), "anchors": [(0, 0), (0, 0)]})
        self.histogram.addItem(self.cut_line)
        self.stats_label = QLabel()
        self.stats_label.setWordWrap(True)

        file_buttons = QHBoxLayout()
        file_buttons.addWidget(self.add_button)
        file_buttons.addWidget(self.remove_button)
        file_buttons.addStretch(1)
        settings = QFormLayout()
        settings.addRow("Format:", self.format_combo)
        settings.addRow("Train on:", self.train_on_combo)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addWidget(QLabel("Training files:"))
        left_layout.addWidget(self.files, 1)
        left_layout.addLayout(file_buttons)
        left_layout.addLayout(settings)
        left_layout.addWidget(self.detected_label)
        left_layout.addWidget(self.columns_box)
        right = QSplitter(Qt.Orientation.Vertical)
        preview_box = QWidget()
        preview_layout = QVBoxLayout(preview_box)
        preview_layout.setContentsMargins(0, 0, 0, 0)
        preview_layout.addWidget(QLabel("Preview — <span style='background:rgba(46,157,78,0.35)'>highlighted</span> "
                                        "text is trained on:"))
        preview_layout.addWidget(self.preview)
        histogram_box = QWidget()
        histogram_layout = QVBoxLayout(histogram_box)
        histogram_layout.setContentsMargins(0, 0, 0, 0)
        histogram_layout.addWidget(self.histogram, 1)
        histogram_layout.addWidget(self.stats_label)
        right.addWidget(preview_box)
        right.addWidget(histogram_box)
        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

        self.add_button.clicked.connect(self.choose_files)
        self.remove_button.clicked.connect(self.remove_selected)
        self.format_combo.activated.connect(lambda: self._update(format=self.format_combo.currentText(), columns={}))
        self.train_on_combo.activated.connect(lambda: self._update(train_on=self.train_on_combo.currentText()))
        store.changed.connect(self.refresh)
        self.refresh()

    # -- settings -------------------------------------------------------------------------------------
    def refresh(self, section: str = "") -> None:
        if section not in ("", "data"):
            return
        data = self.store.config.data
        self.files.clear()
        self.files.addItems(data.train_files)
        self.format_combo.setCurrentText(data.format)
        self.train_on_combo.setCurrentText(data.train_on)
        self.cut_line.setValue(data.max_length)

    def _update(self, **fields) -> None:
        try:
            self.store.update("data", **fields)
        except ConfigError as exc:
            self.problem.emit("\n".join(exc.problems))
            return
        self.inspectRequested.emit()

    def choose_files(self) -> None:
        start = str(Path(self.store.config.data.train_files[-1]).parent) if self.store.config.data.train_files else ""
        paths, _ = QFileDialog.getOpenFileNames(self, "Training data", start, DATA_FILTER)
        if paths:
            self.add_files(paths)

    def add_files(self, paths: list[str]) -> None:
        current = list(self.store.config.data.train_files)
        self._update(train_files=current + [p for p in paths if p not in current])

    def set_files(self, paths: list[str]) -> None:
        self._update(train_files=list(paths))

    def remove_selected(self) -> None:
        doomed = {item.text() for item in self.files.selectedItems()}
        self._update(train_files=[p for p in self.store.config.data.train_files if p not in doomed])

    def _set_column(self, role: str, combo: QComboBox) -> None:
        columns = dict(self.store.config.data.columns)
        if combo.currentText() == DEFAULT_COLUMN:
            columns.pop(role, None)
        else:
            columns[role] = combo.currentText()
        self._update(columns=columns)

    # -- results --------------------------------------------------------------------------------------
    def clear_results(self) -> None:
        """A new run: nothing detected, previewed or refused yet (no error left from the previous run)."""
        self.detected_label.setText("No data chosen.")
        self.preview.clear()
        self.bars.setOpts(x0=[], x1=[], height=[])
        self.stats_label.clear()
        while self.columns_form.rowCount():
            self.columns_form.removeRow(0)
        self.column_combos.clear()

    def show_busy(self) -> None:
        self.detected_label.setText("Reading the data…")

    def show_error(self, message: str) -> None:
        self.detected_label.setText(f"<span style='color:#d9534f'>{html.escape(message)}</span>")
        self.preview.clear()
        self.bars.setOpts(x0=[], x1=[], height=[])
        self.stats_label.clear()

    def show_result(self, result: dict) -> None:
        for combo in (self.format_combo, self.train_on_combo):
            combo.setEnabled(True)
        self.columns_box.setVisible(True)
        info = result["info"]
        files = ", ".join(f"{Path(f.path).name} ({f.kind}, {f.rows} rows)" for f in info.train_files)
        self.detected_label.setText(
            f"Detected format: <b>{info.format}</b> · {info.train_rows} training rows"
            + (f", {info.validation_rows} validation rows" if info.validation_rows else "")
            + f"<br>{html.escape(files)}"
            + ("" if result["previews"] is not None else "<br><i>Open a model to see the tokenized preview.</i>")
        )
        self._show_columns(info)
        if result["previews"] is not None:
            self._show_previews(result["previews"])
        if result["stats"] is not None:
            self._show_stats(result["stats"])

    def _show_columns(self, info) -> None:
        while self.columns_form.rowCount():
            self.columns_form.removeRow(0)
        self.column_combos.clear()
        chosen = self.store.config.data.columns
        for role in FORMAT_ROLES.get(info.format, []):
            combo = QComboBox()
            combo.addItems([DEFAULT_COLUMN, *info.columns])
            combo.setCurrentText(chosen.get(role) or info.mapping.get(role) or DEFAULT_COLUMN)
            combo.setToolTip(f"Column that holds the {role!r} of each example.")
            combo.activated.connect(lambda _=0, r=role, c=combo: self._set_column(r, c))
            self.columns_form.addRow(f"{role}:", combo)
            self.column_combos[role] = combo

    def _show_previews(self, previews) -> None:
        parts = []
        for example in previews:
            body = "".join(
                f"<span style='background:rgba(46,157,78,0.35)'>{html.escape(text)}</span>" if trained
                else html.escape(text)
                for text, trained in example.segments
            )
            note = " · <b>truncated</b>" if example.truncated else ""
            path, _, where = example.source.rpartition(": ")
            source = f"{Path(path).name}: {where}" if path else example.source
            parts.append(f"<p><small>{html.escape(source)} · {example.tokens} tokens, "
                         f"{example.trained_tokens} trained{note}</small></p>"
                         f"<pre style='white-space: pre-wrap'>{body}</pre><hr>")
        self.preview.setHtml("".join(parts) or "<i>No usable example.</i>")

    def show_labels(self, result: dict) -> None:
        """A classification run's data (``core.classification.inspect_labels``): rows, the text/label column
        mapping, and one bar per class, so class imbalance shows before training."""
        labels = result["labels"]
        for combo in (self.format_combo, self.train_on_combo):  # chat formats and loss masks: not for a classifier
            combo.setEnabled(False)
        self.detected_label.setText(
            ("Images" if result.get("images") else "Labelled rows")
            + f" for <b>{labels.problem_type}</b> classification · {result['train_rows']} training rows"
            + (f", {result['validation_rows']} validation rows" if result["validation_rows"] else ""))
        while self.columns_form.rowCount():
            self.columns_form.removeRow(0)
        self.column_combos.clear()
        chosen = self.store.config.data.columns
        roles = ("image", "label") if result.get("images") else ("text", "text_pair", "label")
        self.columns_box.setVisible(bool(result["columns"]))
        for role in roles if result["columns"] else ():  # an image folder has no columns: its sub-folders are the classes
            combo = QComboBox()
            combo.addItems([DEFAULT_COLUMN, *result["columns"]])
            combo.setCurrentText(chosen.get(role) or DEFAULT_COLUMN)
            combo.setToolTip(f"Column that holds the {role!r} of each example" + (" (optional: the second text of a "
                             "sentence pair)" if role == "text_pair" else "") + ".")
            combo.activated.connect(lambda _=0, r=role, c=combo: self._set_column(r, c))
            self.columns_form.addRow(f"{role}:", combo)
            self.column_combos[role] = combo
        if result.get("images"):  # one thumbnail per class, drawn large enough to see (the files may be 8 × 8)
            # (Qt's rich text has no inline blocks: a one-row table lays the thumbnails side by side)
            self.preview.setHtml("<p>One image of each class:</p><table cellspacing='8'><tr>" + "".join(
                f"<td align='center'><img src='{html.escape(Path(path).as_uri())}' width='64' height='64'><br>"
                f"<small>{html.escape(str(label))}</small></td>"
                for path, label, _ in result.get("samples", [])) + "</tr></table>")
        else:
            self.preview.setHtml("".join(
                f"<p><small>{html.escape(Path(where.rpartition(': ')[0]).name)}: "
                f"{html.escape(where.rpartition(': ')[2])} · label <b>{html.escape(str(label))}</b></small></p>"
                f"<pre style='white-space: pre-wrap'>{html.escape(text)}</pre><hr>"
                for text, label, where in result.get("samples", [])) or "<i>No usable example.</i>")
        axis = self.histogram.getPlotItem().getAxis("bottom")
        self._set_plot_title("Classes")
        self.cut_line.hide()
        if labels.problem_type == "regression":
            self.bars.setOpts(x0=[], x1=[], height=[])
            self.stats_label.setText("Regression: each label is a number the model learns to predict.")
            return
        counts = [labels.counts.get(name, 0) for name in labels.names]
        positions = np.arange(len(counts), dtype=float)
        self.bars.setOpts(x0=positions - 0.4, x1=positions + 0.4, height=np.asarray(counts, dtype=float))
        axis.setTicks([[(float(i), name) for i, name in enumerate(labels.names)]])
        self.histogram.setLabel("bottom", "class")
        self.histogram.setLabel("left", "training rows")
        share = labels.majority_share()
        self.stats_label.setText(
            f"{labels.num_labels} classes · the commonest is {max(counts)} of {sum(counts)} rows"
            + (f" ({share:.0%}): accuracy must beat that" if share is not None else ""))

    def _set_plot_title(self, title: str) -> None:
        self.histogram.getPlotItem().setProperty("plot_title", title)
        follow_palette(self.histogram, [self.histogram.getPlotItem()])  # draws the title in the palette's colour

    def _show_stats(self, stats) -> None:
        self.histogram.getPlotItem().getAxis("bottom").setTicks(None)  # back from the class bars
        self._set_plot_title("Token lengths")
        self.histogram.setLabel("bottom", "tokens per example")
        self.histogram.setLabel("left", "examples")
        self.cut_line.show()
        hist = stats.length_histogram
        edges = np.asarray(hist.edges, dtype=float)
        if len(edges) > 1:
            self.bars.setOpts(x0=edges[:-1], x1=edges[1:], height=np.asarray(hist.counts, dtype=float))
        self.cut_line.setValue(stats.max_length)
        self.stats_label.setText(
            f"{stats.examples} examples · {stats.tokens:,} tokens ({stats.loss_share:.0%} trained on) · "
            f"<b>{stats.truncated}</b> ({stats.truncated_share:.1%}) longer than max length {stats.max_length} "
            f"are truncated"
            + (f" · {stats.without_loss} dropped: nothing left to train on after truncation" if stats.without_loss else "")
            + (f" · {stats.skipped} bad rows skipped" if stats.skipped else "")
        )


