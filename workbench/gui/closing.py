"""Closing the window: unsaved settings (save / discard / cancel), a run training in the window (stop it, keep it
running in a separate process, cancel), and jobs still running (cancelled, waited for about a second, then left
to end on their own). Every question is asked without blocking. A part of ``MainWindow``."""

from __future__ import annotations

from PySide6.QtCore import QEvent, Qt, QTimer
from PySide6.QtWidgets import QMessageBox

# A closing window cancels its jobs and waits this long for their threads to end; the rest are abandoned (they
# stop at their next check, and report to nobody).
CLOSE_WAIT_MS = 1000


class ClosingMixin:
    """``MainWindow``'s closing rules."""

    def _ask_to_save_before_closing(self) -> None:
        """Save / Discard / Cancel for unsaved run settings; asked without blocking, and closing resumes after."""
        if self.save_prompt is not None:
            self.save_prompt.raise_()
            return
        name = self.store.path.name if self.store.path else "this run"
        box = QMessageBox(QMessageBox.Icon.Question, "Unsaved changes",
                          f"The settings of {name} have changed since they were saved. Save them before closing?",
                          QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                          | QMessageBox.StandardButton.Cancel, self)
        box.setDefaultButton(QMessageBox.StandardButton.Save)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)

        def answered(_result: int) -> None:
            self.save_prompt = None
            choice = box.standardButton(box.clickedButton())
            if choice == QMessageBox.StandardButton.Discard or (
                    choice == QMessageBox.StandardButton.Save and self.save_run()):
                self.files.discard_confirmed = True
                self.close()

        box.finished.connect(answered)
        self.save_prompt = box
        box.open()

    def _ask_about_training_before_closing(self) -> None:
        if self.training_close_box is not None:
            self.training_close_box.raise_()
            return
        box = QMessageBox(QMessageBox.Icon.Question, "A run is training",
                          "A run is training in the window.\n\nStop it (a checkpoint and the adapter are saved), or "
                          "keep it running: it is stopped at its next step and continued at once from that checkpoint "
                          "by a separate process, which goes on without the window (the Runs tab shows it, and can "
                          "watch and stop it again).", parent=self)
        stop = box.addButton("Stop the run", QMessageBox.ButtonRole.AcceptRole)
        keep = box.addButton("Keep it running", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(stop)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.stop_button, box.keep_button = stop, keep  # for tests and scripts

        def answered(button) -> None:
            self.training_close_box = None
            if button not in (stop, keep):
                return
            self._training_close_choice = "stop" if button is stop else "continue"
            if not self.training.running:  # it ended while the question was open
                self.close()
                return
            self.training.request_stop()
            self.training_ended.connect(self.close)
            self.statusBar().showMessage("Stopping the run before closing…" if button is stop else
                                         "Handing the run to a separate process before closing…")

        box.buttonClicked.connect(answered)
        self.training_close_box = box
        box.open()

    def closeEvent(self, event) -> None:
        if self.files.needs_saving:
            self._ask_to_save_before_closing()
            event.ignore()
            return
        if not self.external.may_close():  # a separate-process run: asks whether to stop it or leave it running
            event.ignore()
            return
        self._data_timer.stop()  # no new job may start once closing has begun
        self._data_pending = False
        self.playground.stop()  # a generation or a merge ends at its next token or tensor
        if self.export_dialog is not None:
            self.export_dialog.cancel()
        if self.training.running:
            # Never block or kill the worker: ask whether to stop it or keep it running; either way the engine
            # stops (it saves a checkpoint and the adapter) and the window closes after.
            if not self._training_close_choice:
                self._ask_about_training_before_closing()
            event.ignore()
            return
        if self._jobs:
            # A worker still runs (opening a model, reading data): cancel it, give its thread a second to end,
            # then go (``_abandon_jobs``). Nothing it reports afterwards reaches a widget.
            if not self._closing:
                self._closing = True
                self.job_runner.accepting = False
                self.job_runner.cancel_all()
                QTimer.singleShot(CLOSE_WAIT_MS, self._abandon_jobs)
            self.hide()
            event.ignore()
            return
        self.recents.flush()  # the recent lists not written yet (recents.py writes them a moment after a change)
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.sync()
        self._closed = True  # closed for good: a job a late slot starts now is cancelled at once (``_start``)
        self.job_runner.accepting = False
        super().closeEvent(event)
        # A window that was hidden while its jobs ended is not "the last window closed" to Qt, so the application
        # would run on with no window at all: say so, and the application quits (app.main connects it).
        self.closed.emit()

    def showEvent(self, event) -> None:
        self._closed = False  # shown again after closing: its jobs may run (unless closing is still under way)
        self.job_runner.accepting = not self._closing
        super().showEvent(event)

    def event(self, event) -> bool:
        """A deletion asked for while jobs are still counted (``deleteLater``: pytest-qt's ``addWidget`` does it
        right after closing a window, as ``WA_DeleteOnClose`` would) waits until the last of them has ended.

        Each ``Job`` is a child of the window, and its timer is what notices that its thread has ended; deleting
        the window deleted them with it, so they never said ``ended``, ``_jobs`` never fell to 0, and the
        ``_abandon_jobs`` timer died too. ``_jobs_idle`` deletes the window once the count is 0."""
        if event.type() == QEvent.Type.DeferredDelete and self._jobs:
            self._delete_when_jobs_end = True
            if not self._closing:  # nothing new may start, and the running jobs are cancelled and then abandoned
                self.close()
            return True
        return super().event(event)

    def _abandon_jobs(self) -> None:
        """Closing: jobs whose threads did not end within ``CLOSE_WAIT_MS`` of being cancelled are left to end
        on their own; the window goes now."""
        self.job_runner.abandon_all()
