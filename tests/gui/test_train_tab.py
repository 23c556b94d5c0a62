"""The Train tab as a newcomer reads it: what step 0 is doing, one step axis for all plots, axes that start
afresh for each run, a memory axis that does not magnify noise, no ETA after the end, a readable legend,
pauses in the Log, a samples pane that can be made tall, and a resumed run drawn with its history."""

from PySide6.QtGui import QColor, QPalette

from workbench.core.control import RunControl
from workbench.core.events import Evaluation, Finished, JsonlSink, Paused, Resumed, RunStarted, Step
from workbench.gui.widgets.plots import MEMORY_MIN_SPAN_GIB, MetricsPlots
from workbench.gui.widgets.training_panel import TrainingPanel


def step(n: int, total: int = 10, loss: float = 1.0, memory_gib: float = 1.0, eta: float = 60.0) -> Step:
    return Step(step=n, total_steps=total, epoch=n / total, loss=loss, learning_rate=1e-4, grad_norm=0.5,
                tokens_per_second=1000.0, memory_bytes=int(memory_gib * 2**30), elapsed_s=float(n), eta_s=eta)


def started(run_dir: str = "/runs/x", resumed: int = 0, validation: int = 0, samples: bool = False) -> RunStarted:
    training = {"sample_steps": 5, "sample_prompts": ["Hello"]} if samples else {}
    return RunStarted(run_dir=run_dir, config={"training": training}, device="cpu", device_name="CPU",
                      precision="fp32", trainable_params=1000, total_params=10_000, total_steps=10,
                      resumed_from_step=resumed, validation_examples=validation)


def live_panel(qtbot) -> TrainingPanel:
    panel = TrainingPanel()
    qtbot.addWidget(panel)
    panel.resize(1000, 800)
    panel.show()
    panel.begin_run(RunControl())
    return panel


def end_and_draw(qtbot, panel: TrainingPanel) -> None:
    """End the run and wait for its plots: after a run's end they are drawn one per flush, as during it."""
    panel.end_run()
    qtbot.waitUntil(lambda: not panel.plots.stale, timeout=5_000)


def test_step_zero_says_what_runs_before_the_first_step(qtbot):
    panel = live_panel(qtbot)
    panel.handle(started(validation=12, samples=True))
    panel.flush()
    text = panel.status_label.text()
    assert "Step 0 of 10" in text and "baseline evaluation loss on 12 validation examples" in text
    assert "samples from the base model" in text and "first loss appears after step 1" in text
    panel.handle(Evaluation(step=0, eval_loss=2.5))
    panel.flush()
    assert "Baseline evaluation loss 2.5000" in panel.status_label.text()
    panel.handle(step(1))
    panel.flush()
    assert panel.status_label.text().startswith("Training — epoch")


def test_the_five_plots_share_one_step_axis(qtbot):
    plots = MetricsPlots()
    qtbot.addWidget(plots)
    plots.resize(1000, 700)
    plots.show()
    for n in range(1, 41):
        plots.add_step(step(n, total=40))
    plots.set_total_steps(40)
    plots.redraw()
    ranges = {tuple(p.viewRange()[0]) for p in plots.plot_items}
    assert len(ranges) == 1, f"each plot has its own step range: {ranges}"
    low, high = ranges.pop()
    assert low <= 0 and high >= 40
    plots.plot_items[3].setXRange(10, 20, padding=0)  # zooming one plot (tokens/s) …
    assert all(p.viewRange()[0] == [10, 20] for p in plots.plot_items), "… zooms them all"


def test_a_new_run_starts_with_fresh_y_ranges(qtbot):
    panel = live_panel(qtbot)
    for n in range(1, 6):
        panel.handle(step(n, loss=100.0 + n))
    panel.end_run()
    panel.plots.loss_plot.setYRange(500, 900)  # the user zoomed into the old run: auto-range is off now
    panel.begin_run(RunControl())
    for n in range(1, 6):
        panel.handle(step(n, loss=1.0 + n / 100))
    end_and_draw(qtbot, panel)
    panel.plots.grab()  # auto-range is applied when the view is about to paint
    low, high = panel.plots.loss_plot.viewRange()[1]
    assert low < 1.01 and 1.05 < high < 2, f"the loss axis still shows the last run's range: {low}–{high}"


