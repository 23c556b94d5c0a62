"""The line under the layer tree: what the current selection costs, updated on every click.

It shows numbers computed by the core (``count_selection``, ``estimate_for_config``); it computes nothing
itself, so the window and ``workbench inspect`` always agree.
"""

from __future__ import annotations

from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel

from .layer_tree_model import human_count

VERDICT_COLOURS = {"fits": "#2e9d4e", "tight": "#d08a00", "does not fit": "#d9534f", "unknown": "#888888"}


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


class SummaryBar(QFrame):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.trainable = QLabel("No model open")
        self.adapter = QLabel()
        self.memory = QLabel()
        self.verdict = QLabel()
        layout = QHBoxLayout(self)
        for w in (self.trainable, self.adapter, self.memory):
            layout.addWidget(w)
            layout.addSpacing(12)
        layout.addStretch(1)
        layout.addWidget(self.verdict)

    def show_counts(self, counts, estimate, available: int | None, device_text: str) -> None:
        self.trainable.setText(
            f"Trainable: <b>{human_count(counts.trainable_params)}</b> of {human_count(counts.total_params)} "
            f"(<b>{counts.trainable_share:.3%}</b>) in {counts.modules} modules"
        )
        self.trainable.setToolTip(f"{counts.trainable_params:,} trainable of {counts.total_params:,} parameters")
        self.adapter.setText(f"Adapter: <b>{human_bytes(counts.adapter_bytes)}</b>")
        self.memory.setText(f"Memory estimate: <b>{human_bytes(estimate.total)}</b>"
                            + (f" of {human_bytes(available)}" if available else ""))
        self.memory.setToolTip("\n".join(f"{name}: {human_bytes(size)}" for name, size in estimate.parts())
                               + f"\n\nDevice: {device_text}")
        verdict = estimate.verdict(available)
        self.verdict.setText(verdict)
        self.verdict.setStyleSheet(
            f"QLabel {{ color: white; background: {VERDICT_COLOURS[verdict]}; border-radius: 4px; padding: 2px 8px; }}"
        )
        self.verdict.setToolTip("fits: under 85 % of the memory · tight: 85–100 % · does not fit: over 100 %")

    def clear(self) -> None:
        """No model open: no counts, no memory estimate and no verdict left from the previous one."""
        self.show_problem("No model open")
        for w in (self.trainable, self.memory):
            w.setToolTip("")

    def show_problem(self, text: str) -> None:
        self.trainable.setText(text)
        for w in (self.adapter, self.memory, self.verdict):
            w.clear()
        self.verdict.setStyleSheet("")
