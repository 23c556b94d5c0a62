"""Starting the window: ``main(run_file)`` shows it first and imports the ML stack afterwards.

Only Qt and a few light modules are imported before the window is on screen: its shell is painted first and
its tabs, with the run-file schema (core.config, pydantic) behind them, are built in the event-loop turns after
(startup.py); plots are built later still (widgets/lazy_plot.py). pyqtgraph, torch and transformers are
imported by a background worker once the window is complete, so the window appears about as fast as a bare
Qt window and the first model opens without the import wait.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from .process_switches import apply_process_switches

ASSETS = Path(__file__).parent / "assets"


def create_app(argv: list[str] | None = None) -> QApplication:
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv[:1])
    app.setOrganizationName("LoRA Workbench")
    app.setApplicationName("LoRA Workbench")
    app.setDesktopFileName("lora-workbench")
    icon = ASSETS / "icon.svg"
    if icon.exists():
        app.setWindowIcon(QIcon(str(icon)))
    # No style sheet and no fixed colours on the window: Qt's platform theme supplies the system's light
    # or dark palette, and the widgets read their colours from it.
    apply_process_switches()  # the GIL switch interval, the garbage collector's thread: see process_switches
    return app


def main(run_file: str | None = None) -> int:
    from workbench.core.errors import WorkbenchError

    from .platform_check import problem

    # Before the QApplication loads the platform plugin: a missing X11 library would abort the process inside Qt.
    missing = problem()
    if missing is not None:
        raise WorkbenchError(*missing)
    app = create_app()
    from .main_window import MainWindow

    from . import crash_report

    window = MainWindow()
    crash_report.install(window.report_unexpected)  # a slot that raises: one line and a log, never an abort
    window.closed.connect(app.quit)
    window.show()  # the shell: the tabs are built in the next event-loop turns (startup.py)
    if run_file:
        window.when_built(lambda: window.open_run(Path(run_file)))
    else:  # a newcomer lands in a window that is ready to fine-tune: the demo, on the built-in model
        window.when_built(window.open_demo)
    window.when_built(window.warm_up)
    return app.exec()
