"""The Settings tab's "Quantized base and LoRA variant" group: QLoRA's choices and the initialisations, in plain words.

Bound to the window's ``ConfigStore`` like the generated form (``settings_form.py``): every edit goes through
``store.update``, so the engine's schema accepts or refuses it, and a refused value is marked with the schema's
own message. What the generated editors cannot do, and this group does: choices shown with plain names (the run
file keeps ``nf4``), a line under each choice saying when it helps, the double-quantization box only for 4-bit,
and the quantization disabled with the reason (and the command that fixes it) when bitsandbytes is not installed.
"""

from __future__ import annotations

import html

from PySide6.QtWidgets import QCheckBox, QComboBox, QFormLayout, QGroupBox, QLabel, QLineEdit, QWidget

from workbench.core.config import ConfigError
from workbench.core.lora_init import INITS
from workbench.core.quantization import BNB_OPTIMIZERS, BNB_PIN, PAGED_OPTIMIZERS, QUANTIZATIONS, backend_available

# (run-file value, what the window calls it); the descriptions come from core (QUANTIZATIONS / INITS).
QUANT_CHOICES = (("none", "None (the base in its own dtype)"), ("int8", "8-bit (LLM.int8)"),
                 ("nf4", "4-bit NF4 (QLoRA's choice)"), ("fp4", "4-bit FP4"))
COMPUTE_DTYPES = (("auto", "auto (float32 on the CPU, bfloat16 on a GPU)"), ("float32", "float32"),
                  ("bfloat16", "bfloat16"), ("float16", "float16"))
# pissa_niter_N is a family: an example is listed; any N can be typed into the editable box.
INIT_CHOICES = tuple(name for name in INITS if name != "pissa_niter_N") + ("pissa_niter_4",)
NOTE_STYLE = "color: #606060"
ERROR_STYLE = "color: #d9534f"
INTRO = ("Hold the frozen base model in 8 or 4 bits while the adapter trains (QLoRA): about half (8-bit) or a "
         "quarter (4-bit) of bf16's memory, for a small loss of quality. The adapter itself trains in full precision, "
         "and merges and exports use the original, unquantized weights.")


def _note() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(NOTE_STYLE)
    label.setMinimumWidth(320)  # a readable line, not the width of the combo box above it
    label.setMaximumWidth(420)
    return label


def init_description(name: str) -> str:
    return INITS["pissa_niter_N"] if name.startswith("pissa_niter_") else INITS.get(name, "")


