"""Live training plots: loss (raw, smoothed, evaluation), learning rate, gradient norm, tokens/s, memory.

Built for long runs: each curve is created once and only ever gets ``setData``; values live in growable
numpy buffers (appending is amortised O(1), no list→array copy per frame); curves downsample to the
screen's width with peak preservation and clip to the visible range, so 100,000 points redraw in a few
milliseconds. The smoothed loss is a debiased exponential moving average (TensorBoard's), kept
incrementally so a new point costs O(1); moving the smoothing control recomputes it once.

Built for a GUI thread shared with training: a repaint of all five plots costs 10–30 ms of GUI-thread time
(pyqtgraph's axes are Python), and twice that in wall time while a training thread competes for the GIL,
so a live run draws one plot per turn of the event loop (``redraw_next``), and a new value never changes
an axis's size (which would lay out and repaint every plot): tick labels get a fixed width, and axes without
units skip pyqtgraph's SI-prefix relabelling, which re-renders their label on every range change.
"""

from __future__ import annotations

from typing import Generator, Iterator

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent
from PySide6.QtGui import QFontMetrics

from .lazy_plot import follow_palette  # noqa: F401  (the other plot modules import it from here)

WIDEST_TICK_LABEL = "-0.000125"  # a learning rate's ticks; pyqtgraph writes 1e-5 and 1e4 and beyond as "1e-05", "12000"
# The memory plot never spans less than this: allocator noise of a few MiB drawn over the full height looked like
# wild swings (2.245–2.250 GiB). Half a GiB still shows a real leak or an activation spike.
MEMORY_MIN_SPAN_GIB = 0.5


class Series:
    """x/y values in numpy buffers that double when full."""

    def __init__(self, capacity: int = 1024):
        self._x = np.empty(capacity)
        self._y = np.empty(capacity)
        self.n = 0

    def append(self, x: float, y: float) -> None:
        if self.n == len(self._x):
            self._x = np.concatenate([self._x, np.empty(len(self._x))])
            self._y = np.concatenate([self._y, np.empty(len(self._y))])
        self._x[self.n] = x
        self._y[self.n] = y
        self.n += 1

    def extend(self, xs: np.ndarray, ys: np.ndarray) -> None:
        while self.n + len(xs) > len(self._x):
            self._x = np.concatenate([self._x, np.empty(len(self._x))])
            self._y = np.concatenate([self._y, np.empty(len(self._y))])
        self._x[self.n:self.n + len(xs)] = xs
        self._y[self.n:self.n + len(ys)] = ys
        self.n += len(xs)

    def prepend(self, xs: np.ndarray, ys: np.ndarray) -> None:
        """Earlier values (a resumed run's history) in front of those already here."""
        x, y = np.concatenate([xs, self.x]), np.concatenate([ys, self.y])
        self.clear()
        self.extend(x, y)

    @property
    def x(self) -> np.ndarray:
        return self._x[: self.n]

    @property
    def y(self) -> np.ndarray:
        return self._y[: self.n]

    def clear(self) -> None:
        self.n = 0


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """Debiased EMA of ``values`` (weight 0 = raw). A Python loop: run only when the weight changes."""
    out = np.empty_like(values)
    last, debias = 0.0, 1.0
    for i, v in enumerate(values):
        last = last * weight + (1 - weight) * v
        debias *= weight
        out[i] = last / (1 - debias) if debias < 1 else v
    return out


def plot_item_in_steps() -> Generator[None, None, pg.PlotItem]:
    """A ``PlotItem`` as ``addPlot`` or ``PlotWidget()`` make it, in three pieces of 3-12 ms (in one go ~25 ms, 50 with
    a job thread running): its view (with the view's menu), its two shown axes, the item around them (its options
    menu, the hidden axes)."""
    view = pg.ViewBox()
    yield
    axes = {side: pg.AxisItem(side) for side in ("left", "bottom")}
    yield
    return pg.PlotItem(viewBox=view, axisItems=axes)


def legend_in_title_row(plot: pg.PlotItem, columns: int) -> pg.LegendItem:
    """A one-row legend at the right of the plot's title row, above the data: pyqtgraph puts it inside the view
    box, where it covered the last steps' curves (the newest values, those a user watches)."""
    legend = plot.addLegend(offset=(-10, 2), colCount=columns)
    legend.layout.setContentsMargins(4, 0, 4, 0)  # pyqtgraph's margins made it taller (40 px) than the row (30)
    legend.setParentItem(plot)  # anchored again, now to the plot's top right corner
    return legend


