"""The window's menus, its title and what it remembers between sessions (geometry, recent models, runs and data
files, where runs start): a mixin of ``MainWindow``, which owns the widgets these methods reach."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QAction, QKeySequence

RECENT_LIMIT = 10


class MenusMixin:
    # -- menus, title, settings ---------------------------------------------------------------------------
    def _build_menus(self) -> None:
        def action(menu, text, slot, shortcut=None, tip=""):
            a = QAction(text, self)
            if shortcut:
                a.setShortcut(QKeySequence(shortcut))
            a.setStatusTip(tip)
            a.triggered.connect(slot)
            menu.addAction(a)
            return a

        file_menu = self.menuBar().addMenu("&File")
        action(file_menu, "&New run", self.request_new_run, QKeySequence.StandardKey.New)
        action(file_menu, "&Open run file…", self.open_run_dialog, QKeySequence.StandardKey.Open)
        action(file_menu, "Open the &demo run", self.request_demo,
               tip="The built-in SmolLM2 learning to extract payments as JSON (offline)")
        self.recent_menu = file_menu.addMenu("Open &recent")
        action(file_menu, "&Save run file", self.save_run, QKeySequence.StandardKey.Save)
        action(file_menu, "Save run file &as…", self.save_run_as, QKeySequence.StandardKey.SaveAs)
        file_menu.addSeparator()
        action(file_menu, "Copy &command line", self.copy_command_line, "Ctrl+Shift+C",
               "Copy the command that trains this run without the window")
        file_menu.addSeparator()
        action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        model_menu = self.menuBar().addMenu("&Model")
        action(model_menu, "Open model &folder…", self.picker.choose_folder, "Ctrl+Shift+O")
        action(model_menu, "Open &GGUF file…", self.picker.choose_gguf)
        data_menu = self.menuBar().addMenu("&Data")
        action(data_menu, "&Add training files…", self.data.choose_files, "Ctrl+D")
        action(data_menu, "Add &validation files…", self.data.choose_validation_files)
        self.recent_data_menu = data_menu.addMenu("Add &recent file")
        train_menu = self.menuBar().addMenu("&Train")
        action(train_menu, "&Start", self.start_training, "Ctrl+Return")
        action(train_menu, "&Pause / resume", self.training.toggle_pause, "Ctrl+P")
        action(train_menu, "S&top", self.training.request_stop, "Ctrl+.")
        action(train_menu, "Save &checkpoint now", self.training.request_checkpoint, "Ctrl+K")
        action(train_menu, "&Export or merge an adapter…", lambda: self.open_export(), "Ctrl+E")
        action(train_menu, "Export &launch script…", self.open_launch_dialog, tip="Write a torchrun script "
               "(Slurm or plain) that trains this run on several nodes and GPUs")
        view_menu = self.menuBar().addMenu("&View")
        for i, name in enumerate(("Model and layers", "Settings", "Data", "Train", "Runs", "Inspect adapter",
                                  "Playground")):
            action(view_menu, name, lambda _=False, i=i: self.tabs.setCurrentIndex(i), f"Ctrl+{i + 1}")

    def _update_title(self) -> None:
        name = self.store.path.name if self.store.path else (self._unsaved_name or "untitled run")
        self.setWindowTitle(f"{name}{' •' if self.store.dirty else ''} — LoRA Workbench")

    def _restore_settings(self) -> None:
        geometry = self.settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        self.picker.set_recent(self._recent("recent/models"))
        self._fill_recent_menu()
        # Where runs start (this app, or N separate processes) is a habit of the machine, not of a run file.
        location = self.training.location
        location.set_separate(self.settings.value("train/separate_process", False, type=bool),
                              self.settings.value("train/processes", 1, type=int))
        location.where.currentIndexChanged.connect(self._remember_run_location)
        location.processes.valueChanged.connect(self._remember_run_location)

    def _remember_run_location(self) -> None:
        location = self.training.location
        self.settings.setValue("train/separate_process", location.separate)
        self.settings.setValue("train/processes", location.process_count)

    def _recent(self, key: str) -> list[str]:
        value = self.settings.value(key, [])
        return [value] if isinstance(value, str) else list(value or [])

    def _remember(self, key: str, item: str) -> None:
        items = [item] + [x for x in self._recent(key) if x != item]
        self.settings.setValue(key, items[:RECENT_LIMIT])

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        for path in self._recent("recent/runs"):
            self.recent_menu.addAction(path, lambda p=path: self.confirm_discard(
                f"open {Path(p).name}", lambda: self.open_run(Path(p))))
        self.recent_menu.setEnabled(bool(self.recent_menu.actions()))
        self.recent_data_menu.clear()
        for path in self._recent("recent/data"):
            self.recent_data_menu.addAction(path, lambda p=path: self.data.add_files([p]))
        self.recent_data_menu.setEnabled(bool(self.recent_data_menu.actions()))
