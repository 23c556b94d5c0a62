"""The Train tab plots a preference run's own numbers: the Step events of a real tiny DPO run, fed to the panel,
end up as the margin, chosen, rejected and accuracy curves, point for point; a supervised run keeps them hidden."""

import json

import pytest

from workbench.core.config import RunConfig
from workbench.core.control import RunControl

from workbench.core import events as ev
from workbench.core.training import run
from workbench.gui.widgets.training_panel import TrainingPanel

pytest.importorskip("trl")


def dpo_config(base, tmp_path):
    path = tmp_path / "pairs.jsonl"
    pairs = [("Capital of France?", " Paris.", " the lazy dog"), ("Two plus two?", " four.", " brown fox jumps")]
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in pairs))
    return RunConfig.from_dict({
        "model": {"source": str(base)},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "preset": "attention"},
        "data": {"train_files": [str(path)], "max_length": 64},
        "training": {"method": "dpo", "beta": 0.1, "max_steps": 4, "learning_rate": 1e-2, "batch_size": 2,
                     "scheduler": "constant", "device": "cpu"},
        "output": {"runs_root": str(tmp_path / "runs")},
    })


def test_dpo_steps_draw_the_reward_curves(qtbot, tiny_model_dir, tmp_path):
    sink = ev.ListSink()
    run(dpo_config(tiny_model_dir("llama", initializer_range=0.3), tmp_path), sink)
    steps = sink.of(ev.Step)
    assert len(steps) == 4 and all("rewards/margins" in s.metrics for s in steps)

    panel = TrainingPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.begin_run(RunControl())
    assert panel.preference_plots.isHidden()
    for e in sink.events:
        panel.handle(e)
    panel.end_run()
    assert panel.preference_plots.isVisible()
    for name in ("rewards/margins", "rewards/chosen", "rewards/rejected", "rewards/accuracies"):
        xs, ys = panel.preference_plots.values(name)
        assert xs == [s.step for s in steps]
        assert ys == pytest.approx([s.metrics[name] for s in steps]), name


def test_a_supervised_run_shows_no_reward_plots(qtbot):
    panel = TrainingPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.begin_run(RunControl())
    for step in range(1, 4):
        panel.handle(ev.Step(step=step, total_steps=3, epoch=step / 3, loss=1.0 / step, learning_rate=1e-4))
    panel.end_run()
    assert panel.preference_plots.isHidden() and not panel.preference_plots.has_data
    assert panel.plots.points("loss") == 3


def test_the_settings_form_sets_the_adapter_to_start_from(window, qtbot, tmp_path):
    editor = window.form.editors["model.init_adapter"]
    assert editor.label == "Start from adapter" and window.store.config.model.init_adapter is None
    qtbot.keyClicks(editor.widget, str(tmp_path / "runs" / "sft" / "adapter"))
    assert window.store.config.model.init_adapter == str(tmp_path / "runs" / "sft" / "adapter")
    editor.widget.clear()
    editor.widget.textEdited.emit("")  # what the user's deleting the text sends (clear() itself sends nothing)
    assert window.store.config.model.init_adapter is None, "an empty field: a fresh adapter"
