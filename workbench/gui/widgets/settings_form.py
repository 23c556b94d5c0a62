"""LoRA and training settings: one editor per ``RunConfig`` field, bound to the window's ``ConfigStore``.

Editors are generated from the schema (bool → check box, Literal → combo box, numbers and text → line
edit, lists → one entry per line), so the form cannot drift from what the engine accepts. Every edit is
validated by the schema as it is typed; a refused value stays in the editor, marked, with the schema's own
message under it, and the configuration keeps its last valid value. Tooltips are the field descriptions.
"""

from __future__ import annotations

import html
import types
import typing
from typing import Any, Literal

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QScrollArea, QVBoxLayout,
    QWidget,
)

from workbench.core.config import ConfigError, RunConfig, field_help

from .quantization_settings import QuantizationSettings

GROUPS: list[tuple[str, list[str]]] = [
    ("LoRA", ["lora.r", "lora.alpha", "lora.dropout", "lora.use_rslora", "lora.use_dora", "lora.bias"]),
    ("Optimisation", ["training.learning_rate", "training.epochs", "training.max_steps", "training.batch_size",
                      "training.gradient_accumulation", "data.max_length", "data.packing", "training.scheduler",
                      "training.warmup_ratio", "training.weight_decay", "training.max_grad_norm", "training.optimizer",
                      "training.seed"]),
    ("Hardware", ["training.precision", "training.device", "training.gradient_checkpointing", "training.compile",
                  "training.oom_retry", "model.dtype"]),
    ("Evaluation, checkpoints and samples", ["training.logging_steps", "training.eval_steps", "training.save_steps",
                                             "training.save_total_limit", "training.sample_steps",
                                             "training.sample_prompts", "training.sample_max_new_tokens"]),
    ("Output", ["output.runs_root", "output.name"]),
    ("Task", ["model.task", "model.problem_type", "model.labels", "training.method", "training.beta",
              "model.init_adapter"]),
]

RIGHT_COLUMN = {"Optimisation", "Output", "Task"}
EDITOR_WIDTH = 260
ERROR_WIDTH = EDITOR_WIDTH + 120

LABELS = {
    "lora.r": "Rank", "lora.use_rslora": "rsLoRA", "lora.use_dora": "DoRA", "lora.init": "Initialisation",
    "training.max_steps": "Max steps", "training.gradient_accumulation": "Gradient accumulation",
    "data.max_length": "Max length (tokens)", "model.dtype": "Base weights dtype", "output.runs_root": "Runs folder",
    "output.name": "Run name", "training.sample_prompts": "Sample prompts (one per line)",
    "training.oom_retry": "Retry out-of-memory steps",
    "training.compile": "Compile (torch.compile)",
    "model.labels": "Classes (one per line; empty: from the data)",
    "model.init_adapter": "Start from adapter",
}
ERROR_STYLE = "color: #d9534f"
# What a ``bool | None`` field offers: None is the engine's own choice, which the field's help text describes.
OPTIONAL_BOOL_CHOICES: dict[str, bool | None] = {"automatic": None, "on": True, "off": False}


def _field_info(key: str):
    section, name = key.split(".")
    section_cls = RunConfig.model_fields[section].annotation
    return section_cls.model_fields[name]  # type: ignore[union-attr]


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