class QuantizationSettings(QGroupBox):
    """Edits model.quantization, model.double_quant, model.dtype (the compute dtype), lora.init and
    training.loraplus_lr_ratio."""

    def __init__(self, store, parent: QWidget | None = None):
        super().__init__("Quantized base and LoRA variant", parent)
        self.store = store
        self.available = backend_available()
        form = QFormLayout(self)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.FieldsStayAtSizeHint)
        intro = _note()
        intro.setText(INTRO)
        form.addRow(intro)

        self.quantization = QComboBox(objectName="model.quantization")
        for value, text in QUANT_CHOICES:
            self.quantization.addItem(text, value)
            self.quantization.setItemData(self.quantization.count() - 1, QUANTIZATIONS[value], 3)  # ToolTipRole
        self.quantization.activated.connect(lambda _: self._commit("model", quantization=self.quantization.currentData()))
        self.quantization_note = _note()
        self.unavailable = QLabel()
        self.unavailable.setWordWrap(True)
        self.unavailable.setStyleSheet(ERROR_STYLE)
        self.unavailable.setMaximumWidth(420)
        self.unavailable.setTextInteractionFlags(self.unavailable.textInteractionFlags() | _selectable())
        if not self.available:
            self.unavailable.setText("Unavailable: quantized bases need bitsandbytes, which is not installed. "
                                     f"Install it with <code>pip install {html.escape(BNB_PIN)}</code> and restart.")
        self.unavailable.setVisible(not self.available)
        form.addRow("Quantization", self.quantization)
        form.addRow("", self.quantization_note)
        form.addRow("", self.unavailable)

        self.double_quant = QCheckBox("Double quantization", objectName="model.double_quant")
        self.double_quant.setToolTip("4-bit bases only: quantize the quantization constants too, which saves about "
                                     "0.4 bit per weight (about 3 GB on a 65B model) at no measurable quality cost.")
        self.double_quant.clicked.connect(lambda checked: self._commit("model", double_quant=checked))
        form.addRow("", self.double_quant)

        self.compute_dtype = QComboBox(objectName="model.dtype.compute")
        for value, text in COMPUTE_DTYPES:
            self.compute_dtype.addItem(text, value)
        self.compute_dtype.setToolTip("The dtype 4-bit weights are turned back into for each multiplication, and the "
                                      "dtype of the rest of the model. The same setting as Hardware › Base weights "
                                      "dtype. On the CPU bitsandbytes computes in float32 or bfloat16 only.")
        self.compute_dtype.activated.connect(lambda _: self._commit("model", dtype=self.compute_dtype.currentData()))
        form.addRow("Compute dtype", self.compute_dtype)

        self.init = QComboBox(objectName="lora.init")
        self.init.setEditable(True)  # pissa_niter_N takes any N
        for name in INIT_CHOICES:
            self.init.addItem(name, name)
            self.init.setItemData(self.init.count() - 1, init_description(name), 3)
        self.init.activated.connect(lambda _: self._commit("lora", init=self.init.currentText().strip()))
        self.init.lineEdit().editingFinished.connect(lambda: self._commit("lora", init=self.init.currentText().strip()))
        self.init_note = _note()
        form.addRow("Initialisation", self.init)
        form.addRow("", self.init_note)

        self.loraplus = QLineEdit(objectName="training.loraplus_lr_ratio")
        self.loraplus.setPlaceholderText("not set (one learning rate)")
        self.loraplus.setFixedWidth(260)
        self.loraplus.setToolTip("LoRA+: the B matrices learn this many times faster than A (16 is typical). Often "
                                 "reaches the same loss in fewer steps, at no extra cost.")
        self.loraplus.editingFinished.connect(self._commit_loraplus)
        form.addRow("LoRA+ ratio", self.loraplus)
        self.problem = QLabel()
        self.problem.setWordWrap(True)
        self.problem.setStyleSheet(ERROR_STYLE)
        self.problem.setMaximumWidth(420)
        self.problem.hide()
        form.addRow("", self.problem)
        store.changed.connect(self.refresh)
        self.refresh()

    def mark_optimizers(self, combo: QComboBox) -> None:
        """The Optimisation group's optimizer box: bitsandbytes' optimizers listed but disabled, with the reason,
        when it is not installed; the paged ones say they need a CUDA GPU."""
        for i in range(combo.count()):
            name = combo.itemText(i)
            if name not in BNB_OPTIMIZERS:
                continue
            tip = "8-bit optimizer state (bitsandbytes): about a quarter of AdamW's state memory."
            if name in PAGED_OPTIMIZERS:
                tip += " Paged: moves its state to CPU memory when the GPU runs out (CUDA only)."
            if not self.available:
                combo.model().item(i).setEnabled(False)
                tip = f"Needs bitsandbytes, which is not installed (pip install {BNB_PIN}). " + tip
            combo.setItemData(i, tip, 3)  # ToolTipRole

    # -- from the store ---------------------------------------------------------------------------------
    def refresh(self, section: str = "") -> None:
        config = self.store.config
        model, lora = config.model, config.lora
        for combo, value in ((self.quantization, model.quantization), (self.compute_dtype, model.dtype)):
            combo.blockSignals(True)
            combo.setCurrentIndex(max(combo.findData(value), 0))
            combo.blockSignals(False)
        # Without bitsandbytes the choice cannot be changed, but a run file's setting still shows (the run
        # itself is refused with the same reason).
        self.quantization.setEnabled(self.available)
        four_bit = model.quantization in ("nf4", "fp4")
        self.double_quant.setChecked(model.double_quant)
        self.double_quant.setEnabled(self.available and four_bit)
        self.quantization_note.setText(self._quantization_text(model.quantization))
        if not self.init.lineEdit().hasFocus() or section == "":
            self.init.blockSignals(True)
            self.init.setEditText(lora.init)
            self.init.blockSignals(False)
        self.init_note.setText(self._init_text(lora.init, model.quantization))
        ratio = config.training.loraplus_lr_ratio
        if not self.loraplus.hasFocus() or section == "":
            self.loraplus.setText("" if ratio is None else f"{ratio:g}")
        if section == "":
            self._show_problem("")

    @staticmethod
    def _quantization_text(quantization: str) -> str:
        if quantization == "none":
            return "The base is held in the compute dtype below: the most memory, the exact model."
        text = QUANTIZATIONS[quantization]
        return (text[0].upper() + text[1:] + ". Gradient checkpointing is on by default with a quantized base "
                "(Hardware › Gradient checkpointing, when set, decides).")

    @staticmethod
    def _init_text(init: str, quantization: str) -> str:
        text = init_description(init)
        if text:
            text = text[0].upper() + text[1:] + "."
        if init == "loftq" and quantization != "nf4":
            text += " Needs a 4-bit NF4 base: set Quantization to 4-bit NF4, or the run is refused."
        return text

    # -- to the store -----------------------------------------------------------------------------------
    def _commit(self, section: str, **fields) -> None:
        try:
            self.store.update(section, **fields)
            self._show_problem("")
        except ValueError as exc:  # ConfigError is a ValueError: the schema's own words
            self._show_problem(_message(exc))
            self.refresh(section)

    def _commit_loraplus(self) -> None:
        text = self.loraplus.text().strip()
        if not text:
            self._commit("training", loraplus_lr_ratio=None)
            return
        try:
            value = float(text)
        except ValueError:
            self._show_problem(f"LoRA+ ratio: {text!r} is not a number (e.g. 16)")
            return
        self._commit("training", loraplus_lr_ratio=value)

    def _show_problem(self, text: str) -> None:
        self.problem.setText(text)
        self.problem.setVisible(bool(text))

    @property
    def valid(self) -> bool:
        return not self.problem.text()


def _message(exc: ValueError) -> str:
    if isinstance(exc, ConfigError) and exc.problems:
        return "; ".join(exc.problems)
    return str(exc)


def _selectable():
    from PySide6.QtCore import Qt

    return Qt.TextInteractionFlag.TextSelectableByMouse
