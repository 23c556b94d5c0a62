"""The window's run files: New run, the demo, Open, Save, Save as, the copied command line, the title that says
which file is open and whether it has unsaved edits — each asking first (without blocking) when it would discard
unsaved edits or while a run trains.

``RunFilesController`` owns that state (the store's path and dirty flag are the store's; the "ask before
discarding" switch, the unsaved run's name, the open question are its own). It reaches widgets only through its
signals: ``cleared`` (a new run: the window empties its panels), ``modelRequested`` (open the run's model),
``problem``, ``status``, ``titleChanged`` and ``recentChanged``. The questions and file choosers it opens are its
own dialogs, parented to the window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the window's first paint imports no pydantic (startup.py)
    from .config_store import ConfigStore
    from .recents import Recents

RUN_FILE_FILTER = "Run files (*.toml);;All files (*)"


# What the status bar says once the demo run has opened (the window clears it when the run is changed).
DEMO_READY = ("The demo is ready: press Start on the Train tab (Ctrl+Return) to fine-tune SmolLM2 on it; the loss "
              "falls within a minute.")

class RunFilesController(QObject):
    cleared = Signal()  # a new, empty run: nothing of the previous one may stay on screen
    modelRequested = Signal(str)  # the opened run file's (or the demo's) model: open it
    problem = Signal(str, str)  # title, message
    status = Signal(str, int)  # a status-bar line, how long it stays (ms)
    titleChanged = Signal(str)
    recentChanged = Signal()  # the recent run files changed

    def __init__(self, store: ConfigStore, recents: Recents, training: Callable[[], bool], dialogs: QWidget,
                 model_open: Callable[[], bool]):
        """``training``: whether a run trains in the window; ``model_open``: whether a model is open;
        ``dialogs``: the parent of the questions and file choosers."""
        super().__init__(dialogs)
        self.store, self.recents, self._training, self._dialogs, self._model_open = (
            store, recents, training, dialogs, model_open)
        self.ask_before_discarding = True  # unsaved settings: ask before discarding them or closing
        self.discard_confirmed = False  # "Discard" was answered for the current edits
        self.unsaved_name: str | None = None  # the title of a run not saved to a file yet (the demo's)
        self.demo_opening = False  # the next opened model is the demo's
        self.discard_prompt: QMessageBox | None = None  # "discard unsaved edits?" before New run / Demo / Open
        store.changed.connect(self._changed)
        store.dirtyChanged.connect(lambda _: self.update_title())

    def _changed(self, _section: str) -> None:
        self.discard_confirmed = False  # an edit after "Discard" (and a cancelled close) is asked about again
        self.update_title()

    def display_name(self, fallback: str) -> str:
        return self.store.path.name if self.store.path else (self.unsaved_name or fallback)

    def title(self) -> str:
        return f"{self.display_name('untitled run')}{' •' if self.store.dirty else ''} — LoRA Workbench"

    def update_title(self) -> None:
        self.titleChanged.emit(self.title())

    @property
    def needs_saving(self) -> bool:
        """Closing should ask first: unsaved edits, not yet discarded."""
        return self.store.dirty and self.ask_before_discarding and not self.discard_confirmed

    def confirm_discard(self, what: str, then: Callable[[], object]) -> None:
        """Run ``then`` at once, or after asking (without blocking) when it would discard unsaved edits or a run
        is training in the window. ``what`` says what the user asked for ("start a new run")."""
        dirty = self.store.dirty and self.ask_before_discarding
        training = self._training()
        if not dirty and not training:
            then()
            return
        if self.discard_prompt is not None:
            self.discard_prompt.close()
        name = self.display_name("this run")
        text = []
        if dirty:
            text.append(f"The settings of {name} have changed since they were saved.")
        if training:
            text.append("A run is training in the window; it goes on with the settings it started with (Stop is on "
                        "the Train tab).")
        text.append(f"Save them before you {what}?" if dirty else f"{what[:1].upper()}{what[1:]} anyway?")
        box = QMessageBox(QMessageBox.Icon.Question, "Unsaved changes" if dirty else "A run is training",
                          "\n\n".join(text), parent=self._dialogs)
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

    def request_open(self, path: Path) -> None:
        self.confirm_discard(f"open {path.name}", lambda: self.open_run(path))

    def new_run(self) -> None:
        """An empty run: nothing of the previous one stays on screen (tree, summary, data results, filters)."""
        self.unsaved_name = None
        self.demo_opening = False
        from workbench.core.config import RunConfig
        self.store.replace(RunConfig())
        self.cleared.emit()

    def open_run_dialog(self) -> None:
        def choose() -> None:
            path, _ = QFileDialog.getOpenFileName(self._dialogs, "Open run file", "", RUN_FILE_FILTER)
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
            self.problem.emit("Cannot open the demo", exc.message + (f"\n\n{exc.hint}" if exc.hint else ""))
            return False
        self.unsaved_name = "demo.toml (the demo run, not saved)"
        self.demo_opening = True
        self.store.replace(config, None)
        self.modelRequested.emit(config.model.source)
        return True

    def open_run(self, path: Path) -> bool:
        from workbench.core.config import ConfigError, RunConfig
        try:
            config = RunConfig.from_toml(path)
        except ConfigError as exc:
            self.problem.emit("Cannot open the run file", str(exc))
            return False
        old_source = self.store.config.model.source
        self.unsaved_name = None
        self.store.replace(config, path)
        self._remember(path)
        if config.model.source and (config.model.source != old_source or not self._model_open()):
            self.modelRequested.emit(config.model.source)
        return True

    def save_run(self) -> bool:
        if self.store.path is None:
            return self.save_run_as()
        return self.save_to(self.store.path)

    def save_run_as(self) -> bool:
        path, _ = QFileDialog.getSaveFileName(self._dialogs, "Save run file", "run.toml", RUN_FILE_FILTER)
        return bool(path) and self.save_to(Path(path))

    def save_to(self, path: Path) -> bool:
        try:
            self.store.save(path)
        except OSError as exc:
            self.problem.emit("Cannot save the run file", f"{path}: {exc.strerror or exc}")
            return False
        self._remember(path)
        self.update_title()
        self.status.emit(f"Saved {path}", 4000)
        return True

    def _remember(self, path: Path) -> None:
        self.recents.remember("recent/runs", str(path))
        self.recentChanged.emit()

    def copy_command_line(self) -> str | None:
        if self.store.path is None and not self.save_run_as():
            return None
        from workbench.core.config import ConfigError
        from workbench.core.run_overrides import NotExpressible, command_line
        try:
            text = command_line(self.store.path, self.store.config)
        except (NotExpressible, ConfigError) as exc:
            self.problem.emit("Copy command line", str(exc))
            return None
        QGuiApplication.clipboard().setText(text)
        self.status.emit("Copied: " + text, 6000)
        return text