class FieldEditor:
    """One field: its editor widget, how to read a value out of it and how to show a value in it."""

    def __init__(self, key: str, on_edit):
        self.key = key
        self.section, self.name = key.split(".")
        annotation, self.optional = _unwrap_optional(_field_info(key).annotation)
        self.kind = ("bool" if annotation is bool else "choice" if typing.get_origin(annotation) is Literal
                     else "list" if typing.get_origin(annotation) is list else annotation.__name__)
        if self.kind == "bool" and self.optional:
            # Unset means "the engine decides" (e.g. gradient checkpointing: on for quantized bases); a check box
            # can only say on or off, so it showed "off" for a setting the run would turn on.
            self.kind = "optional bool"
            self.widget = QComboBox()
            self.widget.addItems(list(OPTIONAL_BOOL_CHOICES))
            self.widget.activated.connect(on_edit)
        elif self.kind == "bool":
            self.widget = QCheckBox()
            self.widget.clicked.connect(on_edit)
        elif self.kind == "choice":
            self.widget = QComboBox()
            self.widget.addItems([str(a) for a in typing.get_args(annotation)])
            self.widget.activated.connect(on_edit)
        elif self.kind == "list":
            self.widget = QPlainTextEdit()
            self.widget.setFixedHeight(70)
            self.widget.textChanged.connect(on_edit)
        else:
            self.widget = QLineEdit()
            if self.optional:
                self.widget.setPlaceholderText("not set")
            self.widget.textEdited.connect(on_edit)
        self.widget.setObjectName(key)
        if self.kind in ("list", "str", "int", "float"):
            self.widget.setFixedWidth(EDITOR_WIDTH)
        self.label = LABELS.get(key, self.name.replace("_", " ").capitalize())
        self.error = QLabel()
        self.error.setFixedWidth(ERROR_WIDTH)  # known up front, so the height of its lines can be (set_problem)
        self.error.setStyleSheet(ERROR_STYLE)
        self.error.setWordWrap(True)
        self.error.hide()

    def value(self) -> Any:
        """The typed value in the editor; raises ValueError with a readable message for unparsable text."""
        w = self.widget
        if self.kind == "bool":
            return w.isChecked()
        if self.kind == "optional bool":
            return OPTIONAL_BOOL_CHOICES[w.currentText()]
        if self.kind == "choice":
            return w.currentText()
        if self.kind == "list":
            return [line.strip() for line in w.toPlainText().splitlines() if line.strip()]
        text = w.text().strip()
        if not text:
            if self.optional:
                return None
            if self.kind == "str":
                return ""
            raise ValueError("a value is required")
        if self.kind == "int":
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"{text!r} is not a whole number") from None
        if self.kind == "float":
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"{text!r} is not a number (e.g. 0.0002 or 2e-4)") from None
        return text

    def show(self, value: Any) -> None:
        w = self.widget
        w.blockSignals(True)
        if self.kind == "bool":
            w.setChecked(bool(value))
        elif self.kind == "optional bool":
            w.setCurrentText(next(text for text, v in OPTIONAL_BOOL_CHOICES.items() if v is value))
        elif self.kind == "choice":
            w.setCurrentText(str(value))
        elif self.kind == "list":
            if self.value() != list(value):  # keep the cursor where it is while the user types
                w.setPlainText("\n".join(value))
        else:
            try:
                unchanged = self.value() == value
            except ValueError:
                unchanged = False
            if not unchanged:  # "2e-4" typed by the user stays "2e-4", not "0.0002"
                w.setText("" if value is None else f"{value:g}" if isinstance(value, float) else str(value))
        w.blockSignals(False)

    def set_problem(self, text: str) -> None:
        self.error.setText(text)
        # The height of all its lines, set: a form row sizes a wrapped label from its one-line size hint, which
        # clipped a longer message to its first line.
        self.error.setFixedHeight(max(self.error.heightForWidth(ERROR_WIDTH), self.error.fontMetrics().height()))
        self.error.setVisible(bool(text))
        self.widget.setStyleSheet("border: 1px solid #d9534f;" if text and self.kind != "bool" else "")


