"""Fixtures for window tests: a real MainWindow with its own settings file, a tiny model, small data files."""

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

import workbench.gui  # noqa: E402,F401  (first: guards None's reference count against PySide6 6.12 on Python 3.11)

FACTS = [
    ("What is the capital of France?", " Paris."),
    ("Two plus two?", " Four."),
    ("Translate cat to French.", " chat"),
    ("Colour of the sky?", " Blue."),
    ("Opposite of hot?", " Cold."),
    ("Capital of Italy?", " Rome."),
]


def write_facts(folder: Path, name: str = "facts.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in FACTS))
    return path


@pytest.fixture(autouse=True)
def _private_workbench_cache(tmp_path, monkeypatch):
    """The window remembers opened models' trees in Workbench's cache (core/tree_cache.py): never the user's."""
    from workbench.core import cache

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "workbench-cache"))


@pytest.fixture
def smollm2_in_window_cache(smollm2, _private_workbench_cache) -> Path:
    """The test's private Workbench cache, already holding the session's SmolLM2 conversion (tests/conftest.py),
    linked file by file: a window test that opens the built-in model without being about its first-use conversion
    (test_demo_window.py is) skips converting it again (about 20 s)."""
    from workbench.core.cache import cache_root

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system: a copy is slower, never different
            shutil.copy2(src, dst)

    folder = cache_root() / "models" / smollm2.name
    shutil.copytree(smollm2, folder, copy_function=link)
    return folder


@pytest.fixture
def facts_file(tmp_path) -> Path:
    return write_facts(tmp_path)


@pytest.fixture
def window(qtbot, tmp_path):
    from PySide6.QtCore import QSettings

    from workbench.gui.main_window import MainWindow

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings)
    qtbot.addWidget(win)
    win.store.update("output", runs_root=str(tmp_path / "runs"))
    # The Data tab's 300 ms typing debounce is what a user typing needs, not what these tests check: each change of
    # the data settings a test makes waited it out. Through the same timer, the reading starts at the next turn of
    # the event loop instead (changes made in one go still start one reading).
    win._data_timer.setInterval(0)
    win.show()
    qtbot.waitExposed(win)
    yield win
    # Leave no job running past the test. Closing first stops the debounce timers, so no job can start
    # after the wait; unsaved settings are dropped without the question (test_run_files asks it).
    win.ask_before_discarding = False
    win.close()
    if win.training_close_box is not None:  # a run still trains in the window: stop it (the question's default)
        win.training_close_box.stop_button.click()
    # Closing cancels every job and waits about a second (CLOSE_WAIT_MS) for their threads; a run in training
    # saves its adapter first. Generous for a loaded machine, far below the minute it used to take.
    qtbot.waitUntil(lambda: win._jobs == 0, timeout=20_000)


@pytest.fixture
def opened(window, qtbot, tiny_model_dir):
    """The window with the tiny llama open."""
    with qtbot.waitSignal(window.model_opened, timeout=60_000):
        window.open_model(str(tiny_model_dir("llama")))
    return window