class ThemedPlotWidget(pg.PlotWidget):
    """A plot whose colours follow the light or dark theme."""


    def changeEvent(self, event) -> None:
        # The first palette event arrives from the base class constructor, before the plot exists.
        if event.type() == QEvent.Type.PaletteChange and self.getPlotItem() is not None:  # light ↔ dark switch
            follow_palette(self, [self.getPlotItem()])
        super().changeEvent(event)


class MetricsPlots(pg.GraphicsLayoutWidget):
    """The five live training plots. Built at once (``MetricsPlots()``) or a piece per step (``in_steps``), so
    that the window can build them in idle event-loop turns: all five at once hold the GUI thread for ~60 ms."""

    NAMES = ("loss", "learning_rate", "grad_norm", "tokens_per_second", "memory")

    def __init__(self, parent=None, *, _in_steps: bool = False):
        super().__init__(parent)
        self.series = {name: Series() for name in (*self.NAMES, "trained_tokens_per_second", "eval_loss", "smoothed")}
        self.smoothing = 0.6
        self._ema_last, self._ema_debias = 0.0, 1.0
        self._total_steps = 0
        self.plot_items: list[pg.PlotItem] = []
        self.curves: dict[str, pg.PlotDataItem] = {}
        self._plot_curves: dict[pg.PlotItem, tuple[str, ...]] = {}  # which curves each plot draws
        self._stale: set[str] = set()  # curves whose data changed since they were drawn
        self._x_stale: set[pg.PlotItem] = set()  # plots whose step axis has not been set to the run's length yet
        self._next = 0  # redraw_next: the plot whose turn it is
        self._sharing_x = True  # _share_x_range passes a plot's step range on to the others
        # Room for the widest tick label these plots usually show, reserved once (see _fix_axes).
        self._tick_text_width = QFontMetrics(self.font()).horizontalAdvance(WIDEST_TICK_LABEL)
        self._steps = self._build_plots()
        if not _in_steps:
            for _ in self._steps:
                pass

    @classmethod
    def in_steps(cls) -> Generator[None, None, "MetricsPlots"]:
        """Builds the widget, then a piece of a plot per ``next()``; returns the finished widget (``StopIteration.value``,
        as ``lazy_plot.LazyPlot.prebuild`` expects)."""
        plots = cls(_in_steps=True)
        yield
        yield from plots._steps
        return plots

    def _build_plots(self) -> Iterator[None]:
        # A yield between every piece that costs a few milliseconds: one plot with its curves held the GUI thread
        # for 25-35 ms (50 ms with a job thread running), and a prebuild in idle turns then showed as a stall.
        self.loss_plot = yield from self._plot("Training loss", row=0, col=0, colspan=2)
        # One row: the plot is wide but short, and three entries stacked cut off "evaluation" at 1200x800.
        legend_in_title_row(self.loss_plot, columns=3)
        follow_palette(self, [self.loss_plot])  # the legend's colours
        yield
        # Raw secondary (lighter, thinner), yet readable: at alpha 110 it all but vanished under the smoothed line.
        # One pixel wide: at 1.2 px Qt strokes the translucent line as a wide path, 8× the frame time at 100k points
        # (bench/gui_responsiveness.py's plot frame: 141 against 17 ms).
        self.raw_curve = self._curve(self.loss_plot, (100, 150, 225, 230), "raw", width=1)
        self.smooth_curve = self._curve(self.loss_plot, (20, 80, 200), "smoothed", width=2.5)
        yield
        self.eval_curve = self.loss_plot.plot([], [], pen=pg.mkPen((230, 120, 20), width=2), symbol="o",
                                              symbolSize=7, symbolBrush=(230, 120, 20), name="evaluation")
        self.curves.update(loss=self.raw_curve, smoothed=self.smooth_curve, eval_loss=self.eval_curve)
        self._plot_curves[self.loss_plot] = ("loss", "smoothed", "eval_loss")
        self._fix_axes(self.loss_plot)
        # Memory in GiB, said in the title: an axis label with an SI unit ("(MB)") would sit at the outer edge
        # of the tick-label room reserved below, far from its numbers, and change with the prefix.
        for i, (name, title) in enumerate((
            ("learning_rate", "Learning rate"), ("grad_norm", "Gradient norm"),
            ("tokens_per_second", "Tokens / s"), ("memory", "Device memory (GiB)"),
        )):
            yield
            plot = yield from self._plot(title, row=1 + i // 2, col=i % 2)
            if name == "tokens_per_second":  # real tokens (template and prompt included) beside those that carry loss
                legend_in_title_row(plot, columns=2)  # one row, as the loss plot's
                follow_palette(self, [plot])  # the legend's colours, as for the loss plot's (else pale grey)
                yield
            self.curves[name] = self._curve(plot, (60, 170, 110), "real" if name == "tokens_per_second" else None)
            self._plot_curves[plot] = (name,)
            if name == "tokens_per_second":
                self.curves["trained_tokens_per_second"] = self._curve(plot, (200, 90, 160), "trained")
                self._plot_curves[plot] = (name, "trained_tokens_per_second")
            self._fix_axes(plot)
        self.memory_plot = self.plot_items[-1]
        self.memory_plot.setLimits(yMin=0, minYRange=MEMORY_MIN_SPAN_GIB)

    def _fix_axes(self, plot: pg.PlotItem) -> None:
        """The shared step axis and the axes' fixed styles, for one new plot."""
        # One step axis for all five: zooming or panning one plot shows the same steps in the others, and the
        # run's length set on the loss plot applies to every plot (each had its own 0–12, 0–11, 0–10).
        # Not pyqtgraph's setXLink: it lines linked views up by their position on screen, and the loss plot is
        # twice as wide as the others, so the half-width plots showed half the steps each.
        plot.getViewBox().sigXRangeChanged.connect(self._share_x_range)
        for axis in (plot.getAxis("left"), plot.getAxis("bottom")):
            # No axis has a unit, so none shows an SI prefix; pyqtgraph would still re-render the label and
            # re-size the axis on every range change.
            axis.enableAutoSIPrefix(False)
            # Major and minor ticks only: the third level pyqtgraph computes is too dense to be drawn at
            # these sizes, yet costs a third of each axis's (Python) redraw.
            axis.setStyle(maxTickLevel=1)
        # Room for the widest tick label these plots usually show, reserved once: were it to follow the
        # labels, a new value could resize the axis, and with it the grid, and every plot would be
        # laid out and repainted again.
        plot.getAxis("left").setStyle(tickTextWidth=self._tick_text_width, autoExpandTextSpace=False)

    def prerender(self) -> Iterator[None]:
        """Paint each plot once off screen at the widget's current size, one plot per step. pyqtgraph keeps
        each axis's drawing until its range or size changes, so a first show at that size only composes
        (~2 ms) instead of laying out ten axes' ticks and labels (~15 ms, several times that under load)."""
        for plot in self.plot_items:
            self.grab(self.mapFromScene(plot.sceneBoundingRect()).boundingRect())
            yield

    def _share_x_range(self, view, x_range) -> None:
        """The step range one plot now shows, given to the others. Setting an equal range emits nothing, so the
        echo from the others ends here."""
        if not self._sharing_x:
            return
        low, high = x_range
        for plot in self.plot_items:
            other = plot.getViewBox()
            if other is not view and other.viewRange()[0] != [low, high]:
                other.setXRange(low, high, padding=0)

    def set_total_steps(self, total: int) -> None:
        """Fix the step axis to the whole run: then the x axes are laid out once, not on every new point.
        Applied to each plot when it is next drawn, so that a run's start repaints one plot at a time."""
        if total > 0 and total != self._total_steps:
            self._total_steps = total
            self._x_stale = set(self.plot_items)

    def _plot(self, title: str, **pos) -> Generator[None, None, pg.PlotItem]:
        """One plot in four pieces (``plot_item_in_steps``, then its place in the grid)."""
        plot = yield from plot_item_in_steps()
        yield
        self.addItem(plot, **pos)
        # No grid: translucent grid lines across every plot were most of the cost of a repaint (measured).
        plot.setLabel("bottom", "step")
        plot.setProperty("plot_title", title)
        self.plot_items.append(plot)
        follow_palette(self, [plot])
        return plot

    def changeEvent(self, event) -> None:
        # The first palette event arrives from the base class constructor, before any plot exists.
        if event.type() == QEvent.Type.PaletteChange and hasattr(self, "plot_items"):  # light ↔ dark switch
            follow_palette(self, self.plot_items)
        super().changeEvent(event)

    @staticmethod
    def _curve(plot: pg.PlotItem, colour, name: str | None, width: float = 1) -> pg.PlotDataItem:
        curve = plot.plot([], [], pen=pg.mkPen(colour, width=width), name=name)
        # Draw at most ~one point per pixel (keeping peaks) and only the visible range.
        curve.setDownsampling(auto=True, method="peak")
        curve.setClipToView(True)
        curve.setSkipFiniteCheck(True)
        return curve

    # -- data -----------------------------------------------------------------------------------------
    def add_step(self, e) -> None:
        """The curves one engine ``Step`` event feeds."""
        for name, value in (("loss", e.loss), ("learning_rate", e.learning_rate), ("grad_norm", e.grad_norm),
                            ("tokens_per_second", e.tokens_per_second),
                            ("trained_tokens_per_second", getattr(e, "trained_tokens_per_second", None)),
                            ("memory", None if e.memory_bytes is None else e.memory_bytes / 2**30)):
            self.add(name, e.step, value)

    def add(self, name: str, step: float, value: float | None) -> None:
        if value is None or not np.isfinite(value):
            return
        self.series[name].append(step, value)
        self._stale.add(name)
        if name == "loss":
            self._ema_last = self._ema_last * self.smoothing + (1 - self.smoothing) * value
            self._ema_debias *= self.smoothing
            smoothed = self._ema_last / (1 - self._ema_debias) if self._ema_debias < 1 else value
            self.series["smoothed"].append(step, smoothed)
            self._stale.add("smoothed")

    def set_smoothing(self, weight: float) -> None:
        self.smoothing = weight
        loss = self.series["loss"]
        values = smooth(loss.y, weight)
        self.series["smoothed"].clear()
        self.series["smoothed"].extend(loss.x, values)
        self._ema_debias = weight ** loss.n
        self._ema_last = values[-1] * (1 - self._ema_debias) if loss.n else 0.0
        self.redraw()

    def redraw(self) -> None:
        """Every curve, now (one repaint of every plot)."""
        for plot in self.plot_items:
            self._draw(plot)

    @property
    def stale(self) -> bool:
        """Whether some plot shows less than its data (or not yet the run's step range)."""
        return bool(self._stale or self._x_stale)

    def redraw_next(self) -> None:
        """The next plot in turn whose data changed, only: a live run's repaints then cost a fifth as much
        each."""
        count = len(self.plot_items)
        for i in range(count):
            plot = self.plot_items[(self._next + i) % count]
            if plot in self._x_stale or self._stale.intersection(self._plot_curves[plot]):
                self._next = (self._next + i + 1) % count
                self._draw(plot)
                break

    def _draw(self, plot: pg.PlotItem) -> None:
        if plot in self._x_stale:
            # Each plot takes the run's range when it is drawn, not through the link: set on one, it reached all
            # five at once, and the run's first flush laid out and repainted ten axes in one turn.
            self._x_stale.discard(plot)
            self._sharing_x = False
            try:
                plot.setXRange(0, self._total_steps, padding=0.01)  # also turns x auto-range off
            finally:
                self._sharing_x = True
        for name in self._plot_curves[plot]:
            s = self.series[name]
            self.curves[name].setData(s.x, s.y)
            self._stale.discard(name)

    def reset(self) -> None:
        """Empty plots for a new run, with both axes following the data again: a zoom, a pan or the previous
        run's y-range does not carry over."""
        # Not ``clear``: GraphicsLayoutWidget forwards that name to its layout, which deletes every plot.
        for s in self.series.values():
            s.clear()
        self._ema_last, self._ema_debias = 0.0, 1.0
        self._total_steps = 0
        self._x_stale.clear()
        for plot in self.plot_items:
            plot.enableAutoRange()
        self.redraw()

    def add_history(self, steps: list, evaluations: list) -> int:
        """A resumed run's earlier ``Step`` and ``Evaluation`` events, put in front of what is plotted already
        (the live steps after the checkpoint may have arrived first). Steps already plotted (a watched run's
        file replayed from its start) are skipped. Returns how many training steps were added."""
        first = {name: (self.series[name].x[0] if self.series[name].n else np.inf) for name in self.series}
        columns: dict[str, tuple[list, list]] = {name: ([], []) for name in self.series}
        for e in steps:
            for name, value in (("loss", e.loss), ("learning_rate", e.learning_rate), ("grad_norm", e.grad_norm),
                                ("tokens_per_second", e.tokens_per_second),
                                ("memory", None if e.memory_bytes is None else e.memory_bytes / 2**30)):
                if value is not None and np.isfinite(value) and e.step < first[name]:
                    columns[name][0].append(e.step)
                    columns[name][1].append(value)
        for e in evaluations:
            if e.step < first["eval_loss"]:
                columns["eval_loss"][0].append(e.step)
                columns["eval_loss"][1].append(e.eval_loss)
        for name, (xs, ys) in columns.items():
            if xs and name != "smoothed":
                self.series[name].prepend(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float))
                self._stale.add(name)
        self.set_smoothing(self.smoothing)  # the moving average over the whole loss curve, and a redraw
        return len(columns["loss"][0])

    def points(self, name: str) -> int:
        return self.series[name].n
