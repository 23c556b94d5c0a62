"""Judging adapters in the window: evaluation curves beside the loss, a sweep's table and rank trade-off plot, the
run queue (add, sweep, reorder, remove, run with a failing entry), and the intruder-dimension trade-off dialog.

The sweep and the dialog read real run folders trained on the tiny llama; every number they show is compared with
what the runs recorded (metrics.jsonl, the adapter files) or with core's own reading of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.core import run_queue
from workbench.core.config import RunConfig
from workbench.core.events import Evaluation, RunStarted
from workbench.core.runs import read_events
from workbench.core.sweep import pareto_front, sweep_table
from workbench.gui.widgets.intruder_dialog import IntruderDialog
from workbench.gui.widgets.queue_panel import QueuePanel
from workbench.gui.widgets.sweep_view import SweepView
from workbench.gui.widgets.training_panel import TrainingPanel

_sweep_cache: dict = {}


def config_for(model: Path, root: Path, **sections) -> RunConfig:
    data = root / "same.jsonl"
    if not data.exists():
        root.mkdir(parents=True, exist_ok=True)
        data.write_text("".join(json.dumps({"prompt": f"Q{i}:", "completion": " zzzz zzzz zzzz"}) + "\n"
                                for i in range(8)))
    config = RunConfig.from_dict({
        "model": {"source": str(model)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "preset": "attention"},
        "data": {"train_files": [str(data)], "validation_files": [str(data)], "max_length": 32, "packing": False},
        "training": {"max_steps": 4, "eval_steps": 2, "learning_rate": 3e-2, "batch_size": 8, "warmup_ratio": 0.0,
                     "scheduler": "constant", "logging_steps": 1, "device": "cpu"},
        "output": {"runs_root": str(root / "runs"), "name": "ranks", "group": "ranks"},
    })
    return config.copy_with(**sections) if sections else config


@pytest.fixture
def sweep_runs(tmp_path_factory, tiny_model_dir) -> list[Path]:
    """A sweep of three ranks, trained in this process (each run an ordinary run folder of group "ranks")."""
    if "runs" not in _sweep_cache:
        from workbench.core.sweep import expand, parse_axes
        from workbench.core.training import run

        root = tmp_path_factory.mktemp("sweep")
        config = config_for(tiny_model_dir("llama", initializer_range=0.3), root,
                            eval={"retention": True, "max_new_tokens": 8})
        _sweep_cache["runs"] = [run(p.config, None).run_dir for p in expand(config, parse_axes(["lora.r=2,4,8"]))]
    return _sweep_cache["runs"]


def test_evaluation_curves_appear_beside_the_loss_with_the_numbers_of_the_events(qtbot):
    panel = TrainingPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.handle(RunStarted(run_dir="r", config={"eval": {"retention": True, "retention_warn_below": 0.8}},
                            device="cpu", device_name="CPU", precision="fp32", trainable_params=10, total_params=100,
                            total_steps=10))
    panel.handle(Evaluation(step=0, eval_loss=2.0, metrics={"eval_runtime": 1.5}))
    panel.flush()
    assert not panel.eval_plots.isVisible(), "a loss-only evaluation shows no extra plots"
    panel.handle(Evaluation(step=0, eval_loss=2.0, metrics={"exact_match": 0.0, "json_fields": 0.1,
                                                            "retention_agreement": 1.0, "retention_ppl_ratio": 1.0}))
    panel.handle(Evaluation(step=5, eval_loss=1.0, metrics={"exact_match": 0.5, "json_fields": 0.75,
                                                            "retention_agreement": 0.7, "retention_ppl_ratio": 1.3,
                                                            "perplexity": 2.718}))
    panel.flush()
    plots = panel.eval_plots
    assert plots.isVisible()
    assert plots.values("exact_match") == ([0.0, 5.0], [0.0, 0.5])
    assert plots.values("json_fields") == ([0.0, 5.0], [0.1, 0.75])
    assert plots.values("retention_agreement") == ([0.0, 5.0], [1.0, 0.7])
    assert plots.values("perplexity") == ([5.0], [2.718])
    assert plots.values("eval_runtime") == ([], []), "bookkeeping numbers are not drawn"
    assert list(plots.curves["retention_ppl_ratio"].yData) == [1.0, 1.3]
    assert plots.warn_line.isVisible() and plots.warn_line.value() == 0.8
    assert "exact match 0.5" in panel.log.toPlainText() and "agreement with base 0.7" in panel.log.toPlainText()

    from workbench.core.control import RunControl

    panel.begin_run(RunControl())
    assert not plots.has_data and not plots.isVisible(), "a new run starts with empty evaluation plots"


def test_the_sweep_table_and_trade_off_plot_show_the_runs_recorded_numbers(qtbot, sweep_runs):
    view = SweepView()
    qtbot.addWidget(view)
    view.set_runs(sweep_runs)  # hidden: nothing is read until the view is shown
    with qtbot.waitSignal(view.loaded, timeout=60_000):
        view.show()
    assert view.data.group == "ranks" and view.data.varied == ["lora.r"]
    assert [view.group_box.itemText(i) for i in range(view.group_box.count())] == ["ranks"]
    assert view.table.rowCount() == 3
    headers = [view.table.horizontalHeaderItem(c).text() for c in range(view.table.columnCount())]
    assert headers[:4] == ["", "Run", "lora.r", "Status"]

    recorded = []
    for run_dir in sweep_runs:
        events = read_events(run_dir)
        trainable = next(e for e in events if e.kind == "run_started").trainable_params
        best = min(e.eval_loss for e in events if e.kind == "evaluation")
        recorded.append((float(trainable), best, run_dir.name))
    assert [r[0] for r in recorded] == sorted(r[0] for r in recorded) and recorded[2][0] == 4 * recorded[0][0]
    assert [(x, n) for x, _, n in view.plotted] == [(x, n) for x, _, n in recorded]
    assert [y for _, y, _ in view.plotted] == pytest.approx([y for _, y, _ in recorded], rel=1e-9)
    front = pareto_front([(x, y) for x, y, _ in view.plotted])
    assert view.front == [view.plotted[i] for i in front]
    assert list(view.front_line.xData) == sorted(view.plotted[i][0] for i in front)
    assert view.plot.getPlotItem().ctrl.logXCheck.isChecked(), "trainable parameters on a log axis"
    for row, (x, _, name) in enumerate(recorded):
        assert view.table.item(row, 1).text() == name
        assert view.table.item(row, 2).text() == name.rsplit("-r", 1)[1]
        assert view.table.item(row, 4).text() == f"{int(x):,}"
        assert view.table.item(row, 0).text() == ("★" if row in front else "")

    rows = sweep_table(sweep_runs, ["lora.r"])
    view.quality_box.setCurrentIndex(view.quality_box.findData("last_loss"))
    view.draw()
    assert [y for _, y, _ in view.plotted] == [r.last_loss for r in rows]
    # Retention at the step of each run's best checkpoint (best_metric eval_loss: its lowest after step 0, the
    # earliest on a tie), as metrics.jsonl has it; higher agreement is better for the front.
    at_best = []
    for d in sweep_runs:
        trained = [e for e in read_events(d) if e.kind == "evaluation" and e.step > 0]
        best = min(trained, key=lambda e: (e.eval_loss, e.step))
        at_best.append((best.metrics["retention_agreement"], best.step))
    view.quality_box.setCurrentIndex(view.quality_box.findData("retention_agreement"))
    view.draw()
    assert [y for _, y, _ in view.plotted] == [a for a, _ in at_best]
    assert view.front == [view.plotted[i] for i in pareto_front([(x, -y) for x, y, _ in view.plotted])]
    headers = [view.table.horizontalHeaderItem(c).text() for c in range(view.table.columnCount())]
    column = headers.index("agreement with base")
    assert [view.table.item(i, column).text() for i in range(3)] == [f"{a:.4g} @ {step}" for a, step in at_best]


def test_the_sweep_table_shows_each_metrics_best_evaluation_and_its_step(qtbot, tmp_path):
    from sweep_folders import EVALUATIONS, write_run_folder

    dirs = [write_run_folder(tmp_path, "ranks-r2", 2, EVALUATIONS), write_run_folder(tmp_path, "ranks-r8", 8, EVALUATIONS[:3])]
    view = SweepView()
    qtbot.addWidget(view)
    view.set_runs(dirs)
    with qtbot.waitSignal(view.loaded, timeout=60_000):
        view.show()
    headers = [view.table.horizontalHeaderItem(c).text() for c in range(view.table.columnCount())]
    cell = {name: [view.table.item(i, headers.index(name)).text() for i in range(2)]
            for name in ("Best eval loss", "exact JSON", "JSON fields", "valid JSON", "perplexity",
                         "agreement with base", "perplexity ÷ base")}
    # EVALUATIONS: json_exact peaks at step 20 (0.75) and ends at 0.65; the second run stops at step 20.
    assert cell == {"Best eval loss": ["0.03 @ 40", "0.05 @ 20"], "exact JSON": ["0.75 @ 20", "0.75 @ 20"],
                    "JSON fields": ["0.9 @ 20", "0.9 @ 20"], "valid JSON": ["0.8 @ 30", "0.7 @ 20"],
                    "perplexity": ["1.1 @ 30", "1.3 @ 20"], "agreement with base": ["0.9 @ 20", "0.9 @ 20"],
                    "perplexity ÷ base": ["1.05 @ 20", "1.05 @ 20"]}
    assert "best evaluation" in view.table.horizontalHeaderItem(headers.index("exact JSON")).toolTip()
    assert "best checkpoint" in view.table.horizontalHeaderItem(headers.index("agreement with base")).toolTip()
    view.quality_box.setCurrentIndex(view.quality_box.findData("json_exact"))
    view.draw()
    assert [(x, y) for x, y, _ in view.plotted] == [(2000.0, 0.75), (8000.0, 0.75)], "the best, not the last 0.65"
    assert view.front == [view.plotted[0]], "the same quality for fewer parameters"


def test_the_window_runs_tab_shows_a_runs_evaluation_curves_and_queues_the_settings(window, qtbot, sweep_runs):
    runs = window.runs
    root = sweep_runs[0].parent
    window.store.update("output", runs_root=str(root))
    window.tabs.setCurrentWidget(runs)
    qtbot.waitUntil(lambda: runs.row_of(sweep_runs[1].name) >= 0, timeout=10_000)
    runs.select(sweep_runs[1].name)
    evaluations = [e for e in read_events(sweep_runs[1]) if e.kind == "evaluation"]
    qtbot.waitUntil(lambda: len(runs.eval_plots.values("retention_agreement")[0]) == len(evaluations), timeout=10_000)
    assert runs.eval_plots.values("retention_agreement") == (
        [float(e.step) for e in evaluations], [e.metrics["retention_agreement"] for e in evaluations])
    assert runs.eval_plots.warn_line.isVisible()

    runs.views.setCurrentWidget(runs.queue)
    assert runs.queue.add_button.isEnabled()
    runs.queue.add_button.click()
    entry = run_queue.queue_entries(root)[-1]
    assert entry.status == "pending" and len(run_queue.queue_entries(root)) == 1
    queued = RunConfig.from_toml(run_queue.queue_dir(root) / f"{entry.id}.toml")
    assert queued.lora == window.store.config.lora and queued.training == window.store.config.training
    run_queue.remove_entry(root, entry.number)


@pytest.mark.subprocess
def test_the_queue_adds_reorders_removes_and_runs_on_past_a_failing_entry(qtbot, tmp_path, tiny_model_dir):
    config = config_for(tiny_model_dir("llama", initializer_range=0.3), tmp_path, training={"max_steps": 1,
                                                                                          "eval_steps": None},
                        data={"validation_files": []})
    panel = QueuePanel()
    qtbot.addWidget(panel)
    panel.config_source = lambda: config.copy_with(output={"name": "good"})
    panel.set_root(tmp_path / "runs")
    panel.show()
    assert panel.table.rowCount() == 0 and not panel.run_button.isEnabled()

    panel.grid_edit.setText("lora.r=2,4")
    panel.sweep_button.click()
    assert [e.name for e in panel.entries] == ["ranks-r2", "ranks-r4"] and "Queued 2 runs" in panel.status.text()
    panel.add_button.click()
    assert [e.name for e in panel.entries] == ["ranks-r2", "ranks-r4", "good"]
    panel.select(3)
    panel.up_button.click()
    panel.up_button.click()
    assert [e.name for e in panel.entries] == ["good", "ranks-r2", "ranks-r4"]
    assert panel.selected().name == "good", "the moved entry stays selected"
    panel.select(2)
    panel.remove_button.click()
    assert [e.name for e in panel.entries] == ["good", "ranks-r2"]
    assert [e.name for e in run_queue.queue_entries(tmp_path / "runs")] == ["good", "ranks-r2"], "the core's queue"

    panel.grid_edit.setText("lora.r")
    panel.sweep_button.click()
    assert "expected section.field=value1,value2" in panel.status.text(), "a bad grid is named, nothing queued"
    # A run whose data file is missing fails; the queue goes on to the next.
    broken = config.copy_with(output={"name": "broken"}, data={"train_files": [str(tmp_path / "missing.jsonl")]})
    run_queue.add_to_queue(broken)
    panel.refresh()
    panel.select(4)
    panel.up_button.click()
    panel.up_button.click()
    assert [e.name for e in panel.entries] == ["broken", "good", "ranks-r2"]
    panel.select(1)
    panel.remove_button.click()  # one real run is enough: each is a process of its own
    with qtbot.waitSignal(panel.runnerEnded, timeout=240_000):
        panel.run_button.click()
        assert not panel.run_button.isEnabled() and panel.stop_button.isEnabled()
    assert [(e.name, e.status) for e in panel.entries] == [("broken", "failed"), ("good", "finished")]
    assert "missing.jsonl: file not found" in panel.entries[0].message
    assert "2 run(s): 1 ended well, 1 failed" in panel.status.text()
    assert (Path(panel.entries[1].run_dir) / "adapter" / "adapter_model.safetensors").is_file()


def test_the_intruder_dialog_shows_the_trade_off_and_saves_a_new_adapter(qtbot, sweep_runs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from workbench.core.intruders import task_loss

    dialog = IntruderDialog(sweep_runs[2])
    qtbot.addWidget(dialog)
    dialog.show()
    with qtbot.waitSignal(dialog.measured, timeout=120_000) as measured:
        dialog.start()
    trade = measured.args[0]
    assert [p.mitigation_lambda for p in trade.points] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert dialog.table.rowCount() == 5
    assert dialog.table.item(0, 0).text() == "1 (as trained)"
    assert list(dialog.curve.xData) == [p.retention_ppl_ratio for p in trade.points]
    assert list(dialog.curve.yData) == [p.task_loss for p in trade.points]
    # λ = 1 is the trained adapter: its task loss is the one the run's own model gives.
    assert trade.points[0].task_loss == pytest.approx(task_loss(dialog.loaded.model, dialog.loaded.task_pairs), rel=1e-6)

    dialog.lambda_box.setCurrentIndex(dialog.lambda_box.findData(0.5))
    out = tmp_path / "reduced"
    dialog.out_edit.setText(str(out))
    with qtbot.waitSignal(dialog.saved, timeout=60_000):
        dialog.save_button.click()
    base = AutoModelForCausalLM.from_pretrained(dialog.loaded.config.model.source)
    reloaded = PeftModel.from_pretrained(base, out).eval()
    assert task_loss(reloaded, dialog.loaded.task_pairs) == pytest.approx(trade.points[2].task_loss, rel=1e-5)
    with qtbot.waitSignal(dialog.failed, timeout=30_000):
        dialog.save_button.click()
    assert "already exists" in dialog.status.text()
