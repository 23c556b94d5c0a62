"""Quitting while a run trains in the window asks: stop it, keep it running (continued by a separate process that
outlives the window), or cancel. New run during training asks too."""

import sys
from pathlib import Path

from PySide6.QtWidgets import QMessageBox

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from waiting import wait_until  # noqa: E402
from workbench.core.runs import RunFolder, send_control  # noqa: E402
from workbench.core.runs.status import StatusRecord  # noqa: E402

from test_window_flow import type_into  # noqa: E402


def _start_a_long_run(win, qtbot, facts_file):
    win.layers.preset_combo.setCurrentText("attention-qv")
    win.layers.apply_preset()
    for key, text in (("training.max_steps", "100000"), ("training.batch_size", "2"), ("data.max_length", "64"),
                      ("training.save_steps", "100000")):
        type_into(qtbot, win.form, key, text)
    with qtbot.waitSignal(win.data_inspected, timeout=60_000):
        win.data.add_files([str(facts_file)])
    win.training.start_button.click()
    qtbot.waitUntil(lambda: win.training.plots.points("loss") >= 2, timeout=120_000)


def test_quit_during_training_asks_and_keep_running_hands_the_run_to_a_separate_process(opened, qtbot, facts_file):
    win = opened
    win.ask_before_discarding = False  # the unsaved-settings question has tests of its own
    _start_a_long_run(win, qtbot, facts_file)

    win.request_new_run()  # asks even with nothing unsaved: a run is training
    assert win.discard_prompt is not None and "A run is training" in win.discard_prompt.text()
    win.discard_prompt.button(QMessageBox.StandardButton.Cancel).click()
    qtbot.waitUntil(lambda: win.discard_prompt is None)
    assert win.training.running

    win.close()
    assert win.isVisible() and win.training_close_box is not None, "asked, not stopped"
    win.training_close_box.button(QMessageBox.StandardButton.Cancel).click()
    qtbot.waitUntil(lambda: win.training_close_box is None)
    assert win.training.running and win.isVisible()

    win.close()
    with qtbot.waitSignal(win.training_done, timeout=120_000) as done:
        win.training_close_box.keep_button.click()
    result = done.args[0]
    assert result.status == "stopped"
    qtbot.waitUntil(lambda: not win.isVisible() and win._jobs == 0, timeout=60_000)
    process = win.continued_process
    assert process is not None, "a separate process continues the run"
    try:
        stopped_at = result.final_step
        folder = RunFolder(result.run_dir)

        def resumed() -> bool:
            record = StatusRecord.read(folder)
            return record is not None and record.pid == process.pid and record.state == "running" and \
                record.step > stopped_at

        wait_until(resumed, "the separate process to resume the run past its stop", timeout=180, proc=process)
        send_control(result.run_dir, "stop")
        assert process.wait(timeout=180) == 3, "stopped by its control file: the 'stopped' exit code"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
