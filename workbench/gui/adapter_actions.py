"""What the window does with finished runs and adapters: export or merge an adapter, write a launch script,
inspect an adapter, load the playground (resuming a run is ``run_controller``'s). A mixin of ``MainWindow``: each
action starts its job through the window's ``_start`` (its ``JobRunner``), so closing waits for it."""

from __future__ import annotations

from pathlib import Path

from . import workers
from .widgets.export_dialog import ExportDialog
from .widgets.launch_dialog import LaunchScriptDialog


class AdapterActionsMixin:
    # -- export, inspection, playground -------------------------------------------------------------------
    def _base_for(self, adapter: str) -> str:
        """The base model of a run's adapter: its run.toml's model source; else the open model."""
        from workbench.core.runs import load_config

        try:
            return load_config(Path(adapter).parent).model.source
        except Exception:  # noqa: BLE001  (an adapter from elsewhere: the user fills it in)
            return self.store.config.model.source

    def open_export(self, adapter: str = "") -> ExportDialog:
        if self.export_dialog is not None and self.export_dialog.running:
            self.export_dialog.raise_()
            return self.export_dialog
        if self.export_dialog is not None:
            self.export_dialog.deleteLater()
        self.export_dialog = ExportDialog(adapter, self._base_for(adapter) if adapter else self.store.config.model.source,
                                          start_job=self._start, parent=self)
        self.export_dialog.show()
        return self.export_dialog

    def open_launch_dialog(self) -> LaunchScriptDialog:
        if self.launch_dialog is not None:
            self.launch_dialog.deleteLater()
        self.launch_dialog = LaunchScriptDialog(self.store.config, self.store.path,
                                                self.training.location.process_count, parent=self)
        self.launch_dialog.show()
        return self.launch_dialog

    def inspect_from_runs(self, adapter: str) -> None:
        self.inspection.set_paths(adapter, self._base_for(adapter))
        self.tabs.setCurrentWidget(self.inspection)
        self.inspection.request()

    def inspect_adapter(self, adapter: str, base: str) -> None:
        worker = workers.FunctionWorker(lambda: workers.inspect_adapter_job(adapter, base), "Inspecting the adapter")
        worker.result.connect(self.inspection.show_report)
        worker.result.connect(self.layers.show_change)  # "what changed" on the block map, for the open model
        worker.result.connect(self.inspected)
        worker.failed.connect(self._inspect_failed)
        self._start(worker)

    def _inspect_failed(self, message: str, details: str) -> None:
        self.inspection.show_error(message)
        self.inspect_failed.emit(message)

    def load_playground(self, base: str, adapter: str) -> None:
        worker = workers.FunctionWorker(lambda: workers.load_playground(base, adapter), "Loading the playground")
        worker.result.connect(self.playground.show_loaded)
        worker.failed.connect(self.playground.show_error)
        self._start(worker)
