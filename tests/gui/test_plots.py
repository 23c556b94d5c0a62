"""Live plots: curves are created once, smoothing is a debiased EMA, 100k points redraw quickly."""


import numpy as np

from workbench.core.events import Evaluation, Step
from workbench.gui.widgets.plots import MetricsPlots, smooth
from workbench.gui.widgets.training_panel import TrainingPanel


def test_smoothing_is_a_debiased_ema_and_incremental_equals_batch(qtbot):
    plots = MetricsPlots()
    qtbot.addWidget(plots)
    values = np.array([4.0, 2.0, 3.0, 1.0, 1.5])
    assert smooth(values, 0.0).tolist() == values.tolist()
    assert smooth(values, 0.5)[0] == 4.0  # debiased: the first point is not pulled to 0
    for i, v in enumerate(values):
        plots.add("loss", i, v)
    assert np.allclose(plots.series["smoothed"].y, smooth(values, plots.smoothing))
    plots.set_smoothing(0.9)
    plots.add("loss", 5, 0.5)
    assert np.allclose(plots.series["smoothed"].y, smooth(np.append(values, 0.5), 0.9))


def test_panel_batches_events_and_draws_them(qtbot):
    panel = TrainingPanel()
    qtbot.addWidget(panel)
    panel.show()
    curve = panel.plots.raw_curve
    for step in range(1, 51):
        panel.handle(Step(step=step, total_steps=100, epoch=step / 100, loss=1 / step, learning_rate=1e-4,
                          grad_norm=0.5, tokens_per_second=1000.0, memory_bytes=2**20, elapsed_s=step, eta_s=100 - step,
                          trained_tokens_per_second=640.0, examples_per_second=4.5))
    panel.handle(Evaluation(step=50, eval_loss=0.3))
    assert panel.plots.points("loss") == 0, "nothing is drawn until the next flush"
    panel.flush()
    assert panel.plots.raw_curve is curve, "curves are created once"
    assert panel.plots.points("loss") == 50 and panel.plots.points("eval_loss") == 1
    assert len(curve.xData) == 50
    assert panel.plots.points("trained_tokens_per_second") == 50  # beside real tokens/s, on the same plot
    assert "1,000 tokens/s (640 trained · 4.5 examples/s)" in panel.status_label.text()
    assert panel.progress.value() == 50 and panel.progress.maximum() == 100
    assert "ETA 0:50" in panel.eta_label.text()


def test_100k_points_draw_a_number_of_points_bounded_by_the_width(qtbot):
    """What keeps a frame cheap with 100,000 points (bench/gui_responsiveness.py times it; no timing here):
    each curve hands the renderer a number of points bounded by the plot's width in pixels (pyqtgraph's auto
    downsampling keeps ~5 samples per pixel, and the peak method both the minimum and the maximum of each),
    not by the number of steps, with the peaks kept."""
    plots = MetricsPlots()
    qtbot.addWidget(plots)
    plots.resize(1000, 700)
    plots.show()
    qtbot.waitExposed(plots)
    steps = np.arange(100_000, dtype=float)
    loss = 2 + np.sin(steps / 500) + np.random.default_rng(0).normal(0, 0.1, len(steps))
    loss[54_321] = 9.0  # one spike: peak-preserving downsampling must keep it
    for name in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "trained_tokens_per_second", "memory"):
        plots.series[name].extend(steps, loss)
    plots.series["smoothed"].extend(steps, smooth(loss, 0.6))
    plots.redraw()
    plots.grab()
    for name, curve in plots.curves.items():
        if name == "eval_loss":
            continue
        x, y = curve.getData()
        assert 0 < len(x) <= 12 * plots.width(), f"{name}: {len(x)} points drawn for a {plots.width()}-pixel plot"
        if name in ("loss", "memory"):
            assert y.max() == 9.0, f"{name}: the spike was lost in downsampling"
    plots.loss_plot.setXRange(50_000, 51_000, padding=0)  # zoomed in: only the visible part is drawn
    plots.grab()
    x, _ = plots.curves["loss"].getData()
    assert x.min() >= 49_000 and x.max() <= 52_000


def test_plots_follow_a_palette_change(qtbot):
    from PySide6.QtGui import QColor, QPalette

    plots = MetricsPlots()
    qtbot.addWidget(plots)
    dark = QPalette(plots.palette())
    dark.setColor(QPalette.ColorRole.Base, QColor("#202124"))
    dark.setColor(QPalette.ColorRole.Text, QColor("#e8eaed"))
    plots.setPalette(dark)  # what a system theme switch delivers: a PaletteChange event
    assert plots.backgroundBrush().color() == QColor("#202124")
    assert plots.loss_plot.getAxis("left").textPen().color() == QColor("#e8eaed")
    assert plots.loss_plot.titleLabel.opts["color"] == "#e8eaed"


