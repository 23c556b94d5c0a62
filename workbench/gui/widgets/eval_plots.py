"""Evaluation curves beside the loss: task metrics, the retention meter and perplexity, from ``Evaluation`` events.

Evaluations are rare (every ``training.eval_steps``), so each one redraws its plots at once; a curve is created the
first time its metric appears and afterwards only gets ``setData``. The widget stays hidden until an evaluation
brings something besides the loss (``has_data``), so a run without ``[eval]`` scorers or retention shows the loss
plots alone. The retention plot marks ``eval.retention_warn_below``, the agreement under which the engine warns.
"""

from __future__ import annotations

import math

import pyqtgraph as pg

from .metric_labels import LABELS, RETENTION_METRICS, TASK_METRICS  # noqa: F401  (imported from here too)
from .plots import Series, follow_palette
COLOURS = [(30, 100, 220), (230, 120, 20), (46, 157, 78), (200, 50, 50), (140, 80, 190), (20, 160, 170)]


class EvaluationPlots(pg.GraphicsLayoutWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.series: dict[str, Series] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.task_plot = self._plot("Task metrics (validation)", 0, "share of rows")
        self.retention_plot = self._plot("Retention (base model = 1)", 1, "vs base", legend=(10, -10))  # bottom left:
        # agreement falls and the perplexity ratio rises from 1, so the top right is where the curves are
        self.perplexity_plot: pg.PlotItem | None = None  # made when a run reports perplexity (eval.scorers)
        self.task_plot.setYRange(0, 1, padding=0.05)
        self.warn_line = pg.InfiniteLine(angle=0, movable=False, pen=pg.mkPen((200, 50, 50), style=pg.QtCore.Qt.PenStyle.DashLine))
        self.warn_line.setToolTip("The engine warns when agreement falls below this (eval.retention_warn_below).")
        self.warn_line.hide()
        self.retention_plot.addItem(self.warn_line)

    def _plot(self, title: str, row: int, unit: str, legend=(-10, 10)) -> pg.PlotItem:
        plot = self.addPlot(row=row, col=0)
        plot.setLabel("bottom", "step")
        if unit:
            plot.setLabel("left", unit)
        plot.getAxis("left").enableAutoSIPrefix(False)
        plot.setProperty("plot_title", title)
        plot.addLegend(offset=legend)
        follow_palette(self, [plot])
        return plot

    def changeEvent(self, event) -> None:
        if event.type() == pg.QtCore.QEvent.Type.PaletteChange and hasattr(self, "perplexity_plot"):
            follow_palette(self, [p for p in (self.task_plot, self.retention_plot, self.perplexity_plot) if p])
        super().changeEvent(event)

    @property
    def has_data(self) -> bool:
        return any(s.n for s in self.series.values())

    def set_warning_level(self, level: float | None) -> None:
        if level is None:
            self.warn_line.hide()
        else:
            self.warn_line.setValue(level)
            self.warn_line.show()

    def set_run_config(self, config: dict) -> None:
        """From a ``RunStarted`` event's config: the retention warning level when the meter is on."""
        section = config.get("eval", {}) if isinstance(config, dict) else {}
        self.set_warning_level(section.get("retention_warn_below") if section.get("retention") else None)

    def add_evaluation(self, step: int, metrics: dict[str, float]) -> bool:
        """Add one evaluation's metrics; True if any curve changed (then it is drawn already)."""
        changed = False
        for name, value in metrics.items():
            plot = self._plot_for(name)
            if plot is None or value is None or not math.isfinite(value):
                continue
            if name not in self.series:
                self.series[name] = Series(64)
                colour = COLOURS[len([n for n in self.curves if self._plot_for(n) is plot]) % len(COLOURS)]
                self.curves[name] = plot.plot([], [], pen=pg.mkPen(colour, width=2), symbol="o", symbolSize=6,
                                              symbolBrush=colour, name=LABELS.get(name, name))
            self.series[name].append(step, value)
            self.curves[name].setData(self.series[name].x, self.series[name].y)
            changed = True
        return changed

    def _plot_for(self, name: str) -> pg.PlotItem | None:
        if name in TASK_METRICS:
            return self.task_plot
        if name in RETENTION_METRICS:
            return self.retention_plot
        if name == "perplexity":
            if self.perplexity_plot is None:
                self.perplexity_plot = self._plot("Perplexity (validation)", 2, "")
            return self.perplexity_plot
        return None  # eval_runtime, retention_text_loss …: in metrics.jsonl, not drawn

    def values(self, name: str) -> tuple[list[float], list[float]]:
        s = self.series.get(name)
        return (list(s.x), list(s.y)) if s is not None else ([], [])

    def reset(self) -> None:
        for name, curve in self.curves.items():
            plot = self._plot_for(name)
            if plot is not None:
                plot.removeItem(curve)
                if plot.legend is not None:
                    plot.legend.removeItem(curve)
        self.series.clear()
        self.curves.clear()
        self.warn_line.hide()
