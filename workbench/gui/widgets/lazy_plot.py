"""Plots built on first show: the window's first paint imports neither pyqtgraph nor numpy.

pyqtgraph (and numpy under it) cost about a second of a three-second first paint, for plots that sit on
tabs nobody has opened yet. A ``LazyPlot`` stands where a plot goes and builds the real one, from a factory
that imports the plot's module, when it is first shown or first used (any attribute the placeholder lacks
is the plot's: data given to a hidden plot builds it then, so nothing needs buffering and every call keeps
its meaning). The warm-up worker imports pyqtgraph in the background after the first paint, so building the
first plot does not stall the window on the import; then the Train tab's plots are built ahead of time
(``LazyPlot.prebuild``), a piece of a plot (its view, its axes, its item, its curves) per quick event-loop turn
(``IdleSteps`` with ``when_idle``), so that Start does not build them and no piece adds to other work of a turn.

This module imports only Qt: the plot modules that import pyqtgraph at their top are imported by factories.
"""

from __future__ import annotations

import inspect
import time
from typing import Callable, Generator

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QSizePolicy, QVBoxLayout, QWidget


class IdleSteps(QObject):
    """Runs a generator one ``next()`` per event-loop turn (input and repaints are handled in between), so that
    work of ~100 ms in all never holds the GUI thread for more than one piece. ``finish`` runs the rest now.
    ``done`` carries the generator's return value. Owned by ``parent``: it stops when that is deleted.

    With ``when_idle`` (work done ahead of time, which nothing waits for), a piece also waits for a turn that
    follows a quick one: when the turn before took more than ``BUSY_S`` (a model's tree was shown, the window
    repainted), that work and a piece would otherwise land between the same two ticks of the event loop, and
    two pieces of 10-40 ms made one stall over 50 ms. After ``MAX_WAITS`` turns in a row that were all busy (a
    machine too loaded for any turn to be quick) the piece runs all the same.
    """

    done = Signal(object)
    BUSY_S = 0.004
    MAX_WAITS = 25

    def __init__(self, parent: QObject, steps: Generator[None, None, object], *, when_idle: bool = False):
        super().__init__(parent)
        self._steps: Generator[None, None, object] | None = steps
        self.stepping = False  # inside a piece (code a piece runs must not ask to finish the rest)
        self.when_idle = when_idle
        self.waits = 0  # turns a piece has waited for in all (when_idle)
        self._waited = 0  # ... in a row, for the coming piece
        self._timer = QTimer(self, singleShot=True, interval=0)
        self._timer.timeout.connect(self._step)
        self._start_timer()

    def _start_timer(self) -> None:
        self._asked = time.perf_counter()
        self._timer.start()

    @property
    def running(self) -> bool:
        return self._steps is not None

    def stop(self) -> None:
        """Build no more pieces (the generator is closed)."""
        self._timer.stop()
        steps, self._steps = self._steps, None
        if steps is not None:
            steps.close()

    def finish(self) -> object:
        """Run the remaining pieces now; returns the generator's value (None if it had ended)."""
        self._timer.stop()
        while self._steps is not None:
            value = self._next()
            if self._steps is None:
                return value
        return None

    def _step(self) -> None:
        if self._steps is None:
            return
        if self.when_idle and self._waited < self.MAX_WAITS and time.perf_counter() - self._asked > self.BUSY_S:
            self._waited += 1
            self.waits += 1
            self._start_timer()  # the turn that fired this timer was busy: try the next one
            return
        self._waited = 0
        self._next()
        if self._steps is not None:
            self._start_timer()

    def _next(self) -> object:
        assert self._steps is not None
        self.stepping = True
        try:
            next(self._steps)
        except StopIteration as end:
            self._steps = None
            self.stepping = False
            self.done.emit(end.value)
            return end.value
        except BaseException:
            self._steps = None
            raise
        finally:
            self.stepping = False
        return None


class LazyPlot(QWidget):
    """A placeholder that becomes ``build()``'s widget when shown or when one of the widget's attributes is
    asked for, or earlier in idle time (``prebuild``).

    ``build`` returns the widget, or a generator that builds it a piece per ``next()`` and returns it
    (``StopIteration.value``): ``prebuild`` then runs one piece per event-loop turn, and a plot needed before
    it is done is finished at once.
    """

    ready = Signal()  # the real plot exists (built by any of the three routes)

    def __init__(self, build: Callable[[], QWidget | Generator[None, None, QWidget]], parent=None):
        super().__init__(parent)
        self._build = build
        self._plot: QWidget | None = None
        self._prebuilding: IdleSteps | None = None
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)  # as a plot's
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)

    @property
    def built(self) -> bool:
        return self._plot is not None

    @property
    def prebuilding(self) -> bool:
        """Whether a ``prebuild`` is under way (started, not yet done)."""
        return self._prebuilding is not None and self._plot is None

    def widget(self) -> QWidget:
        """The real plot, built now (or its prebuild finished now) if it was not yet."""
        if self._plot is None:
            if self._prebuilding is not None:
                self._prebuilding.finish()  # attaches the plot (done → _attach)
            else:
                made = self._build()
                self._attach(IdleSteps(self, made).finish() if inspect.isgenerator(made) else made)
        assert self._plot is not None
        return self._plot

    def prebuild(self) -> None:
        """Build the plot in idle time: one piece per event-loop turn for a factory that builds in pieces, the
        whole plot now otherwise. Nothing happens if it is built or being built already."""
        if self._plot is None and self._prebuilding is None:
            made = self._build()
            if not inspect.isgenerator(made):
                self._attach(made)
                return
            self._prebuilding = IdleSteps(self, made, when_idle=True)
            self._prebuilding.done.connect(self._attach)

    def _attach(self, plot: QWidget) -> None:
        if self._plot is not None:
            return
        self._plot = plot
        self.setSizePolicy(plot.sizePolicy())
        self.layout().addWidget(plot)
        if self.isVisible():  # a child added to a shown widget stays hidden until told
            plot.show()
        self.ready.emit()

    def showEvent(self, event) -> None:
        self.widget()
        super().showEvent(event)

    def __getattr__(self, name: str):
        # Called only for names QWidget and this class lack: those are the plot's. Private names are not
        # forwarded, so that a half-constructed placeholder never builds its plot.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.widget(), name)


def metrics_plots() -> Generator[None, None, QWidget]:
    """The live training plots (loss, learning rate, …), for the Train and Runs tabs, a few ms per step."""
    from .plots import MetricsPlots

    return (yield from MetricsPlots.in_steps())


def evaluation_plots() -> QWidget:
    """Task metrics, retention and perplexity per evaluation, for the Train and Runs tabs."""
    from .eval_plots import EvaluationPlots

    return EvaluationPlots()


def preference_plots() -> QWidget:
    """A preference run's reward margin, chosen/rejected rewards and accuracy, for the Train tab."""
    from .preference_plots import PreferencePlots

    return PreferencePlots()


def colour_bars(plot) -> list:
    """The colour bars placed in ``plot``'s layout (``ColorBarItem.setImageItem(..., insert_in=plot)``)."""
    import pyqtgraph as pg

    items = (plot.layout.itemAt(i) for i in range(plot.layout.count()))
    return [item for item in items if isinstance(item, pg.ColorBarItem)]


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
        for bar in colour_bars(plot):  # its axis is the bar's own: pyqtgraph draws its ticks pale grey
            bar.axis.setTextPen(text)
            bar.axis.setPen(palette.color(QPalette.ColorRole.Mid))
        title = plot.property("plot_title")
        if title:
            plot.setTitle(title, color=text.name())
