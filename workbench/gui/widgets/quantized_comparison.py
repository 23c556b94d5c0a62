"""The playground's comparison of an adapter on the unquantized base and on a quantized one (QLoRA's base).

An adapter trained on a 4-bit or 8-bit base is merged into, exported with and answered by the *unquantized*
weights, so its outputs differ a little from what training saw. This box shows by how much, for the prompt in the
playground: the largest and mean |Δlogit|, how often the most likely next token agrees, and for scale how far the
adapter itself moves the base's logits. The numbers are ``core.quantized_eval``'s, computed by a
``CompareQuantizedWorker`` (two models loaded one after the other, off the GUI thread).
"""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from workbench.core.quantization import BNB_PIN, backend_available

CHOICES = (("nf4", "4-bit NF4"), ("fp4", "4-bit FP4"), ("int8", "8-bit"))
ERROR = "color:#c83232"


class QuantizedComparisonBox(QGroupBox):
    compareRequested = Signal(object)  # the worker, for the window to start
    compared = Signal(object)  # the QuantizedComparison
    busyChanged = Signal(bool)

    def __init__(self, playground):
        super().__init__("The adapter on a quantized base")
        self.playground = playground
        self.running = False
        self._generating = False
        self._worker = None
        self.available = backend_available()
        self.quantization = QComboBox()
        for value, text in CHOICES:
            self.quantization.addItem(text, value)
        self.double_quant = QCheckBox("Double quantization", checked=True)
        self.quantization.currentIndexChanged.connect(
            lambda _: self.double_quant.setEnabled(self.available and self.quantization.currentData() != "int8"))
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip("Run the prompt through the adapter on the base as stored and on the base "
                                       "quantized as chosen, and show how far apart the next-token logits are.")
        self.compare_button.clicked.connect(self.compare)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.result = QLabel()
        self.result.setWordWrap(True)
        self.result.setTextFormat(Qt.TextFormat.RichText)
        self.result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        if self.available:
            self.result.setText("An adapter trained on a 4-bit or 8-bit base answers here, and after a merge or an "
                                "export, from the unquantized weights. Compare shows how much that changes its "
                                "next-token logits for the prompt above.")
        else:
            self.result.setText(f"<span style='{ERROR}'>Unavailable: the comparison needs bitsandbytes, which is "
                                f"not installed. Install it with <code>pip install {html.escape(BNB_PIN)}</code> "
                                "and restart.</span>")
        row = QHBoxLayout()
        row.addWidget(QLabel("Quantization"))
        row.addWidget(self.quantization)
        row.addWidget(self.double_quant)
        row.addStretch(1)
        row.addWidget(self.compare_button)
        row.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.result)
        playground.adapter_edit.textChanged.connect(self._adapter_changed)
        self._update()

    def _update(self) -> None:
        self.quantization.setEnabled(self.available and not self.running)
        self.double_quant.setEnabled(self.available and not self.running and self.quantization.currentData() != "int8")
        self.compare_button.setEnabled(self.available and not self.running and not self._generating)
        self.stop_button.setEnabled(self.running)

    def set_generating(self, generating: bool) -> None:
        """The playground generates: one job on its prompt at a time."""
        self._generating = generating
        self._update()

    def _adapter_changed(self, adapter: str) -> None:
        """A run's adapter: preselect the quantization it was trained on (from its run.toml)."""
        trained = trained_quantization_of(adapter.strip())
        if trained is not None:
            self.quantization.setCurrentIndex(max(self.quantization.findData(trained[0]), 0))
            self.double_quant.setChecked(trained[1])

    def loaded_note(self, adapter: str) -> str:
        """A sentence for the playground's status when the loaded adapter was trained on a quantized base."""
        trained = trained_quantization_of(adapter)
        if trained is None:
            return ""
        return (f" This adapter was trained on a base quantized to {trained[0]}; these answers come from the "
                "unquantized base. Compare (below) shows the difference.")

    def compare(self) -> None:
        if self.running or not self.available:
            return
        from ..quantized_workers import CompareQuantizedWorker

        pg = self.playground
        base, adapter, prompt = pg.base_edit.text().strip(), pg.adapter_edit.text().strip(), pg.prompt.toPlainText()
        if not base or not adapter:
            self._show_error("Choose both the base model and the adapter.")
            return
        if not prompt.strip():
            self._show_error("Type a prompt first: the comparison runs it through both bases.")
            return
        quantization = self.quantization.currentData()
        worker = CompareQuantizedWorker(base, adapter, [prompt], quantization, self.double_quant.isChecked())
        worker.stage.connect(lambda text: self.result.setText(f"Comparing: {html.escape(text)}…"))
        worker.result.connect(self._show_result)
        worker.failed.connect(lambda message, _details: self._show_error(message))
        worker.finished.connect(self._ended)
        self._worker = worker
        self._set_running(True)
        self.result.setText(f"Loading the base as stored, then quantized to {quantization}, and running the prompt "
                            "through both…")
        self.compareRequested.emit(worker)

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self.result.setText("Stopping…")

    def _set_running(self, running: bool) -> None:
        self.running = running
        self._update()
        self.busyChanged.emit(running)

    def _ended(self) -> None:
        self._worker = None
        self._set_running(False)
        if self.result.text() == "Stopping…":
            self.result.setText("Stopped.")

    def _show_error(self, message: str) -> None:
        self.result.setText(f"<span style='{ERROR}'>{html.escape(message)}</span>")

    def _show_result(self, comparison) -> None:
        if comparison is None:  # stopped between the two models
            self.result.setText("Stopped.")
            return
        self.result.setText(comparison_html(comparison))
        self.compared.emit(comparison)


def trained_quantization_of(adapter: str) -> tuple[str, bool] | None:
    """(quantization, double quant) a run's adapter was trained with; None for an unquantized run or another
    adapter. Reads one small run.toml (no model), so the GUI thread may call it."""
    if not adapter or not (Path(adapter).parent / "run.toml").is_file():
        return None
    from workbench.core.quantized_eval import trained_quantization

    return trained_quantization(adapter)


def comparison_html(c) -> str:
    """The comparison as a sentence and a table, one row per prompt."""
    q = c.quantization + (" (double quantization)" if c.double_quant and c.quantization != "int8" else "")
    head = (f"On the <b>{html.escape(q)}</b> base the adapter's next-token logits differ from the unquantized "
            f"base's by at most <b>{c.max_abs_diff:.4g}</b>; the most likely next token agrees at "
            f"<b>{c.top1_agreement:.1%}</b> of the prompt's positions. For scale, the adapter itself moves the "
            f"unquantized base's logits by up to {max(p.adapter_effect for p in c.prompts):.4g} ({c.dtype}).")
    rows = "".join(
        f"<tr><td>{p.tokens}</td><td>{p.max_abs_diff:.4g}</td><td>{p.mean_abs_diff:.4g}</td>"
        f"<td>{p.top1_agreement:.1%}</td><td>{p.adapter_effect:.4g}</td>"
        f"<td><code>{html.escape(repr(p.next_token_unquantized))}</code> / "
        f"<code>{html.escape(repr(p.next_token_quantized))}</code></td></tr>" for p in c.prompts)
    table = ("<table cellspacing='0' cellpadding='3' border='1'><tr><th>tokens</th><th>max |Δlogit|</th>"
             "<th>mean |Δlogit|</th><th>top-1 agreement</th><th>adapter's own effect</th>"
             "<th>next token: unquantized / quantized</th></tr>" + rows + "</table>")
    return head + "<br>" + table
