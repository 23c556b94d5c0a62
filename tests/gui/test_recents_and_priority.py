"""Two things the window keeps off its GUI thread's busy turns: the recent lists' write to the settings file (an
fsync, 12-24 ms), written a moment after the change; and the CPU a separate-process run takes from it."""

import os
import subprocess
import sys

import pytest
from PySide6.QtCore import QSettings

from workbench.gui.process_switches import lower_process_priority
from workbench.gui.recents import RECENT_LIMIT, WRITE_DELAY_MS, Recents


def test_a_remembered_item_is_read_at_once_and_written_a_moment_later(qtbot, tmp_path):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    recents = Recents(settings)
    recents.remember("recent/models", "/models/a")
    recents.remember("recent/models", "/models/b")
    assert recents.items("recent/models") == ["/models/b", "/models/a"]
    assert settings.value("recent/models") is None, "not written in the turn that remembered it"
    qtbot.waitUntil(lambda: settings.value("recent/models") == ["/models/b", "/models/a"], timeout=WRITE_DELAY_MS * 10)
    settings.sync()
    assert QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat).value("recent/models") == \
        ["/models/b", "/models/a"]
    # The same list again (a model re-opened at the top) writes nothing; a new one is cut to the limit.
    recents.remember("recent/models", "/models/b")
    assert not recents._timer.isActive()
    for i in range(RECENT_LIMIT + 3):
        recents.remember("recent/models", f"/models/{i}")
    recents.flush()  # what closing does before syncing the settings
    assert settings.value("recent/models") == [f"/models/{i}" for i in reversed(range(3, RECENT_LIMIT + 3))]
    assert not recents._timer.isActive()


def test_closing_the_window_writes_the_recent_lists_not_yet_written(qtbot, tmp_path):
    from workbench.gui.main_window import MainWindow

    path = tmp_path / "settings.ini"
    win = MainWindow(QSettings(str(path), QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    win.recents.remember("recent/data", "/data/facts.jsonl")
    win.ask_before_discarding = False
    win.close()
    assert Recents(QSettings(str(path), QSettings.Format.IniFormat)).items("recent/data") == ["/data/facts.jsonl"]


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="process priorities are POSIX")
def test_a_separate_process_run_gets_a_lower_priority_than_the_window():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        before = os.getpriority(os.PRIO_PROCESS, child.pid)
        lower_process_priority(child.pid)
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == max(before, 10)
    finally:
        child.kill()
        child.wait()
    lower_process_priority(child.pid)  # gone by now: nothing happens, nothing is raised