class SettingsForm(QScrollArea):

    def __init__(self, store, parent=None):
        super().__init__(parent)
        self.store = store
        self.editors: dict[str, FieldEditor] = {}
        help_texts = field_help()
        body = QWidget()
        outer = QVBoxLayout(body)
        # What is wrong, above the form, each with a link to its field: an error under a field in the other
        # column or below the fold was easy to miss, and "Cannot start training" named fields by key only.
        self.problem_banner = QLabel()
        self.problem_banner.setWordWrap(True)
        self.problem_banner.setTextFormat(Qt.TextFormat.RichText)
        self.problem_banner.setStyleSheet(ERROR_STYLE)
        self.problem_banner.linkActivated.connect(self.focus_field)
        self.problem_banner.hide()
        outer.addWidget(self.problem_banner)
        columns = QHBoxLayout()
        outer.addLayout(columns, 1)
        left, right = QVBoxLayout(), QVBoxLayout()
        # The two columns in the middle, not pressed to the left edge with 40 % of a wide window empty.
        columns.addStretch(1)
        columns.addLayout(left)
        columns.addSpacing(24)
        columns.addLayout(right)
        columns.addStretch(1)
        labels_by_column: dict[bool, list[QLabel]] = {}
        for title, keys in GROUPS:
            box = QGroupBox(title)
            form = QFormLayout(box)
            form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.FieldsStayAtSizeHint)
            for key in keys:
                editor = FieldEditor(key, lambda *_, k=key: self._commit(k))
                tip = help_texts.get(key, "")
                editor.widget.setToolTip(f"<b>{key}</b><br>{tip}")
                label = QLabel(editor.label)
                label.setBuddy(editor.widget)
                label.setToolTip(editor.widget.toolTip())
                holder = QWidget()
                holder_layout = QVBoxLayout(holder)
                holder_layout.setContentsMargins(0, 0, 0, 0)
                holder_layout.setSpacing(2)
                holder_layout.addWidget(editor.widget)
                holder_layout.addWidget(editor.error)
                form.addRow(label, holder)
                self.editors[key] = editor
                labels_by_column.setdefault(title in RIGHT_COLUMN, []).append(label)
            (right if title in RIGHT_COLUMN else left).addWidget(box)
            if title == "LoRA":  # lora.init and QLoRA's choices: a group of their own (quantization_settings.py)
                self.quantization = QuantizationSettings(store)
                left.addWidget(self.quantization)
        self.quantization.mark_optimizers(self.editors["training.optimizer"].widget)
        # One label width per column, so the editors of its groups line up instead of each group's own.
        for labels in labels_by_column.values():
            width = max(label.sizeHint().width() for label in labels)
            for label in labels:
                label.setMinimumWidth(width)
        left.addStretch(1)
        right.addStretch(1)
        self.setWidget(body)
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.Shape.NoFrame)
        store.changed.connect(self.refresh)
        self.refresh()

    @property
    def valid(self) -> bool:
        return not any(e.error.text() for e in self.editors.values()) and self.quantization.valid

    def problems(self) -> list[str]:
        """Each refused value as "Label (section.name): message": the label is what the form shows, the key
        what the run file and the command line call it."""
        return ([f"{e.label} ({k}): {e.error.text()}" for k, e in self.editors.items() if e.error.text()]
                + ([self.quantization.problem.text()] if not self.quantization.valid else []))

    def first_problem(self) -> str | None:
        return next((k for k, e in self.editors.items() if e.error.text()), None)

    def focus_field(self, key: str) -> None:
        """Scroll to a field and put the cursor in it (the links of the problem banner, and Start refused)."""
        editor = self.editors.get(key)
        if editor is None:
            return
        self.ensureWidgetVisible(editor.widget, 50, 50)
        editor.widget.setFocus(Qt.FocusReason.OtherFocusReason)
        if isinstance(editor.widget, QLineEdit):
            editor.widget.selectAll()

    def _update_banner(self) -> None:
        bad = [(k, e) for k, e in self.editors.items() if e.error.text()]
        self.problem_banner.setVisible(bool(bad))
        if bad:
            items = "".join(f"<li><a href='{k}'>{html.escape(e.label)}</a>: {html.escape(e.error.text())}</li>"
                            for k, e in bad)
            self.problem_banner.setText(f"<b>{len(bad)} setting{'s' if len(bad) > 1 else ''} not accepted</b> "
                                        f"(the run keeps the last valid value):<ul style='margin:0'>{items}</ul>")

    def refresh(self, section: str = "") -> None:
        """Show the store's values; a whole new configuration also clears the marks of refused edits."""
        for editor in self.editors.values():
            if section and editor.section != section:
                continue
            if not section:
                editor.set_problem("")
            if not editor.error.text():
                editor.show(getattr(getattr(self.store.config, editor.section), editor.name))
        self._update_banner()

    def _commit(self, key: str) -> None:
        editor = self.editors[key]
        try:
            self.store.update(editor.section, **{editor.name: editor.value()})
            editor.set_problem("")
        except ValueError as exc:  # ConfigError is a ValueError too
            editor.set_problem(self._message(exc))
        self._update_banner()

    @staticmethod
    def _message(exc: ValueError) -> str:
        if isinstance(exc, ConfigError) and exc.problems:
            # "lora.r: got 0 — the rank must be …" → the part after the dash; the field is right above it.
            problem = exc.problems[0]
            return problem.split(" — ", 1)[1] if " — " in problem else problem
        return str(exc)
