"""The Runs tab's "Open in TensorBoard / MLflow": the viewer starts in a worker (it takes seconds to answer), then
the browser opens on its localhost URL. Viewers started here are ended when the application quits."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QApplication, QMenu, QMessageBox, QPushButton, QWidget

from workbench.core import trackers
from workbench.gui import workers

KINDS = {"tensorboard": "TensorBoard", "mlflow": "MLflow UI"}


def has_store(kind: str, run_dir: Path) -> bool:
    return ((run_dir / trackers.TENSORBOARD_DIR).is_dir() if kind == "tensorboard"
            else (run_dir.parent / trackers.MLFLOW_DB).is_file())


class TrackerViewers(QObject):
    """A button with one menu entry per viewer, for the run ``selected()`` returns (a ``RunSummary`` or None)."""

    opened = Signal(str, str)  # kind, url (the browser was asked to open it)
    failed = Signal(str)

    def __init__(self, selected, parent: QWidget, open_browser: bool = True):
        super().__init__(parent)
        self._selected, self.open_browser = selected, open_browser
        # How a viewer's start-up job runs: the window sets its own, so that closing waits for it like any job.
        self.start_job = workers.JobRunner(self).start
        self.viewers: dict[tuple[str, Path], trackers.Viewer] = {}
        self.button = QPushButton("Open in…")
        self.button.setToolTip("Start TensorBoard or the MLflow UI on this computer (localhost) for the selected run "
                               "and open it in the browser. Runs log there with output.trackers in the run file.")
        self.menu = QMenu(self.button)
        self.actions = {kind: self.menu.addAction(title, lambda k=kind: self.open(k)) for kind, title in KINDS.items()}
        self.button.setMenu(self.menu)
        self.failed.connect(lambda text: QMessageBox.warning(parent, "Cannot open the viewer", text))
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.stop_all)

    def update(self, run_dir: Path | None) -> None:
        for kind, action in self.actions.items():
            action.setEnabled(run_dir is not None and has_store(kind, run_dir))
        self.button.setEnabled(any(a.isEnabled() for a in self.actions.values()))

    def _run_dir(self) -> Path | None:
        one = self._selected()
        return one.path if one is not None else None

    def open(self, kind: str) -> None:
        run_dir = self._run_dir()
        if run_dir is None:
            return
        key = (kind, run_dir if kind == "tensorboard" else run_dir.parent)  # one MLflow UI serves the whole folder
        running = self.viewers.get(key)
        if running is not None and running.process.poll() is None:
            self._show(kind, running.url)
            return
        worker = workers.FunctionWorker(lambda: trackers.start_viewer(kind, run_dir))
        worker.result.connect(lambda viewer: self._started(key, viewer))
        worker.failed.connect(lambda message, _tb: self.failed.emit(message))
        self.button.setEnabled(False)
        worker.finished.connect(lambda: self.update(self._run_dir()))
        self.start_job(worker)

    def _started(self, key, viewer: trackers.Viewer) -> None:
        self.viewers[key] = viewer
        self._show(viewer.kind, viewer.url)

    def _show(self, kind: str, url: str) -> None:
        if self.open_browser:
            QDesktopServices.openUrl(QUrl(url))
        self.opened.emit(kind, url)

    def stop_all(self) -> None:
        for viewer in self.viewers.values():
            viewer.stop()
        self.viewers.clear()
