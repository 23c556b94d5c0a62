"""The Data tab: training and validation files, detected format (overridable, re-detected when the files
change), how plain text is split and how Alpaca rows are rendered, column mapping, rendered preview with the
trained-on text highlighted, and the token-length histogram with the max-length cut.

The panel only displays: reading, detecting, rendering and counting are ``core.data`` calls made by a
worker the main window starts (``core.data.inspection.inspect_data``, which also keeps the model's tokenizer
loaded between inspections). Every change to the data settings asks for a fresh inspection through
``inspectRequested``; the window debounces it. A problem is shown beside the control it concerns
(``core.data.problems`` decides which), not in a message box that returns after every edit.
"""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QFrame, QGroupBox, QHBoxLayout, QLabel,
    QPushButton, QScrollArea, QSplitter, QTextBrowser, QVBoxLayout, QWidget,
)

from workbench.core.config import ConfigError, field_help
from workbench.core.data import DATA_SUFFIXES, FORMAT_ROLES
from workbench.core.data.inspection import inspect_data  # noqa: F401  (the window runs it in a worker)
from workbench.core.data.problems import describe

from .file_list import FileListBox
from .data_preview import TRAINED_STYLE, labelled_preview_html, preview_html
from .image_folder_picker import ImageFolderButton
from .inline_problem import InlineProblem
from .data_histogram import draw_class_bars, draw_length_stats, length_histogram
from .lazy_plot import LazyPlot

DATA_FILTER = f"Datasets ({' '.join('*' + suffix for suffix in DATA_SUFFIXES)});;All files (*)"
DEFAULT_COLUMN = "(same name)"
TEXT_SPLITS = {"paragraphs": "one example per paragraph", "chunks": "fixed-length chunks (max length tokens)",
               "whole": "the whole file as one example"}
ALPACA_TEMPLATES = {"auto": "the model's chat template (classic without one)", "chat": "the chat template",
                    "classic": "classic “### Instruction” prompt"}
PLAIN_TEXT_TRAIN_ON = "Plain text has no prompt or answer: every token is trained."


PREVIEW_TITLE = (f"Preview — <span style='{TRAINED_STYLE}'>highlighted</span> text is trained on; "
                 "<span style='color:gray'>grey</span> marks template tokens:")


