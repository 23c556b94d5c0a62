"""Training as a separate process started from the window: watched through its run folder in the Train tab,
driven through its control file, its failures reported with its last output lines; and the launch script.

Every wait is on a signal or a condition (the process and its files are polled by the window's timers).
"""

import tempfile
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMessageBox

from workbench.core.exitcodes import EXIT_STOPPED
from workbench.core.config import RunConfig
from workbench.core.events import RunStarted
from workbench.core.runs import read_events, run_status


@pytest.fixture(autouse=True)
def scratch_in_tmp_path(tmp_path, monkeypatch):
    """The window keeps a failed or left-running process's run file and log in a temporary folder: here."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def configure(win, facts_file, **training) -> None:
    win.layers.preset_combo.setCurrentText("attention-qv")
    win.layers.apply_preset()
    win.store.update("lora", r=4)
    win.store.update("data", train_files=[str(facts_file)], max_length=64, packing=False)
    win.store.update("training", **{"learning_rate": 1e-2, "batch_size": 2, "warmup_ratio": 0.0, "logging_steps": 1,
                                    "scheduler": "constant", **training})
    assert not win.preflight_problems(), win.preflight_problems()


def test_two_process_run_finishes_and_the_train_tab_plots_it(opened, qtbot, facts_file):
    win = opened
    configure(win, facts_file, max_steps=3)
    win.training.location.set_separate(True, 2)
    with qtbot.waitSignal(win.external.ended, timeout=120_000) as ended:
        win.training.start_button.click()
        assert win.training.running and not win.training.location.isEnabled()
    outcome = ended.args[0]
    assert outcome.status == "finished", outcome.reason + "\n" + "\n".join(outcome.log_tail)
    run_dir = outcome.run_dir
    assert run_dir.parent == Path(win.store.config.output.runs_root).absolute()
    started = next(e for e in read_events(run_dir) if isinstance(e, RunStarted))
    assert started.world_size == 2 and started.global_batch == 4
    # The Train tab got the run's events from metrics.jsonl, as from an in-app run.
    assert win.training.plots.points("loss") == 3
    assert win.training.batch_label.text() == "global batch 4 = 2 × 2 processes × 1"
    assert "finished at step 3" in win.training.status_label.text()
    assert (outcome.adapter_dir / "adapter_model.safetensors").is_file()
    assert win.training.start_button.isEnabled() and win.training.location.isEnabled()
    assert win.runs.status_of(run_dir.name) == "finished"  # listed in the Runs tab
    assert win.error_box is None


def test_pause_checkpoint_leave_running_then_watch_and_stop_from_another_window(opened, qtbot, facts_file, tmp_path):
    win = opened
    configure(win, facts_file, max_steps=2000)
    win.training.location.set_separate(True, 1)
    with qtbot.waitSignal(win.external.started, timeout=10_000):
        win.training.start_button.click()
    run = win.external.run
    proc, run_dir = run.process, run.run_dir
    try:
        qtbot.waitUntil(lambda: win.training.plots.points("loss") >= 2, timeout=90_000)
        assert win.training.batch_label.text() == "global batch 2 = 2 × 1 process × 1"
        win.runs.refresh()
        assert win.runs.status_of(run_dir.name) == "running"

        win.training.pause_button.click()
        qtbot.waitUntil(lambda: win.training.paused, timeout=30_000)
        assert win.training.pause_button.text() == "Resume"
        win.training.pause_button.click()
        qtbot.waitUntil(lambda: not win.training.paused, timeout=30_000)
        win.training.checkpoint_button.click()
        qtbot.waitUntil(lambda: "checkpoint saved" in win.training.log.toPlainText(), timeout=30_000)

        # Closing asks (first whether to save the edited settings: no); "leave it running" closes the window
        # and the process goes on.
        win.close()
        assert win.isVisible() and win.save_prompt is not None
        win.save_prompt.button(QMessageBox.StandardButton.Discard).click()
        qtbot.waitUntil(lambda: win.external.close_box is not None, timeout=10_000)
        assert win.isVisible()
        win.external.leave_button.click()
        qtbot.waitUntil(lambda: not win.isVisible(), timeout=10_000)
        assert proc.poll() is None and run_status(run_dir).value == "running"

        # Another window finds it in the Runs tab, follows it in the Train tab and stops it.
        other = type(win)(QSettings(str(tmp_path / "other.ini"), QSettings.Format.IniFormat))
        qtbot.addWidget(other)
        other.store.update("output", runs_root=win.store.config.output.runs_root)
        other.show()
        other.tabs.setCurrentWidget(other.runs)
        qtbot.waitUntil(lambda: other.runs.status_of(run_dir.name) == "running", timeout=10_000)
        other.runs.select(run_dir.name)
        assert other.runs.watch_button.isEnabled()
        other.runs.watch_button.click()
        assert other.tabs.currentWidget() is other.training and other.training.running
        seen = win.training.plots.points("loss")
        qtbot.waitUntil(lambda: other.training.plots.points("loss") > seen, timeout=30_000)  # history replayed, and more
        with qtbot.waitSignal(other.external.ended, timeout=60_000) as ended:
            other.training.stop_button.click()
        outcome = ended.args[0]
        assert outcome.status == "stopped"
        assert proc.wait(timeout=30) == EXIT_STOPPED
        assert (outcome.adapter_dir / "adapter_model.safetensors").is_file()
        assert "stopped at step" in other.training.status_label.text()
        assert run_status(run_dir).value == "stopped"
        other.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_failing_and_a_killed_process_are_reported_with_their_last_output(opened, qtbot, facts_file, tmp_path):
    win = opened
    data = tmp_path / "gone.jsonl"
    data.write_text(facts_file.read_text())
    configure(win, data, max_steps=2000)
    win.training.location.set_separate(True, 1)
    data.unlink()  # the process finds no data: it refuses before any run folder is written
    runs_root = Path(win.store.config.output.runs_root)
    with qtbot.waitSignal(win.external.ended, timeout=60_000) as ended:
        win.training.start_button.click()
    outcome = ended.args[0]
    assert outcome.status == "failed" and outcome.exit_code == 2
    assert "error:" in outcome.reason and "gone.jsonl" in outcome.reason
    assert win.error_box is not None and "gone.jsonl" in win.error_box.text()
    assert "Last lines of the process's output" in win.error_box.text()
    assert "Run failed" in win.training.status_label.text()
    assert not any(runs_root.iterdir()), "the claimed run folder is removed again"
    win.error_box.close()

    # The window is usable: the same Start, with the data back, runs; killed, it is reported as a crash.
    data.write_text(facts_file.read_text())
    with qtbot.waitSignal(win.external.started, timeout=10_000):
        win.training.start_button.click()
    proc = win.external.run.process
    try:
        qtbot.waitUntil(lambda: win.training.plots.points("loss") >= 1, timeout=90_000)
        with qtbot.waitSignal(win.external.ended, timeout=30_000) as ended:
            proc.kill()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    outcome = ended.args[0]
    assert outcome.status == "crashed" and outcome.exit_code < 0
    assert "was killed (SIGKILL)" in outcome.reason
    text = win.error_box.text()
    assert win.error_box.windowTitle() == "Training crashed"
    assert f"run folder: {outcome.run_dir}" in text  # one of its last output lines
    assert "Run crashed" in win.training.status_label.text()
    assert f"Full output: {outcome.log_path}" in text and outcome.log_path.parent.parent == tmp_path
    assert win.runs.status_of(outcome.run_dir.name) == "crashed"
    assert win.training.start_button.isEnabled()


def test_launch_script_export_writes_script_and_run_file(opened, qtbot, facts_file, tmp_path):
    win = opened
    configure(win, facts_file, max_steps=10)
    dialog = win.open_launch_dialog()
    dialog.nodes.setValue(2)
    dialog.gpus.setValue(4)
    assert "world size 8" in dialog.world_label.text()
    for scheduler in ("plain", "slurm"):
        dialog.scheduler.setCurrentIndex(dialog.scheduler.findData(scheduler))
        dialog.script_edit.setText(str(tmp_path / f"{scheduler}.sh"))
        with qtbot.waitSignal(dialog.written):
            dialog.write_button.click()
        script = (tmp_path / f"{scheduler}.sh").read_text()
        assert "--nnodes=2" in script and "--nproc_per_node=4" in script
        assert "world size 8" in script
        assert f"train {tmp_path / f'{scheduler}.toml'} --run-dir {dialog.run_dir_edit.text()}" in script
        assert ("#SBATCH --nodes=2" in script) == (scheduler == "slurm")
        assert str(tmp_path / f"{scheduler}.sh") in dialog.result.text()
    saved = RunConfig.from_toml(tmp_path / "slurm.toml")
    assert saved.training.max_steps == 10 and saved.lora.r == 4
    assert saved.data.train_files == [str(facts_file)] and Path(saved.output.runs_root).is_absolute()
    dialog.script_edit.setText("")
    with qtbot.waitSignal(dialog.failed):
        dialog.write_button.click()