def test_memory_noise_is_not_drawn_as_swings(qtbot):
    panel = live_panel(qtbot)
    for n, memory in enumerate((2.245, 2.250, 2.246, 2.249), start=1):
        panel.handle(step(n, memory_gib=memory))
    end_and_draw(qtbot, panel)
    panel.plots.grab()  # auto-range is applied when the view is about to paint
    low, high = panel.plots.memory_plot.viewRange()[1]
    assert high - low >= MEMORY_MIN_SPAN_GIB * 0.999
    assert low <= 2.245 and high >= 2.250 and low >= 0


def test_no_eta_once_the_run_has_stopped(qtbot):
    panel = live_panel(qtbot)
    panel.handle(step(3, eta=63.0))
    panel.flush()
    assert "ETA 1:03" in panel.eta_label.text()
    panel.handle(Finished(status="stopped", adapter_path="/runs/x/adapter", step=3))
    panel.end_run()
    assert "ETA" not in panel.eta_label.text() and panel.eta_label.text() == "ran for 0:03"


def test_pause_and_resume_are_written_to_the_log(qtbot):
    panel = live_panel(qtbot)
    panel.pause_button.click()
    panel.handle(Paused(step=4))
    panel.flush()
    panel.handle(Resumed(step=4))
    panel.flush()
    log = panel.log.toPlainText()
    assert "Pause requested" in log and "Step 4: paused" in log and "Step 4: resumed" in log


def test_legend_text_follows_the_palette(qtbot):
    plots = MetricsPlots()
    qtbot.addWidget(plots)
    dark = QPalette(plots.palette())
    dark.setColor(QPalette.ColorRole.Text, QColor("#e8eaed"))
    dark.setColor(QPalette.ColorRole.Base, QColor("#202124"))
    plots.setPalette(dark)
    legend = plots.loss_plot.legend
    assert QColor(legend.opts["labelTextColor"]) == QColor("#e8eaed")
    assert legend.opts["brush"].color().rgb() == QColor("#202124").rgb()


def test_the_samples_pane_can_be_made_taller_than_the_plots(qtbot):
    panel = live_panel(qtbot)
    total = sum(panel.splitter.sizes())
    panel.splitter.setSizes([total // 4, total - total // 4])
    plots_height, bottom_height = panel.splitter.sizes()
    assert bottom_height > plots_height, panel.splitter.sizes()


def test_a_resumed_run_shows_its_history(qtbot, tmp_path):
    """The run folder's metrics.jsonl holds steps 1–5 and an evaluation at 4 from before the stop; the resumed
    session reports step 6 live. The plots then hold steps 1–6, in order."""
    run_dir = tmp_path / "run"
    with JsonlSink(run_dir / "metrics.jsonl") as sink:
        sink.emit(started(str(run_dir)))
        for n in range(1, 6):
            sink.emit(step(n, loss=3.0 - n / 10))
        sink.emit(Evaluation(step=4, eval_loss=2.7))
        sink.emit(started(str(run_dir), resumed=5))  # the resumed session's own lines follow
        sink.emit(step(6, loss=2.4))
    panel = live_panel(qtbot)
    panel.handle(started(str(run_dir), resumed=5))
    panel.handle(step(6, loss=2.4))  # the live step may come before the history has been read
    qtbot.waitUntil(lambda: (panel.flush(), panel.plots.points("loss") == 6)[1], timeout=5000)
    loss = panel.plots.series["loss"]
    assert loss.x.tolist() == [1, 2, 3, 4, 5, 6]
    assert loss.y.tolist() == [2.9, 2.8, 2.7, 2.6, 2.5, 2.4]
    assert panel.plots.series["eval_loss"].x.tolist() == [4]
    assert panel.plots.series["smoothed"].n == 6
    assert "Plotted the run's history: 5 logged steps" in panel.log.toPlainText()


def test_a_watched_runs_replayed_history_is_not_plotted_twice(qtbot, tmp_path):
    """A run watched from its folder replays metrics.jsonl from the start, the resumed session's RunStarted
    included: the history read for it finds every step plotted already."""
    run_dir = tmp_path / "run"
    with JsonlSink(run_dir / "metrics.jsonl") as sink:
        for n in range(1, 4):
            sink.emit(step(n))
    panel = live_panel(qtbot)
    for n in range(1, 4):
        panel.handle(step(n))
    panel.handle(started(str(run_dir), resumed=3))
    panel.handle(step(4))
    panel.end_run()
    qtbot.waitUntil(lambda: not panel._reading_history() and not panel._pending, timeout=5000)
    panel.flush()
    assert panel.plots.series["loss"].x.tolist() == [1, 2, 3, 4]
    assert "Plotted the run's history" not in panel.log.toPlainText()