class DataPanel(QWidget):
    inspectRequested = Signal()
    problem = Signal(str)  # a setting the schema refused

    def __init__(self, store, parent=None):
        super().__init__(parent)
        self.store = store
        self._detected_format: str | None = None
        help_texts = field_help()
        self.train_box = FileListBox("Training files", help_texts["data.train_files"])
        self.files = self.train_box.files
        self.add_button, self.remove_button = self.train_box.add_button, self.train_box.remove_button
        self.validation_box = FileListBox("Validation files", help_texts["data.validation_files"])
        self.train_folder = ImageFolderButton(store, "Training images: a folder of class sub-folders", self._start_folder)
        self.validation_folder = ImageFolderButton(store, "Validation images: a folder of class sub-folders",
                                                   self._start_folder)
        self.train_box.add_button_widget(self.train_folder)
        self.validation_box.add_button_widget(self.validation_folder)
        self.hold_out = QDoubleSpinBox()
        self.hold_out.setRange(0.0, 90.0)
        self.hold_out.setDecimals(1)
        self.hold_out.setSuffix(" %")
        self.hold_out.setToolTip(help_texts["data.validation_split"])
        self.hold_out_problem = InlineProblem()
        self.format_combo = QComboBox()
        for fmt in ["auto", *FORMAT_ROLES]:
            self.format_combo.addItem(fmt, fmt)
        self.format_combo.setToolTip(help_texts["data.format"])
        self.redetect_button = QPushButton("Re-detect")
        self.redetect_button.setToolTip("Forget the chosen format and column mapping and detect them from the files again.")
        self.format_problem = InlineProblem()
        self.alpaca_combo = QComboBox()
        for key, text in ALPACA_TEMPLATES.items():
            self.alpaca_combo.addItem(text, key)
        self.alpaca_combo.setToolTip(help_texts["data.alpaca_template"])
        self.split_combo = QComboBox()
        for key, text in TEXT_SPLITS.items():
            self.split_combo.addItem(text, key)
        self.split_combo.setToolTip(help_texts["data.text_split"])
        self.train_on_combo = QComboBox()
        self.train_on_combo.addItems(["completion", "all"])
        self.train_on_combo.setToolTip(help_texts["data.train_on"])
        self.train_on_note = QLabel()
        self.train_on_note.setWordWrap(True)
        self.train_on_note.setEnabled(False)  # greyed: it explains, it is not a control
        self.skip_bad_rows = QCheckBox("Skip bad rows (they are counted and reported)")
        self.skip_bad_rows.setToolTip(help_texts["data.skip_bad_rows"])
        self.detected_label = QLabel("No data chosen.")
        self.detected_label.setWordWrap(True)
        self.columns_box = QGroupBox("Columns")
        self.columns_form = QFormLayout(self.columns_box)
        self.columns_box.hide()  # shown with the rows of the data it maps (an empty box read as missing settings)
        self.column_combos: dict[str, QComboBox] = {}
        self.columns_problem = InlineProblem()
        self.general_problem = InlineProblem()
        self.show_tokens = QCheckBox("Show tokens")
        self.show_tokens.setToolTip("Shade every other token, to see where the tokenizer cuts the text.")
        self._previews: list = []
        self.preview = QTextBrowser()
        self.preview.setOpenLinks(False)
        self.preview.document().setDefaultFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        # Built when first shown or given data, with the max length the settings have then.
        self.histogram = LazyPlot(lambda: length_histogram(lambda: self._data().max_length))
        self.histogram.hide()  # until there is data to draw: an empty plot showed a 1023.6–1024.4 axis
        self.histogram_empty = QLabel("The token lengths of the training data are drawn here once it is read.")
        self.histogram_empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.histogram_empty.setWordWrap(True)
        self.histogram_empty.setEnabled(False)  # greyed: a place holder, not a message
        self.stats_label = QLabel()
        self.stats_label.setWordWrap(True)
        self.problems = {"train_files": self.train_box.problem, "validation_files": self.validation_box.problem,
                         "validation_split": self.hold_out_problem, "format": self.format_problem,
                         "columns": self.columns_problem, "": self.general_problem}
        self._build_layout()

        self.train_box.addRequested.connect(self.choose_files)
        self.train_box.removeRequested.connect(self.remove_files)
        self.validation_box.addRequested.connect(self.choose_validation_files)
        self.train_folder.folderChosen.connect(lambda folder: self.add_files([folder]))
        self.validation_folder.folderChosen.connect(lambda folder: self.add_validation_files([folder]))
        self.validation_box.removeRequested.connect(
            lambda doomed: self._update(validation_files=[p for p in self._data().validation_files if p not in doomed]))
        self.hold_out.valueChanged.connect(lambda value: self._update(validation_split=round(value / 100, 4)))
        self.format_combo.activated.connect(lambda: self._update(format=self.format_combo.currentData(), columns={}))
        self.redetect_button.clicked.connect(self.redetect)
        self.alpaca_combo.activated.connect(lambda: self._update(alpaca_template=self.alpaca_combo.currentData()))
        self.split_combo.activated.connect(lambda: self._update(text_split=self.split_combo.currentData()))
        self.train_on_combo.activated.connect(lambda: self._update(train_on=self.train_on_combo.currentText()))
        self.skip_bad_rows.toggled.connect(lambda checked: self._update(skip_bad_rows=checked))
        self.show_tokens.toggled.connect(lambda: self._show_previews(self._previews))
        store.changed.connect(self.refresh)
        self.refresh()

    def _build_layout(self) -> None:
        format_row = QHBoxLayout()
        format_row.addWidget(self.format_combo, 1)
        format_row.addWidget(self.redetect_button)
        settings = QFormLayout()
        settings.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        settings.addRow("Format:", format_row)
        settings.addRow(self.format_problem)
        settings.addRow("Alpaca prompt:", self.alpaca_combo)
        settings.addRow("Split text:", self.split_combo)
        settings.addRow("Train on:", self.train_on_combo)
        settings.addRow(self.train_on_note)
        settings.addRow(self.skip_bad_rows)
        self._settings_form = settings
        hold_out_row = QHBoxLayout()
        hold_out_row.addWidget(QLabel("Without validation files, hold out"))
        hold_out_row.addWidget(self.hold_out)
        hold_out_row.addWidget(QLabel("of the training rows"))
        hold_out_row.addStretch(1)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        # A few rows each: the settings below stay in view; more files scroll.
        self.train_box.files.setMaximumHeight(150)
        self.validation_box.files.setMaximumHeight(100)
        left_layout.addWidget(self.train_box)
        left_layout.addWidget(self.validation_box)
        left_layout.addLayout(hold_out_row)
        left_layout.addWidget(self.hold_out_problem)
        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        line.setFrameShadow(QFrame.Shadow.Sunken)
        left_layout.addWidget(line)
        left_layout.addLayout(settings)
        left_layout.addWidget(self.detected_label)
        left_layout.addWidget(self.general_problem)
        left_layout.addWidget(self.columns_box)
        left_layout.addWidget(self.columns_problem)
        left_layout.addStretch(1)
        scroll = QScrollArea()  # a long error or many columns scroll instead of squeezing the lists
        scroll.setWidget(left)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setMinimumWidth(380)
        right = QSplitter(Qt.Orientation.Vertical)
        preview_box = QWidget()
        preview_layout = QVBoxLayout(preview_box)
        preview_layout.setContentsMargins(0, 0, 0, 0)
        preview_header = QHBoxLayout()
        self.preview_title = QLabel(PREVIEW_TITLE)
        preview_header.addWidget(self.preview_title, 1)
        preview_header.addWidget(self.show_tokens)
        preview_layout.addLayout(preview_header)
        preview_layout.addWidget(self.preview)
        histogram_box = QWidget()
        histogram_layout = QVBoxLayout(histogram_box)
        histogram_layout.setContentsMargins(0, 0, 0, 0)
        histogram_layout.addWidget(self.histogram, 1)
        histogram_layout.addWidget(self.histogram_empty, 1)
        histogram_layout.addWidget(self.stats_label)
        right.addWidget(preview_box)
        right.addWidget(histogram_box)
        # The preview is what a user reads; the histogram is a glance.
        right.setStretchFactor(0, 3)
        right.setStretchFactor(1, 1)
        right.setSizes([700, 240])
        splitter = QSplitter()
        splitter.addWidget(scroll)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)
        splitter.setSizes([560, 840])
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

    # -- settings -------------------------------------------------------------------------------------
    def _data(self):
        return self.store.config.data

    def refresh(self, section: str = "") -> None:
        if section not in ("", "data"):
            return
        data = self._data()
        self.train_box.set_paths(data.train_files)
        self.validation_box.set_paths(data.validation_files)
        for widget, setter in ((self.hold_out, lambda: self.hold_out.setValue(data.validation_split * 100)),
                               (self.skip_bad_rows, lambda: self.skip_bad_rows.setChecked(data.skip_bad_rows)),
                               (self.format_combo, lambda: self.format_combo.setCurrentIndex(
                                   self.format_combo.findData(data.format))),
                               (self.alpaca_combo, lambda: self.alpaca_combo.setCurrentIndex(
                                   self.alpaca_combo.findData(data.alpaca_template))),
                               (self.split_combo, lambda: self.split_combo.setCurrentIndex(
                                   self.split_combo.findData(data.text_split)))):
            widget.blockSignals(True)  # showing a setting is not changing it
            setter()
            widget.blockSignals(False)
        self.hold_out.setEnabled(not data.validation_files)
        self.train_on_combo.setCurrentText(data.train_on)
        if self.histogram.built:  # else it is built with this max length
            self.cut_line.setValue(data.max_length)
        self._show_format_choices()

    def _show_format_choices(self) -> None:
        """Show the choices that apply to the format in use (chosen, or else detected) and grey what does not."""
        data = self._data()
        fmt = data.format if data.format != "auto" else self._detected_format
        self.format_combo.setItemText(0, f"auto (detected: {self._detected_format})" if self._detected_format
                                      else "auto")
        self._settings_form.setRowVisible(self.alpaca_combo, fmt == "alpaca")
        self._settings_form.setRowVisible(self.split_combo, fmt == "text")
        plain = fmt == "text"
        self.train_on_combo.setEnabled(not plain)
        # Greyed, it shows what happens (every token trained), not the setting that has no effect here.
        self.train_on_combo.setCurrentText("all" if plain else self._data().train_on)
        self.train_on_combo.setToolTip(PLAIN_TEXT_TRAIN_ON if plain else field_help()["data.train_on"])
        self.train_on_note.setText(PLAIN_TEXT_TRAIN_ON if plain else "")
        self.train_on_note.setVisible(plain)

    def _update(self, **fields) -> None:
        try:
            self.store.update("data", **fields)
        except ConfigError as exc:
            self.problem.emit("\n".join(exc.problems))
            return
        self.inspectRequested.emit()

    def _start_folder(self) -> str:
        data = self._data()
        last = (data.validation_files or data.train_files)[-1:] or [""]
        return str(Path(last[0]).parent) if last[0] else ""

    def choose_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Training data", self._start_folder(), DATA_FILTER)
        if paths:
            self.add_files(paths)

    def choose_validation_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Validation data", self._start_folder(), DATA_FILTER)
        if paths:
            self.add_validation_files(paths)

    def add_files(self, paths: list[str]) -> None:
        current = list(self._data().train_files)
        self.set_files(current + [p for p in paths if p not in current])

    def add_validation_files(self, paths: list[str]) -> None:
        current = list(self._data().validation_files)
        self._update(validation_files=current + [p for p in paths if p not in current])

    def set_files(self, paths: list[str]) -> None:
        """New training files. When the first one changes the data is new: its format and columns are detected
        again instead of keeping the previous data's."""
        fields: dict = {"train_files": list(paths)}
        if paths[:1] != self._data().train_files[:1]:
            fields.update(format="auto", columns={})
            self._detected_format = None
        self._update(**fields)
        if not paths:  # nothing will be inspected: nothing of the removed files may stay on screen
            self.clear_results()

    def remove_files(self, doomed: list[str]) -> None:
        self.set_files([p for p in self._data().train_files if p not in doomed])

    def remove_selected(self) -> None:
        self.remove_files(self.train_box.selected())

    def redetect(self) -> None:
        self._detected_format = None
        self._update(format="auto", columns={})

    def _set_column(self, role: str, combo: QComboBox) -> None:
        columns = dict(self._data().columns)
        if combo.currentText() == DEFAULT_COLUMN:
            columns.pop(role, None)
        else:
            columns[role] = combo.currentText()
        self._update(columns=columns)

    # -- results --------------------------------------------------------------------------------------
    def _clear_problems(self) -> None:
        for label in self.problems.values():
            label.clear_problem()

    def shown_problems(self) -> dict[str, str]:
        """{setting: text} of the problems on screen (the keys of ``problems``)."""
        return {setting: label.plain_text() for setting, label in self.problems.items() if not label.isHidden()}

    def clear_results(self) -> None:
        """A new run: nothing detected, previewed or refused yet (no error left from the previous run)."""
        self._detected_format = None
        self._previews = []
        self._clear_problems()
        self.detected_label.setText("No data chosen.")
        self.preview.clear()
        self._clear_histogram()
        self.stats_label.clear()
        while self.columns_form.rowCount():
            self.columns_form.removeRow(0)
        self.column_combos.clear()
        self.columns_box.hide()
        self._show_format_choices()

    def show_busy(self) -> None:
        self.detected_label.setText("Reading the data…")

    def show_error(self, message: str) -> None:
        """A problem with the data, beside the control it concerns, in the window's words."""
        problem = describe(message, self._data())
        self._clear_problems()
        self.problems[problem.setting].show_problem(problem.message, problem.hint)
        for box in (self.train_box, self.validation_box):
            box.mark_problem(problem.message)
        self._previews = []
        self.detected_label.setText("The data cannot be used yet: see the message in red.")
        self.preview.setHtml("<p style='color:gray'><i>The preview appears once the data can be read.</i></p>")
        self._clear_histogram()
        self.stats_label.clear()

    def _clear_histogram(self) -> None:
        """Nothing to draw: the empty state in the plot's place (the plot, if built, keeps no old bars)."""
        if self.histogram.built:
            self.bars.setOpts(x0=[], x1=[], height=[])
        self._show_histogram(False)

    def _show_histogram(self, drawn: bool) -> None:
        """The plot when it shows something, else the line that says what will be drawn there."""
        self.histogram.setVisible(drawn)
        self.histogram_empty.setVisible(not drawn)

    def show_result(self, result: dict) -> None:
        for combo in (self.format_combo, self.train_on_combo):
            combo.setEnabled(True)
        self.preview_title.setText(PREVIEW_TITLE)
        self.show_tokens.show()
        info = result["info"]
        self._clear_problems()
        self._detected_format = info.format
        self._show_format_choices()
        for box, summaries in ((self.train_box, info.train_files), (self.validation_box, info.validation_files)):
            box.set_rows({f.path: self._file_note(f, info) for f in summaries})
        lines = [f"Detected format: <b>{info.format}</b> · {info.train_rows:,} training rows"
                 + (f", {info.validation_rows:,} validation rows" if info.validation_rows else "")]
        if info.mapping_file:
            lines.append(f"Format and columns from {html.escape(Path(info.mapping_file).name)} (LLaMA-Factory).")
        if info.format == "text":
            lines.append(self._text_split_note(info))
        if result["previews"] is None:
            lines.append("<i>Open a model to see the tokenized preview.</i>")
        self.detected_label.setText("<br>".join(lines))
        self._show_columns(info)
        if result["previews"] is not None:
            self._show_previews(result["previews"])
        if result["stats"] is not None:
            self._show_stats(result["stats"])

    def _file_note(self, summary, info) -> str:
        if info.format != "text":
            return f"{summary.kind}, {summary.rows:,} rows"
        if self._data().text_split == "paragraphs":
            return f"text, {summary.rows:,} paragraphs"
        return "text, read whole"

    def _text_split_note(self, info) -> str:
        """Plain text is split one way or another; say which, and that it can be changed."""
        split, max_length = self._data().text_split, self._data().max_length
        if split == "paragraphs":
            what = (f"each of the {info.train_rows + info.validation_rows:,} paragraphs (text between blank lines) "
                    "is one example ending with an end-of-sequence token")
        elif split == "chunks":
            what = f"the whole file is cut into examples of {max_length:,} tokens; only the last ends with end-of-sequence"
        else:
            what = f"each file is one example (cut at {max_length:,} tokens)"
        return f"Plain text: {what}. Change it with <i>Split text</i>."

    def _show_columns(self, info) -> None:
        while self.columns_form.rowCount():
            self.columns_form.removeRow(0)
        self.column_combos.clear()
        chosen = self._data().columns
        for role in FORMAT_ROLES.get(info.format, []):
            combo = QComboBox()
            combo.addItems([DEFAULT_COLUMN, *info.columns])
            combo.setCurrentText(chosen.get(role) or info.mapping.get(role) or DEFAULT_COLUMN)
            combo.setToolTip(f"Column that holds the {role!r} of each example.")
            if info.mapping_file:  # its columns and message tags go together: mapping one column here would drop the tags
                combo.setEnabled(False)
                combo.setToolTip(f"Set by {info.mapping_file}. Choose a format to map the columns yourself.")
            combo.activated.connect(lambda _=0, r=role, c=combo: self._set_column(r, c))
            self.columns_form.addRow(f"{role}:", combo)
            self.column_combos[role] = combo
        self.columns_box.setVisible(bool(self.column_combos) and info.format != "text")

    @property
    def bars(self):
        """The histogram's bars (a pyqtgraph BarGraphItem)."""
        return self.histogram.bars

    @property
    def cut_line(self):
        """The max-length line over the histogram."""
        return self.histogram.cut_line

    def _show_previews(self, previews) -> None:
        self._previews = list(previews)
        self.preview.setHtml(preview_html(self._previews, show_tokens=self.show_tokens.isChecked()))

    def show_labels(self, result: dict) -> None:
        """A classification run's data (``core.classification.inspect_labels``): rows, the text/label column
        mapping, and one bar per class, so class imbalance shows before training."""
        labels = result["labels"]
        for combo in (self.format_combo, self.train_on_combo):  # chat formats and loss masks: not for a classifier
            combo.setEnabled(False)
        self.preview_title.setText("Preview — the first examples and their labels:")
        self.show_tokens.hide()
        if labels is None:  # the text or label column is not mapped yet: the combos below say which columns exist
            self.detected_label.setText(f"<span style='color:#d9534f'>{html.escape(result['problem'])}</span>")
        else:
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
        self.preview.setHtml(labelled_preview_html(result.get("samples", []), images=bool(result.get("images"))))
        self.stats_label.setText(draw_class_bars(self.histogram, labels))
        self._show_histogram(labels is not None and labels.problem_type != "regression")

    def _show_stats(self, stats) -> None:
        self.stats_label.setText(draw_length_stats(self.histogram, stats))
        self._show_histogram(True)
