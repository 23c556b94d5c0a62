"""The Train tab's run location (this app, or N separate processes) is remembered across sessions."""

from PySide6.QtCore import QSettings

from workbench.gui.main_window import MainWindow


def test_the_run_location_is_remembered(window, qtbot, tmp_path):
    assert not window.training.location.separate  # a first start trains in the app
    window.training.location.set_separate(True, 2)

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    later = MainWindow(settings)  # the next session, same settings file
    qtbot.addWidget(later)
    assert later.training.location.separate and later.training.location.process_count == 2

    later.training.location.set_separate(False, 2)
    again = MainWindow(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(again)
    assert not again.training.location.separate
    for w in (later, again):
        w.ask_before_discarding = False
        w.close()
