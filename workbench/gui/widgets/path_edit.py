"""A path box that, when it is not being edited, shows a long path elided in the middle.

A plain QLineEdit scrolled to the cursor shows the end or the start of a long path and cuts the other, and
either end matters: the start says which disk or project, the end which folder (``…/merged`` or
``…/portable``). Elided in the middle (``/home/me/…/runs/llama-0312/merged``) both stay in view; the full
path is in the tooltip, and editing shows it whole.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QPainter, QPalette
from PySide6.QtWidgets import QLineEdit, QStyle, QStyleOptionFrame


class PathEdit(QLineEdit):
    def __init__(self, text: str = "", parent=None):
        super().__init__(text, parent)
        self.textChanged.connect(self.setToolTip)
        self.setToolTip(text)

    def _text_rect(self):
        option = QStyleOptionFrame()
        self.initStyleOption(option)
        rect = self.style().subElementRect(QStyle.SubElement.SE_LineEditContents, option, self)
        margins = self.textMargins()
        # QLineEdit's own horizontal margin inside the contents rectangle (qlineedit_p.h: horizontalMargin = 2).
        return rect.adjusted(margins.left() + 2, margins.top(), -margins.right() - 2, -margins.bottom())

    def displayed_text(self) -> str:
        """What the box shows now: the whole text while it is edited or fits, else the text elided in the middle."""
        width = self._text_rect().width()
        if self.hasFocus() or not self.text() or self.fontMetrics().horizontalAdvance(self.text()) <= width:
            return self.text()
        return self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideMiddle, width)

    def paintEvent(self, event) -> None:
        shown = self.displayed_text()
        if shown == self.text():
            super().paintEvent(event)
            return
        painter = QPainter(self)
        option = QStyleOptionFrame()
        self.initStyleOption(option)
        self.style().drawPrimitive(QStyle.PrimitiveElement.PE_PanelLineEdit, option, painter, self)
        role = QPalette.ColorRole.Text if self.isEnabled() else QPalette.ColorRole.PlaceholderText
        painter.setPen(self.palette().color(role))
        painter.drawText(self._text_rect(), int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), shown)
        painter.end()
