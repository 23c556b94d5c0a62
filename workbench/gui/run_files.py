"""The window's run files: New run, the demo, Open, Save, the copied command line — each asking first (without
blocking) when it would discard unsaved edits or while a run trains. A part of ``MainWindow``, kept here so that
the window's module stays a size one can read."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QFileDialog, QMessageBox


RUN_FILE_FILTER = "Run files (*.toml);;All files (*)"


class RunFilesMixin:
    """``MainWindow``'s run-file actions (it provides ``store``, ``layers``, ``data``, ``picker``, ``training``)."""

    def confirm_discard(self, what: str, then) -> None:
        """Run ``then`` at once, or after asking (without blocking) when it would discard unsaved edits or a run
        is training in the window. ``what`` says what the user asked for ("start a new run")."""
        dirty = self.store.dirty and self.ask_before_discarding
        training = self.training.running
        if not dirty and not training:
            then()
            return
        if self.discard_prompt is not None:
            self.discard_prompt.close()
        name = self.store.path.name if self.store.path else (self._unsaved_name or "this run")
        text = []
        if dirty:
            text.append(f"The settings of {name} have changed since they were saved.")
        if training:
            text.append("A run is training in the window; it goes on with the settings it started with (Stop is on "
                        "the Train tab).")
        text.append(f"Save them before you {what}?" if dirty else f"{what[:1].upper()}{what[1:]} anyway?")
        box = QMessageBox(QMessageBox.Icon.Question, "Unsaved changes" if dirty else "A run is training",
                          "\n\n".join(text), parent=self)
        if dirty:
            box.setStandardButtons(QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                                   | QMessageBox.StandardButton.Cancel)
            box.setDefaultButton(QMessageBox.StandardButton.Save)
        else:
            box.setStandardButtons(QMessageBox.StandardButton.Ok | QMessageBox.StandardButton.Cancel)
            box.button(QMessageBox.StandardButton.Ok).setText(f"{what[:1].upper()}{what[1:]}")
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)

        def answered(_result: int) -> None:
            self.discard_prompt = None
            choice = box.standardButton(box.clickedButton())
            if choice in (QMessageBox.StandardButton.Discard, QMessageBox.StandardButton.Ok) or (
                    choice == QMessageBox.StandardButton.Save and self.save_run()):
                then()

        box.finished.connect(answered)
        self.discard_prompt = box
        box.open()

    def request_new_run(self) -> None:
        self.confirm_discard("start a new run", self.new_run)

    def request_demo(self) -> None:
        self.confirm_discard("open the demo run", self.open_demo)

    def new_run(self) -> None:
        """An empty run: nothing of the previous one stays on screen (tree, summary, data results, filters)."""
        from workbench.core.config import RunConfig

        self._unsaved_name = None
        self._demo_opening = False
        self.store.replace(RunConfig())
        self.overview = None
        self.layers.clear_model()
        self.picker.info.setText("Open a model to see its layers.")
        self.data.clear_results()
        if self.error_box is not None:  # an error about the previous run's data or model is no longer true
            self.error_box.close()

    def open_run_dialog(self) -> None:
        def choose() -> None:
            path, _ = QFileDialog.getOpenFileName(self, "Open run file", "", RUN_FILE_FILTER)
            if path:
                self.open_run(Path(path))

        self.confirm_discard("open another run file", choose)

    def open_demo(self) -> bool:
        """The demo run (resources/examples/demo.toml) on the built-in SmolLM2, as an unsaved run.

        Its runs go to the runs folder the window already uses (the run file's relative "runs" would land
        wherever the app was started from). The first time, opening the model converts it (about half a
        minute), with progress under the model picker.
        """
        from workbench.core.demo import demo_config
        from workbench.core.errors import WorkbenchError

        try:
            config = demo_config().copy_with(output={"runs_root": self.store.config.output.runs_root})
        except WorkbenchError as exc:
            self.show_error("Cannot open the demo", exc.message + (f"\n\n{exc.hint}" if exc.hint else ""))
            return False
        self._unsaved_name = "demo.toml (the demo run, not saved)"
        self._demo_opening = True
        self.store.replace(config, None)
        self.open_model(config.model.source)
        return True

    def open_run(self, path: Path) -> bool:
        from workbench.core.config import ConfigError, RunConfig

        try:
            config = RunConfig.from_toml(path)
        except ConfigError as exc:
            self.show_error("Cannot open the run file", str(exc))
            return False
        old_source = self.store.config.model.source
        self._unsaved_name = None
        self.store.replace(config, path)
        self._remember("recent/runs", str(path))
        self._fill_recent_menu()
        if config.model.source and (config.model.source != old_source or self.overview is None):
            self.open_model(config.model.source)
        return True

    def save_run(self) -> bool:
        if self.store.path is None:
            return self.save_run_as()
        return self._save_to(self.store.path)

    def save_run_as(self) -> bool:
        path, _ = QFileDialog.getSaveFileName(self, "Save run file", "run.toml", RUN_FILE_FILTER)
        return bool(path) and self._save_to(Path(path))

    def _save_to(self, path: Path) -> bool:
        try:
            self.store.save(path)
        except OSError as exc:
            self.show_error("Cannot save the run file", f"{path}: {exc.strerror or exc}")
            return False
        self._remember("recent/runs", str(path))
        self._fill_recent_menu()
        self._update_title()
        self.statusBar().showMessage(f"Saved {path}", 4000)
        return True

    def copy_command_line(self) -> str | None:
        if self.store.path is None and not self.save_run_as():
            return None
        from workbench.core.config import ConfigError
        from workbench.core.run_overrides import NotExpressible, command_line

        try:
            text = command_line(self.store.path, self.store.config)
        except (NotExpressible, ConfigError) as exc:
            self.show_error("Copy command line", str(exc))
            return None
        QGuiApplication.clipboard().setText(text)
        self.statusBar().showMessage("Copied: " + text, 6000)
        return text

