"""The window's menus and what it remembers between sessions (geometry, the recent models, runs and data files of
``recents``, where runs start): a mixin of ``MainWindow``, which owns the widgets these methods reach. The title is
``run_files``'."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QAction, QKeySequence

from .recents import RECENT_LIMIT  # noqa: F401  (its old home)


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
        action(file_menu, "&New run", self.files.request_new_run, QKeySequence.StandardKey.New)
        action(file_menu, "&Open run file…", self.files.open_run_dialog, QKeySequence.StandardKey.Open)
        action(file_menu, "Open the &demo run", self.files.request_demo,
               tip="The built-in SmolLM2 learning to extract payments as JSON (offline)")
        self.recent_menu = file_menu.addMenu("Open &recent")
        action(file_menu, "&Save run file", self.files.save_run, QKeySequence.StandardKey.Save)
        action(file_menu, "Save run file &as…", self.files.save_run_as, QKeySequence.StandardKey.SaveAs)
        file_menu.addSeparator()
        action(file_menu, "Copy &command line", self.files.copy_command_line, "Ctrl+Shift+C",
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

    def _restore_settings(self) -> None:
        geometry = self.settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        self.picker.set_recent(self.recents.items("recent/models"))
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

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        for path in self.recents.items("recent/runs"):
            self.recent_menu.addAction(path, lambda p=path: self.files.request_open(Path(p)))
        self.recent_menu.setEnabled(bool(self.recent_menu.actions()))
        self.recent_data_menu.clear()
        for path in self.recents.items("recent/data"):
            self.recent_data_menu.addAction(path, lambda p=path: self.data.add_files([p]))
        self.recent_data_menu.setEnabled(bool(self.recent_data_menu.actions()))
