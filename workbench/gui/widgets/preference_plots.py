"""A preference run's own curves beside the loss: reward margin, chosen and rejected rewards, reward accuracy.

TRL's DPO, ORPO and KTO trainers log these with every step, and the engine passes them on as ``Step.metrics``
(``rewards/margins``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``). The loss alone says little
in preference training — it can fall while both rewards fall — so the margin and the accuracy are what a user
watches. The widget stays hidden (``has_data`` False) for a supervised run, whose steps carry none of them; its
plots are built the first time a step brings one, and afterwards each curve only gets ``setData``.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg

from .plots import Series, follow_palette

# metric key → (plot, legend label, colour). Plot 0: rewards (log-probability ratios × beta), plot 1: accuracy.
CURVES = {
    "rewards/margins": (0, "margin", (30, 100, 220)),
    "rewards/chosen": (0, "chosen", (46, 157, 78)),
    "rewards/rejected": (0, "rejected", (200, 50, 50)),
    "rewards/accuracies": (1, "chosen > rejected", (140, 80, 190)),
}
PLOTS = (("Rewards (preference)", "reward"), ("Reward accuracy", "share of pairs"))


class PreferencePlots(pg.GraphicsLayoutWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.series = {name: Series(256) for name in CURVES}
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.plot_items: list[pg.PlotItem] = []
        self._stale: set[str] = set()

    @property
    def has_data(self) -> bool:
        return any(s.n for s in self.series.values())

    @property
    def stale(self) -> bool:
        return bool(self._stale)

    def _build(self) -> None:
        """The plots and their curves, made once, when the first preference metric arrives."""
        for row, (title, unit) in enumerate(PLOTS):
            plot = self.addPlot(row=row, col=0)
            plot.setLabel("bottom", "step")
            plot.setLabel("left", unit)
            plot.getAxis("left").enableAutoSIPrefix(False)
            plot.setProperty("plot_title", title)
            # Margin and accuracy rise towards the top right; the rewards' top left is empty, the accuracy's
            # bottom right
            plot.addLegend(offset=(10, 10) if row == 0 else (-10, -10))
            self.plot_items.append(plot)
        follow_palette(self, self.plot_items)  # before the curves: a legend entry takes the text colour it is made with
        self.plot_items[1].setYRange(0, 1, padding=0.05)
        # A margin of zero is where the policy starts (it equals the reference): the line shows which way it went.
        self.plot_items[0].addItem(pg.InfiniteLine(0, angle=0, movable=False,
                                                   pen=pg.mkPen((128, 128, 128), style=pg.QtCore.Qt.PenStyle.DotLine)))
        for name, (index, label, colour) in CURVES.items():
            curve = self.plot_items[index].plot([], [], pen=pg.mkPen(colour, width=2 if name == "rewards/margins"
                                                                      else 1), name=label)
            curve.setDownsampling(auto=True, method="peak")
            curve.setClipToView(True)
            self.curves[name] = curve

    def changeEvent(self, event) -> None:
        if event.type() == pg.QtCore.QEvent.Type.PaletteChange and getattr(self, "plot_items", None):
            follow_palette(self, self.plot_items)
        super().changeEvent(event)

    def add_step(self, e) -> bool:
        """The preference metrics of one ``Step`` event; True if it had any (drawn at the next ``redraw``)."""
        metrics = getattr(e, "metrics", None) or {}
        found = False
        for name, series in self.series.items():
            value = metrics.get(name)
            if isinstance(value, (int, float)) and math.isfinite(value):
                series.append(e.step, float(value))
                self._stale.add(name)
                found = True
        return found

    def add_history(self, steps: list) -> None:
        """A resumed run's earlier steps, in front of the live ones already plotted (as ``MetricsPlots`` does)."""
        for name, series in self.series.items():
            first = series.x[0] if series.n else np.inf
            points = [(e.step, float(e.metrics[name])) for e in steps
                      if e.step < first and isinstance((e.metrics or {}).get(name), (int, float))
                      and math.isfinite(e.metrics[name])]
            if points:
                xs, ys = zip(*points)
                series.prepend(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float))
                self._stale.add(name)

    def redraw(self) -> None:
        if self._stale and not self.curves:
            self._build()
        for name in self._stale:
            self.curves[name].setData(self.series[name].x, self.series[name].y)
        self._stale.clear()

    def values(self, name: str) -> tuple[list[float], list[float]]:
        """What the curve for ``name`` draws (empty before the first redraw)."""
        curve = self.curves.get(name)
        if curve is None or curve.xData is None:
            return [], []
        return list(curve.xData), list(curve.yData)

    def reset(self) -> None:
        for series in self.series.values():
            series.clear()
        self._stale = set(self.curves)  # drawn empty at the next redraw
        for plot in self.plot_items:
            plot.enableAutoRange()
        if self.plot_items:
            self.plot_items[1].setYRange(0, 1, padding=0.05)
