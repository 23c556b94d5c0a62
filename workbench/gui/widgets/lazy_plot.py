"""Plots built on first show: the window's first paint imports neither pyqtgraph nor numpy.

pyqtgraph (and numpy under it) cost about a second of a three-second first paint, for plots that sit on
tabs nobody has opened yet. A ``LazyPlot`` stands where a plot goes and builds the real one, from a factory
that imports the plot's module, when it is first shown or first used (any attribute the placeholder lacks
is the plot's: data given to a hidden plot builds it then, so nothing needs buffering and every call keeps
its meaning). The warm-up worker imports pyqtgraph in the background after the first paint, so building the
first plot does not stall the window on the import.

This module imports only Qt: the plot modules that import pyqtgraph at their top are imported by factories.
"""

from __future__ import annotations

from typing import Callable

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QSizePolicy, QVBoxLayout, QWidget


class LazyPlot(QWidget):
    """A placeholder that becomes ``build()``'s widget when shown or when one of the widget's attributes is
    asked for."""

    def __init__(self, build: Callable[[], QWidget], parent=None):
        super().__init__(parent)
        self._build = build
        self._plot: QWidget | None = None
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)  # as a plot's
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)

    @property
    def built(self) -> bool:
        return self._plot is not None

    def widget(self) -> QWidget:
        """The real plot, built now if it was not yet."""
        if self._plot is None:
            self._plot = self._build()
            self.setSizePolicy(self._plot.sizePolicy())
            self.layout().addWidget(self._plot)
            if self.isVisible():  # a child added to a shown widget stays hidden until told
                self._plot.show()
        return self._plot

    def showEvent(self, event) -> None:
        self.widget()
        super().showEvent(event)

    def __getattr__(self, name: str):
        # Called only for names QWidget and this class lack: those are the plot's. Private names are not
        # forwarded, so that a half-constructed placeholder never builds its plot.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.widget(), name)


def metrics_plots() -> QWidget:
    """The live training plots (loss, learning rate, …), for the Train and Runs tabs."""
    from .plots import MetricsPlots

    return MetricsPlots()


def evaluation_plots() -> QWidget:
    """Task metrics, retention and perplexity per evaluation, for the Train and Runs tabs."""
    from .eval_plots import EvaluationPlots

    return EvaluationPlots()


def preference_plots() -> QWidget:
    """A preference run's reward margin, chosen/rejected rewards and accuracy, for the Train tab."""
    from .preference_plots import PreferencePlots

    return PreferencePlots()


def follow_palette(widget, plots: list) -> None:
    """Background, axes and titles in the palette's colours, so plots follow the light or dark theme."""
    import pyqtgraph as pg  # imported already: there is a plot to colour

    palette = widget.palette()
    widget.setBackground(palette.color(QPalette.ColorRole.Base))
    text = palette.color(QPalette.ColorRole.Text)
    legend_background = QColor(palette.color(QPalette.ColorRole.Base))
    legend_background.setAlpha(220)  # opaque enough to read over a curve, still hinting at what is behind
    for plot in plots:
        legend = plot.legend
        if legend is not None:  # pyqtgraph's default is a pale grey label on a transparent box
            legend.setLabelTextColor(text)
            legend.setBrush(pg.mkBrush(legend_background))
            legend.setPen(pg.mkPen(palette.color(QPalette.ColorRole.Mid)))
        for name in ("left", "bottom"):
            axis = plot.getAxis(name)
            axis.setTextPen(text)
            axis.setPen(palette.color(QPalette.ColorRole.Mid))
            if axis.labelText:
                axis.setLabel(axis.labelText, units=axis.labelUnits, color=text.name())
        title = plot.property("plot_title")
        if title:
            plot.setTitle(title, color=text.name())
