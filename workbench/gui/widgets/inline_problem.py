"""A problem shown where it belongs: a red, word-wrapped line under the control it concerns, hidden when there
is none. The text is selectable so a path in it can be copied."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QSizePolicy

PROBLEM_COLOUR = "#d9534f"


class InlineProblem(QLabel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # Wrapped text needs its height for its width, or a long message is clipped to one line.
        policy = QSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        policy.setHeightForWidth(True)
        self.setSizePolicy(policy)
        self._plain = ""
        self.hide()

    def show_problem(self, message: str, hint: str = "") -> None:
        body = f"<span style='color:{PROBLEM_COLOUR}'>{html.escape(message).replace(chr(10), '<br>')}</span>"
        if hint:  # what to do, in the ordinary text colour: it is advice, not the problem
            body += f"<br>{html.escape(hint)}"
        self.setText(body)
        self._plain = f"{message}\n{hint}" if hint else message
        self.show()

    def clear_problem(self) -> None:
        self.clear()
        self._plain = ""
        self.hide()

    def plain_text(self) -> str:
        """What is shown, without the markup ("" when nothing is)."""
        return "" if self.isHidden() else self._plain
