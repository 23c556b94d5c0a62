"""Closing the window never waits long on a job, and an exception nobody caught becomes one line and a log."""

import threading
from pathlib import Path

import pytest
from PySide6.QtWidgets import QApplication

from workbench.core import cache
from workbench.gui import crash_report, workers


def test_closing_cancels_a_job_that_does_not_end_on_its_own_and_drops_its_reports(window, qtbot):
    release = threading.Event()  # the stubborn job ignores cancelling; the test lets it go at the end
    delivered, saw_cancel = [], []

    def polite(should_stop):  # checks its cancel flag between units of work, as the core's long jobs do
        while not should_stop() and not release.wait(0.01):
            pass
        saw_cancel.append(should_stop())
        return "polite result"

    before = set(threading.enumerate())
    for worker in (workers.FunctionWorker(lambda: release.wait(120) and "late result", "A stubborn job"),
                   workers.FunctionWorker(polite, "A polite job", stoppable=True)):
        worker.result.connect(delivered.append)
        worker.failed.connect(lambda message, _: delivered.append(message))
        window._start(worker)
    threads = [t for t in threading.enumerate() if t not in before]
    assert window._jobs == 2 and len(threads) == 2

    window.ask_before_discarding = False  # the unsaved-settings question has tests of its own
    # Closing gives the jobs about a second (CLOSE_WAIT_MS), then leaves the stubborn one behind; `closed` (which
    # quits the application: a window hidden meanwhile is no "last window closed" to Qt) follows.
    with qtbot.waitSignal(window.closed, timeout=10_000):
        window.close()
        assert not window.isVisible(), "the window goes at once"
    assert window._jobs == 0
    assert not window._running_jobs
    assert threads[0].is_alive(), "the stubborn job was abandoned, not waited for"
    threads[1].join(10)
    assert saw_cancel == [True], "the polite job saw its cancel flag and ended"

    release.set()
    threads[0].join(10)
    QApplication.processEvents()
    assert delivered == [], "nothing a cancelled job reports reaches a slot"


def test_a_window_deleted_while_its_jobs_run_is_deleted_once_they_have_ended(qtbot, tmp_path):
    """pytest-qt's ``addWidget`` closes a window and then ``deleteLater()``s it; a job still running then (the
    demo's "Looking up related models", say) is a child of the window. Deleting the window at once took the job
    with it before it could say ``ended``, so ``_jobs`` stayed 1 for good (test_demo_window's teardown timed out):
    the deletion waits for the jobs instead."""
    from shiboken6 import isValid
    from PySide6.QtCore import QSettings

    from workbench.gui.main_window import MainWindow

    win = MainWindow(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))  # not addWidget's
    win.ask_before_discarding = False
    win.show()
    qtbot.waitExposed(win)
    release = threading.Event()
    win._start(workers.FunctionWorker(lambda: release.wait(120), "A job that ignores cancelling"))
    win.close()
    assert win._closing and not win.isVisible()
    win.deleteLater()
    qtbot.wait(100)  # an event loop: where the deferred deletion used to run
    assert isValid(win), "the window is not deleted while a job it counts runs"
    assert win._jobs == 1
    release.set()  # the job's thread ends on its own, within the closing window's wait
    qtbot.waitUntil(lambda: not isValid(win), timeout=10_000)


def test_closing_during_a_data_inspection_leaves_within_the_wait(opened, qtbot, facts_file):
    window = opened
    window.data.add_files([str(facts_file)])
    qtbot.waitUntil(lambda: window._data_running, timeout=10_000)
    failures = []
    window.data_failed.connect(failures.append)
    window.ask_before_discarding = False
    window.close()
    qtbot.waitUntil(lambda: window._jobs == 0, timeout=10_000)
    assert failures == [], "a cancelled inspection is not reported as a failure"


def test_a_worker_bug_is_one_line_naming_the_job_and_the_crash_log(window, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))

    def broken():
        return {}["missing key"]

    worker = workers.FunctionWorker(broken, "Reading the data")
    worker.failed.connect(lambda message, log: window.show_error("Cannot use the data", message, ""))
    with qtbot.waitSignal(worker.failed, timeout=10_000) as blocker:
        window._start(worker)
    message, log = blocker.args
    assert message.startswith("Reading the data failed unexpectedly: KeyError: 'missing key'. The details are in ")
    assert "\n" not in message and "Traceback" not in message
    assert log and log in message and Path(log).parent == tmp_path / "cache" / "logs"
    text = open(log, encoding="utf-8").read()
    assert "Traceback" in text and "def broken" not in text and "broken" in text
    assert window.error_box is not None and window.error_box.detailedText() == ""


@pytest.mark.qt_no_exception_capture
def test_a_slot_that_raises_becomes_a_status_line_and_a_message_box(window, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    uninstall = crash_report.install(window.report_unexpected)
    try:
        def summary_that_breaks(section):
            raise ZeroDivisionError("rank over nothing")

        window.store.changed.connect(summary_that_breaks)
        window.store.update("lora", r=4)  # the real signal, emitted by the real store
        window.store.changed.disconnect(summary_that_breaks)
    finally:
        uninstall()
    line = window.statusBar().currentMessage()
    assert "summary_that_breaks failed unexpectedly: ZeroDivisionError: rank over nothing" in line
    logs = list((tmp_path / "cache" / "logs").glob("workbench-*.log"))
    assert len(logs) == 1 and str(logs[0]) in line
    assert "Traceback" in logs[0].read_text() and "Traceback" not in line
    assert window.error_box is not None and window.error_box.text() == line
    assert window.isVisible(), "the window carries on"
    assert window.store.config.lora.r == 4
