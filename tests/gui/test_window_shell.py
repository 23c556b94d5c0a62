"""The window's shell is painted first and its tabs are built in the event-loop turns after (gui/startup.py); code
that needs the window before then gets it complete, and a window closed before then closes without building."""

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication, QLabel

from workbench.gui.main_window import MainWindow
from workbench.gui.startup import TAB_TITLES


def new_window(tmp_path, qtbot) -> MainWindow:
    window = MainWindow(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    return window


def test_the_pages_are_built_one_per_turn_after_the_first_paint(tmp_path, qtbot):
    window = new_window(tmp_path, qtbot)
    assert [window.tabs.tabText(i) for i in range(window.tabs.count())] == list(TAB_TITLES)
    assert all(isinstance(window.tabs.widget(i), QLabel) for i in range(len(TAB_TITLES)))  # placeholders
    assert "store" not in window.__dict__
    window.show()
    qtbot.waitExposed(window)
    pages_built = []  # after each turn: how many tabs hold their real page
    for _ in range(40):
        QApplication.processEvents()
        pages_built.append(sum(not isinstance(window.tabs.widget(i), QLabel) for i in range(len(TAB_TITLES))))
        if window.is_built:
            break
    assert window.is_built
    assert pages_built[-1] == len(TAB_TITLES)
    steps = [n for i, n in enumerate(pages_built) if i == 0 or n != pages_built[i - 1]]
    assert steps[:3] == [0, 1, 2], f"one page a turn, the first tab first: {pages_built}"
    assert window.tabs.currentIndex() == 0 and window.tabs.widget(0).isAncestorOf(window.picker)
    assert window.tabs.widget(3) is window.training
    assert [a.text() for a in window.menuBar().actions()] == ["&File", "&Model", "&Data", "&Train", "&View"]
    assert window.menuBar().actions()[0].menu().actions(), "the shell's menu titles now have their actions"
    window.ask_before_discarding = False
    window.close()


def test_asking_for_a_part_before_the_build_ends_builds_it_at_once(tmp_path, qtbot):
    window = new_window(tmp_path, qtbot)
    ready = []
    window.when_built(lambda: ready.append(1))
    assert not window.is_built and ready == []
    window.store.update("training", max_steps=7)  # as a script or test does right after MainWindow()
    assert window.is_built and ready == [1]
    assert window.form.isAncestorOf(window.form) and window.tabs.widget(1) is window.form
    assert window.store.config.training.max_steps == 7
    window.when_built(lambda: ready.append(2))  # complete: called at once
    assert ready == [1, 2]
    try:
        window.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("a missing attribute is still an AttributeError")
    window.ask_before_discarding = False
    window.close()


def test_a_window_closed_before_its_tabs_exist_closes_without_building_them(tmp_path, qtbot):
    window = new_window(tmp_path, qtbot)
    window.show()
    closed = []
    window.closed.connect(lambda: closed.append(1))
    window.close()  # before the first turn: nothing to ask, no job to wait for
    for _ in range(10):
        QApplication.processEvents()
    assert closed == [1] and not window.isVisible()
    assert not window.is_built and "store" not in window.__dict__
