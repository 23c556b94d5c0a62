"""The Data tab's plot: the token-length histogram with its max-length line, or one bar per class for a
classifier's data. ``draw_*`` draw into it (the built plot, or the ``LazyPlot`` that builds it) and return the
line of numbers shown under it."""

from __future__ import annotations

from typing import Callable, Generator

from PySide6.QtWidgets import QWidget

from .lazy_plot import follow_palette


def length_histogram(max_length: Callable[[], int]) -> Generator[None, None, QWidget]:
    """The token-length histogram with its max-length line (a class histogram for a classifier's data), built a
    piece per ``next()`` (``LazyPlot``): in one go it held the GUI thread for ~50 ms. ``max_length`` is read when
    the line is drawn, so a prebuild that spans a change of the setting draws the new one."""
    import pyqtgraph as pg

    from .plots import ThemedPlotWidget, plot_item_in_steps

    plot = yield from plot_item_in_steps()
    yield
    histogram = ThemedPlotWidget(plotItem=plot)
    yield
    histogram.setLabel("bottom", "tokens per example")
    histogram.setLabel("left", "examples")
    histogram.getPlotItem().setProperty("plot_title", "Token lengths")
    follow_palette(histogram, [histogram.getPlotItem()])
    histogram.bars = pg.BarGraphItem(x0=[], x1=[], height=[], brush=(90, 140, 220))
    histogram.addItem(histogram.bars)
    yield
    histogram.cut_line = pg.InfiniteLine(
        angle=90, pen=pg.mkPen((217, 83, 79), width=2), label="max length",
        # The label ends at the line (left of it), so it is not cut when the cut sits at the right edge.
        labelOpts={"position": 0.95, "color": (217, 83, 79), "anchors": [(1, 0), (1, 0)]})
    histogram.cut_line.setValue(max_length())
    histogram.addItem(histogram.cut_line)
    return histogram


def set_plot_title(histogram, title: str) -> None:
    histogram.getPlotItem().setProperty("plot_title", title)
    follow_palette(histogram, [histogram.getPlotItem()])  # draws the title in the palette's colour


def draw_class_bars(histogram, labels) -> str:
    """One bar per class of ``labels`` (a ``core.classification.LabelSet``, or None while the columns are not
    mapped), so class imbalance shows before training."""
    axis = histogram.getPlotItem().getAxis("bottom")
    set_plot_title(histogram, "Classes")
    histogram.cut_line.hide()
    if labels is None:
        histogram.bars.setOpts(x0=[], x1=[], height=[])
        return ""
    if labels.problem_type == "regression":
        histogram.bars.setOpts(x0=[], x1=[], height=[])
        return "Regression: each label is a number the model learns to predict."
    import numpy as np  # imported with the plot

    counts = [labels.counts.get(name, 0) for name in labels.names]
    positions = np.arange(len(counts), dtype=float)
    histogram.bars.setOpts(x0=positions - 0.4, x1=positions + 0.4, height=np.asarray(counts, dtype=float))
    axis.setTicks([[(float(i), name) for i, name in enumerate(labels.names)]])
    histogram.setLabel("bottom", "class")
    histogram.setLabel("left", "training rows")
    share = labels.majority_share()
    return (f"{labels.num_labels} classes · the commonest is {max(counts)} of {sum(counts)} rows"
            + (f" ({share:.0%}): accuracy must beat that" if share is not None else ""))


def draw_length_stats(histogram, stats) -> str:
    """The token lengths of ``stats`` (``core.data`` length statistics) with the max-length cut."""
    histogram.getPlotItem().getAxis("bottom").setTicks(None)  # back from the class bars
    set_plot_title(histogram, "Token lengths")
    histogram.setLabel("bottom", "tokens per example")
    histogram.setLabel("left", "examples")
    histogram.cut_line.show()
    import numpy as np  # imported with the plot

    hist = stats.length_histogram
    edges = np.asarray(hist.edges, dtype=float)
    histogram.getPlotItem().enableAutoRange()  # this data's axes (an error state fixed them)
    if len(edges) > 1:
        histogram.bars.setOpts(x0=edges[:-1], x1=edges[1:], height=np.asarray(hist.counts, dtype=float))
    histogram.cut_line.setValue(stats.max_length)
    return (
        f"{stats.examples:,} examples · {stats.tokens:,} tokens ({stats.loss_share:.0%} trained on) · "
        f"<b>{stats.truncated}</b> ({stats.truncated_share:.1%}) longer than max length {stats.max_length} "
        f"are truncated"
        + (f" · {stats.without_loss} dropped: nothing left to train on after truncation" if stats.without_loss else "")
        + (f" · {stats.skipped} bad rows skipped" if stats.skipped else "")
    )