def test_a_live_run_draws_one_plot_per_flush_in_turn(qtbot):
    """While a run is live each flush repaints one plot (a repaint of all five stalls the window while training
    competes for the GIL); every plot is drawn within five flushes. The end of the run draws what is left the same way
    (all five at once stalled the window), the flush timer drawing the rest and then stopping."""
    from workbench.core.control import RunControl

    panel = TrainingPanel()
    qtbot.addWidget(panel)
    panel.begin_run(RunControl())
    plots = panel.plots

    def drawn() -> dict[str, int]:
        return {name: 0 if curve.xData is None else len(curve.xData) for name, curve in plots.curves.items()
                if name != "eval_loss"}

    for step in range(1, 4):
        panel.handle(Step(step=step, total_steps=10, epoch=step / 10, loss=1 / step, learning_rate=1e-4,
                          grad_norm=0.5, tokens_per_second=1000.0, memory_bytes=2**20, elapsed_s=step, eta_s=10 - step,
                          trained_tokens_per_second=700.0))
    panel.flush()
    assert drawn() == {"loss": 3, "smoothed": 3, "learning_rate": 0, "grad_norm": 0, "tokens_per_second": 0,
                       "trained_tokens_per_second": 0, "memory": 0}, "the first flush draws the loss plot only"
    assert sum(plot.viewRange()[0][1] >= 10 for plot in plots.plot_items) == 1, \
        "the first flush gives the run's step range to the plot it draws only (all five: ten axes laid out at once)"
    for _ in range(4):
        panel.flush()
    assert set(drawn().values()) == {3}
    assert all(plot.viewRange()[0][1] >= 10 for plot in plots.plot_items), "the step axis spans the whole run"
    panel.handle(Step(step=4, total_steps=10, epoch=0.4, loss=0.25, learning_rate=1e-4, grad_norm=0.5,
                      tokens_per_second=1000.0, memory_bytes=2**20, elapsed_s=4, eta_s=6, trained_tokens_per_second=700.0))
    panel.end_run()
    assert sorted(drawn().values()).count(4) in (1, 2), "the run's end draws one plot (the loss: two curves)"
    assert panel._flush_timer.isActive(), "the flush timer draws the others"
    qtbot.waitUntil(lambda: set(drawn().values()) == {4}, timeout=5_000)
    qtbot.waitUntil(lambda: not panel._flush_timer.isActive(), timeout=5_000)


def test_legends_sit_above_the_data_not_on_it(qtbot):
    """The loss and tokens/s legends stay out of their plots' data area (inside it they covered the last steps'
    curves), within the plot, at the window's size and at a narrow one; the raw loss is thinner than the smoothed
    line but not near-transparent."""
    plots = MetricsPlots()
    qtbot.addWidget(plots)
    plots.show()
    for step in range(1, 5):
        plots.add_step(Step(step=step, total_steps=4, epoch=step / 4, loss=3 - 0.4 * step, learning_rate=1e-3,
                            grad_norm=2.0, tokens_per_second=1.6 - 0.2 * step, memory_bytes=2**30, elapsed_s=step,
                            eta_s=4 - step, trained_tokens_per_second=0.5))
    plots.set_total_steps(4)
    plots.redraw()
    tokens_plot = plots.plot_items[3]
    assert tokens_plot.property("plot_title") == "Tokens / s"
    for width in (1370, 800):
        plots.resize(width, 520)
        qtbot.waitUntil(lambda w=width: plots.loss_plot.getViewBox().sceneBoundingRect().width() > w - 200)
        for plot in (plots.loss_plot, tokens_plot):
            legend = plot.legend.sceneBoundingRect()
            assert not legend.intersects(plot.getViewBox().sceneBoundingRect()), (width, plot.property("plot_title"))
            assert plot.sceneBoundingRect().contains(legend)
    raw, smoothed = plots.raw_curve.opts["pen"], plots.smooth_curve.opts["pen"]
    assert raw.color().alpha() >= 200 and raw.widthF() < smoothed.widthF()
    assert raw.widthF() <= 1, "a wider translucent line is stroked as a path: 8x the frame time at 100k points"
