"""The main window: seven tabs (model and layers, settings, data, train, runs, inspect adapter, playground) over
one ``ConfigStore``. Its menus and remembered settings live in ``window_menus``, the actions on finished runs and
adapters (resume, export, inspect, playground) in ``adapter_actions``, run files in ``run_files`` and closing in
``closing``: mixins of this one class, each a concern of its own.

The window wires panels to the store and to background workers; it holds no logic of its own beyond
deciding when a job may start. Long jobs (opening a model, reading data, training) run in workers on
background threads (the ``workers`` package); results come back as signals on the GUI thread, errors as a message box, and the window stays usable either way.
Signals named ``model_opened``, ``data_inspected``, ``training_done`` … let tests and scripts wait on the
outcome of each job instead of sleeping.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import shiboken6
from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QMainWindow, QMessageBox, QVBoxLayout, QWidget,
)

from workbench.core.control import RunControl

from . import workers
from .closing import CLOSE_WAIT_MS, ClosingMixin  # noqa: F401  (CLOSE_WAIT_MS: part of the window's interface)
from .adapter_actions import AdapterActionsMixin
from .run_files import RUN_FILE_FILTER, RunFilesMixin  # noqa: F401
from .startup import BuildsInSteps
from .widgets.lazy_plot import IdleSteps
from .window_menus import MenusMixin

if TYPE_CHECKING:
    from .widgets.export_dialog import ExportDialog
    from .widgets.launch_dialog import LaunchScriptDialog
    from .widgets.layer_tree_model import LayerTreeModel

# The panels (and through them core.config and pydantic) are imported by ``_build_steps``, after the first paint.

class MainWindow(BuildsInSteps, MenusMixin, AdapterActionsMixin, RunFilesMixin, ClosingMixin, QMainWindow):
    closed = Signal()  # closed for good (after any question and the jobs' end): the application may quit
    model_opened = Signal()
    model_failed = Signal(str)
    data_inspected = Signal()
    data_failed = Signal(str)
    training_done = Signal(object)  # core.training.TrainResult
    training_failed = Signal(str)
    training_ended = Signal()  # after either of the two above
    inspected = Signal(object)  # core.adapters.AdapterReport
    inspect_failed = Signal(str)

    def __init__(self, settings: QSettings | None = None):
        super().__init__()
        self.settings = settings or QSettings("LoRA Workbench", "LoRA Workbench")
        self.overview = None  # core.models.ModelOverview of the open model
        self.device_kind, self.available_memory, self.device_text = "cpu", None, ""
        self.error_box: QMessageBox | None = None
        self.consent_box: QMessageBox | None = None  # "trust this model's pickle files / code?", while open
        self.save_prompt: QMessageBox | None = None  # "save before closing?", while open
        self.training_close_box: QMessageBox | None = None  # "stop the run, keep it running, cancel?" on quitting
        self._training_close_choice = ""  # "stop" or "continue" once answered
        self.continued_process = None  # the `workbench resume` process a run was handed to on quitting
        self.discard_prompt: QMessageBox | None = None  # "discard unsaved edits?" before New run / Demo / Open
        self._unsaved_name: str | None = None  # the title of a run not saved to a file yet (the demo's)
        self._demo_opening = False  # the next model_opened is the demo's: say what to do next
        self.ask_before_discarding = True  # unsaved settings: ask before closing
        self._discard_confirmed = False
        self._jobs = 0  # running workers, so closing can wait for them without blocking
        self._running_jobs: set[workers.Job] = set()
        self.garbage_collector = workers.GarbageCollector(self)  # before any job: Qt objects die on this thread
        self._data_pending = False
        self._data_running = False
        self._closing = False  # closing waits for the jobs (``closeEvent``)
        self._closed = False  # closed for good
        self._delete_when_jobs_end = False  # a deletion was asked for while jobs ran (``ClosingMixin.event``)

        self.export_dialog: ExportDialog | None = None
        self.launch_dialog: LaunchScriptDialog | None = None
        self.setAcceptDrops(True)
        # Painted first (startup.BuildsInSteps): the frame at its remembered place, the tab bar and the menu titles;
        # the pages and everything behind them are built by _build_steps in the event-loop turns after.
        self._build_shell()
        geometry = self.settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        for title in ("&File", "&Model", "&Data", "&Train", "&View"):  # filled by _build_menus at the end
            self.menuBar().addMenu(title)

    def _build_steps(self):
        """The rest of the construction, one piece per event-loop turn, the first visible tab first."""
        from .config_store import ConfigStore  # the run-file schema (pydantic): the largest single piece

        self.store = ConfigStore(self)
        yield
        from .widgets.layer_panel import LayerPanel
        from .widgets.model_picker import ModelPicker

        self.picker = ModelPicker()
        self.layers = LayerPanel()
        model_tab = QWidget()
        model_layout = QVBoxLayout(model_tab)
        model_layout.addWidget(self.picker)
        model_layout.addWidget(self.layers, 1)
        self._set_page(0, model_tab)
        yield
        from .widgets.settings_form import SettingsForm

        self.form = SettingsForm(self.store)
        self._set_page(1, self.form)
        yield
        from .widgets.data_panel import DataPanel

        self.data = DataPanel(self.store)
        self._set_page(2, self.data)
        yield
        from .widgets.training_panel import TrainingPanel

        self.training = TrainingPanel()
        self._set_page(3, self.training)
        yield
        from .widgets.runs_panel import RunsPanel

        self.runs = RunsPanel()
        # The queue adds the window's settings; the Runs tab's jobs are the window's (closing waits for them).
        self.runs.queue.config_source = lambda: self.store.config
        self.runs.start_job = self.runs.sweep.start_job = self.runs.queue.start_job = self._start
        self.runs.viewers.start_job = self._start
        self._set_page(4, self.runs)
        yield
        from .widgets.inspection_panel import InspectionPanel
        from .widgets.playground import Playground

        self.inspection = InspectionPanel()
        self.playground = Playground()
        self._set_page(5, self.inspection)
        self._set_page(6, self.playground)
        yield
        from .external_run import ExternalRunController

        self.external = ExternalRunController(self)  # runs in a separate process, watched through their folder

        self._summary_timer = QTimer(self, singleShot=True, interval=0)  # coalesce several edits into one update
        self._summary_timer.timeout.connect(self.update_summary)
        self._data_timer = QTimer(self, singleShot=True, interval=300)  # debounce typing in data settings
        self._data_timer.timeout.connect(self.inspect_data)

        self.picker.openRequested.connect(self.open_model)
        self.picker.demoRequested.connect(self.request_demo)
        self.layers.selectionEdited.connect(self._selection_to_config)
        self.store.changed.connect(self._config_changed)
        self.store.dirtyChanged.connect(lambda _: self._update_title())
        self.data.inspectRequested.connect(self._data_timer.start)
        self.data.problem.connect(lambda text: self.show_error("Data settings", text))
        self.training.startRequested.connect(self.start_training)
        self.runs.resumeRequested.connect(self.resume_run)
        self.runs.exportRequested.connect(self.open_export)
        self.runs.inspectRequested.connect(self.inspect_from_runs)
        self.inspection.inspectRequested.connect(self.inspect_adapter)
        self.playground.loadRequested.connect(self.load_playground)
        self.playground.generateRequested.connect(self._start)
        self.playground.compareRequested.connect(self._start)
        self.runs.set_root(self.store.config.output.runs_root)
        self.menuBar().clear()  # the shell's titles: the same menus, now with their actions
        self._build_menus()
        self._restore_settings()
        self._update_title()

    # -- messages -----------------------------------------------------------------------------------------
    def show_error(self, title: str, message: str, details: str = "") -> None:
        """A non-blocking message box: the event loop (and any running job) keeps going while it is open."""
        if self.error_box is not None:
            self.error_box.close()
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        if details:
            box.setDetailedText(details)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(lambda _: setattr(self, "error_box", None) if self.error_box is box else None)
        self.error_box = box
        box.open()

    def report_unexpected(self, line: str) -> None:
        """An exception nobody caught (``crash_report``): one line in the status bar and a message box."""
        self.statusBar().showMessage(line)
        self.show_error("Something went wrong", line)

    def _start(self, worker: workers.Worker) -> workers.Job:
        self._jobs += 1
        job = workers.start(worker, self)
        self._running_jobs.add(job)
        # Counted down when the job's thread itself has ended (not when the worker says it is done), or when
        # a closing window gave up waiting for it: only then may the window close for good.
        job.ended.connect(lambda: self._job_done(job))
        if self._closing or self._closed:  # nothing new may run once closing has begun (a late slot started it)
            job.cancel()
        return job

    def _job_done(self, job: workers.Job) -> None:
        self._running_jobs.discard(job)
        self._jobs -= 1
        if self._closing and self._jobs == 0:
            self.close()
        if self._delete_when_jobs_end and self._jobs == 0:  # the deletion that waited for the jobs
            self._delete_when_jobs_end = False
            # Not deleteLater() again: Qt ignores it once the object's first DeferredDelete was delivered. From
            # the event loop, so that no frame of this window's code is running when it goes.
            QTimer.singleShot(0, lambda: shiboken6.isValid(self) and shiboken6.delete(self))

    def warm_up(self) -> None:
        """Import torch and transformers in the background once the window is on screen; then build the Train
        tab's plots in idle event-loop turns, so that Start does not."""
        worker = workers.FunctionWorker(workers.warm_up_imports, "Loading the machine-learning libraries")
        worker.result.connect(lambda _: IdleSteps(self, self._prebuild_plots()))
        self._start(worker)

    def _prebuild_plots(self):
        """The plots a first run or a first data reading would build on the GUI thread, built in idle turns now."""
        self.training.prebuild_plots()
        while self.training.prebuilding:
            yield
        self.data.histogram.prebuild()  # the Data tab's, built by the first reading of the data otherwise

    # -- model --------------------------------------------------------------------------------------------
    def open_model(self, spec: str) -> None:
        from workbench.core.config import ConfigError

        try:
            model, fields = self.store.config.model, {"source": spec.strip()}
            if spec.strip() != model.source:  # "I trust this file" is per model: another one starts untrusted
                fields.update(allow_pickle=False, trust_remote_code=False)
            self.store.update("model", **fields)
        except ConfigError as exc:
            self.show_error("Model", "\n".join(exc.problems))
            return
        self._opened_task = self.store.config.model.task  # the tree's model class: causal LM or a classifier
        self.picker.set_text(spec)
        self.picker.set_busy(True, f"Opening {spec}…")
        self.layers.show_waiting(f"Opening {html.escape(spec)}… the layer tree appears here."
                                 + (" The first start converts the built-in model once (about half a minute)."
                                    if spec.startswith("builtin:") else ""))
        worker = workers.OpenModelWorker(self.store.config)
        worker.progress.connect(self.picker.show_progress)
        worker.progress.connect(self.layers.show_progress)
        worker.result.connect(self._model_ready)
        worker.failed.connect(self._model_failed)
        worker.consent_needed.connect(self._ask_consent)
        worker.finished.connect(self._model_job_done)
        self._start(worker)

    def _model_job_done(self) -> None:
        self.picker.set_busy(False)

    def _model_ready(self, result: dict) -> None:
        from .widgets.layer_tree_model import LayerTreeModel

        self.overview = result["overview"]
        self.device_text, self.available_memory = result["device_text"], result["available"]
        self.device_kind = result["device_kind"]
        lora = self.store.config.lora
        model = LayerTreeModel(self.overview.tree, lora.r, lora.alpha)
        model.set_quantization(self.store.config.model)
        self._selection_from_config(model)  # before the view sees the model: no per-row repaint signals
        self.layers.set_model(model)
        self.picker.show_overview(self.overview, self.device_text)
        self._remember("recent/models", self.store.config.model.source)
        self.picker.set_recent(self._recent("recent/models"))
        self._suggest_relatives()
        if self._demo_opening:
            self._demo_opening = False
            self.statusBar().showMessage("The demo is ready: press Start on the Train tab (Ctrl+Return) to fine-tune "
                                         "SmolLM2 on it; the loss falls within a minute.")
        self.model_opened.emit()
        if self.store.config.data.train_files:
            self._data_timer.start()  # the preview needs the model's tokenizer

    def _model_failed(self, message: str, details: str) -> None:
        if self.consent_box is not None:  # not an error: the question is on screen
            self.picker.info.setText("Waiting for your choice: the model needs something that is off by default.")
            return
        self.picker.info.setText("The model could not be opened. Choose another one.")
        self._demo_opening = False
        self.layers.show_hint("The model could not be opened. Choose another one (above).")
        self.show_error("Cannot open the model", message, details)
        self.model_failed.emit(message)

    def _suggest_relatives(self) -> None:
        """When online, list Hub models of the open model's family in the picker (in the background; offline,
        or on any Hub trouble, nothing happens)."""
        from workbench.core.models import hub_suggestions

        spec = self.store.config.model.source
        origin = str(getattr(self.overview.hf_config, "_name_or_path", "") or "")
        worker = workers.FunctionWorker(lambda: hub_suggestions(spec, origin), "Looking up related models")
        worker.result.connect(self.picker.set_suggestions)
        self._start(worker)

    def _ask_consent(self, setting: str, files: list, preview: str, message: str) -> None:
        """Ask, for this model only, whether to unpickle its weights or run its code; open it again if yes."""
        spec = self.store.config.model.source
        if setting == "allow_pickle":
            title = "Load pickle weights?"
            text = (f"<b>{html.escape(spec)}</b> has its weights only as pickle files. Unpickling a file can run any "
                    "code hidden in it; Workbench loads them with PyTorch's tensors-only loader, which refuses "
                    "anything else, but only do this for a file from a source you trust.")
            button = "Trust these files"
        else:
            title = "Run the model's own code?"
            text = (f"<b>{html.escape(spec)}</b> needs its own Python code to build the model. That code runs with "
                    "your user's rights. Read it (Show Details…) and allow it only if you trust where the model "
                    "came from.")
            button = "Run this code"
        box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Cancel, self)
        box.setTextFormat(Qt.TextFormat.RichText)
        allow = box.addButton(button, QMessageBox.ButtonRole.AcceptRole)
        box.setInformativeText("Files:\n" + "\n".join(files) +
                               f"\n\nThe choice is saved in the run file as model.{setting} = true (CLI: "
                               f"--{setting.replace('_', '-')}) and applies to this model only.")
        box.setDetailedText(preview or message)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.allow_button = allow  # for tests and scripts

        def answered(_result: int) -> None:
            self.consent_box = None
            if box.clickedButton() is allow and self.store.config.model.source == spec:
                self.store.update("model", **{setting: True})
                self.open_model(spec)
            else:
                self.picker.info.setText(f"Not opened: {html.escape(spec)} needs model.{setting}.")
                self.model_failed.emit(message)

        box.finished.connect(answered)
        self.consent_box = box
        box.open()

    # -- selection ↔ configuration ---------------------------------------------------------------------------
    def _selection_from_config(self, model: LayerTreeModel) -> None:
        """Show the configuration's layer choice (preset, patterns, blocks or exact names) as ticks.

        A choice made for another model (names this one does not have) falls back to its preset, and the
        configuration follows, so what is ticked is always what would train.
        """
        from workbench.core.config import DEFAULT_PRESET
        from workbench.core.errors import SelectionError
        from workbench.core.layers import resolve_selection

        config = self.store.config
        # Loaded, not edited: the selection does not announce it as an edit, so nothing is written back.
        try:
            sel = resolve_selection(model.tree, config.lora, config.model.task)
            model.selection.load(sel.targets, sel.rank_overrides, sel.alpha_overrides)
        except SelectionError as exc:
            preset = config.lora.preset if config.lora.preset != "none" else DEFAULT_PRESET
            model.selection.load(model.tree.preset(preset), {}, {})
            self.store.update("lora", target_modules=[], include=[], blocks=None, preset=preset,
                              rank_pattern={}, alpha_pattern={})
            self.statusBar().showMessage(f"The layer choice did not fit this model ({exc.message}); "
                                         f"selected the {preset} preset instead.", 10_000)
        # The preset box names the configuration's preset (not the last one applied) when the ticks are exactly
        # its modules; patterns, blocks or exact names that differ from it are a "custom selection".
        preset = self.store.config.lora.preset
        self.layers.show_preset(preset if set(model.selection.ordered()) == set(model.tree.preset(preset)) else None)
        self._summary_timer.start()

    def _selection_to_config(self) -> None:
        """A user's edit of the selection (tree or block map), written to the configuration."""
        model = self.layers.model
        names = model.selection.ordered()
        # The run file names the preset the ticks are exactly (an applied preset, or the same modules by hand);
        # a hand-made selection keeps the file's preset beside its exact names, and the box says "custom".
        matched = self.layers.matching_preset(names)
        preset = matched or (self.store.config.lora.preset if names else "none")
        self.store.update("lora", target_modules=names, include=[], blocks=None, preset=preset,
                          rank_pattern=dict(model.rank_overrides), alpha_pattern=dict(model.alpha_overrides))
        self.layers.show_preset(matched)

    def _config_changed(self, section: str) -> None:
        self._discard_confirmed = False  # an edit after "Discard" (and a cancelled close) is asked about again
        self._update_title()
        if section in ("", "output"):  # only these can change runs_root
            self.runs.set_root(self.store.config.output.runs_root)
        if self.layers.model is not None:
            lora = self.store.config.lora
            # New default rank/alpha for the columns: never a selection edit (see LayerSelection), so the open
            # tree's ticks are not written back into a just-opened run file meant for another model.
            self.layers.model.set_defaults(lora.r, lora.alpha)
            if section in ("", "model"):
                self.layers.model.set_quantization(self.store.config.model)
        if section == "":  # a new or opened run file
            self.picker.set_text(self.store.config.model.source)
            # The preset box names the file's preset at once, not the previous one until its model has opened.
            preset_index = self.layers.preset_combo.findData(self.store.config.lora.preset)
            if preset_index >= 0:
                self.layers.preset_combo.setCurrentIndex(preset_index)
            # Only against the model the file names: a different one is being opened and will apply it.
            if self.overview is not None and self.overview.source.spec == self.store.config.model.source:
                self._selection_from_config(self.layers.model)
            self._data_timer.start()
        elif section == "model":  # the task, problem type or classes decide what the Data tab reads
            self._data_timer.start()
            model = self.store.config.model
            if self.overview is not None and model.task != getattr(self, "_opened_task", model.task):
                self.open_model(model.source)  # another task is another model class: its head shows in the tree
        self._summary_timer.start()

    def update_summary(self) -> None:
        """The summary bar's numbers, from the same core functions the engine and `workbench inspect` use."""
        if self.overview is None or self.layers.model is None:
            return
        from workbench.core.errors import SelectionError
        from workbench.core.layers import count_selection, resolve_selection
        from workbench.core.memory import estimate_for_config

        config = self.store.config
        try:
            sel = resolve_selection(self.overview.tree, config.lora, config.model.task)
        except SelectionError as exc:
            self.layers.summary.show_problem(exc.message)
            return
        counts = count_selection(self.overview.tree, sel)
        estimate = estimate_for_config(self.overview.tree, sel, self.overview.hf_config, config, device=self.device_kind)
        self.layers.summary.show_counts(counts, estimate, self.available_memory, self.device_text)

    # -- data ---------------------------------------------------------------------------------------------
    def inspect_data(self) -> None:
        from .widgets.data_panel import inspect_data

        data = self.store.config.data
        if not data.train_files:
            return
        if self._data_running:  # one inspection at a time; the latest settings win
            self._data_pending = True
            return
        self._data_running = True
        self.data.show_busy()
        source = self.overview.source if self.overview is not None else None
        trust = self.store.config.model.trust_remote_code
        seed = self.store.config.training.seed
        if self.store.config.model.task in ("sequence-classification", "image-classification"):  # labelled rows
            from workbench.core.classification import inspect_labels
            from workbench.core.images import inspect_images

            model = self.store.config.model
            read = inspect_images if model.task == "image-classification" else inspect_labels
            worker = workers.FunctionWorker(lambda should_stop: read(model, data), "Reading the data", stoppable=True)
        else:
            worker = workers.FunctionWorker(lambda should_stop: inspect_data(data, source, trust, seed, should_stop),
                                            "Reading the data", stoppable=True)
        worker.result.connect(self._data_ready)
        worker.failed.connect(self._data_failed)
        worker.finished.connect(self._data_job_done)
        self._start(worker)

    def _data_ready(self, result: dict) -> None:
        if "labels" in result:
            self.data.show_labels(result)
        else:
            self.data.show_result(result)
        for path in self.store.config.data.train_files:
            self._remember("recent/data", path)
        self._fill_recent_menu()
        self.data_inspected.emit()

    def _data_failed(self, message: str, details: str) -> None:
        self.data.show_error(message)  # beside the control it concerns, not a box that returns after every edit
        if details:  # an unexpected error: the box says where its log is
            self.show_error("Cannot use the data", message, details)
        self.data_failed.emit(message)

    def _data_job_done(self) -> None:
        self._data_running = False
        if self._data_pending:
            self._data_pending = False
            self.inspect_data()

    # -- training -----------------------------------------------------------------------------------------
    def preflight_problems(self) -> list[str]:
        config = self.store.config
        problems = [f"Settings — {p}" for p in self.form.problems()]
        if self.overview is None:
            problems.append("Open a model first (Model and layers tab).")
        if not config.data.train_files:
            problems.append("Choose training data (Data tab).")
        if self.overview is not None:
            from workbench.core.errors import SelectionError
            from workbench.core.layers import resolve_selection

            try:
                resolve_selection(self.overview.tree, config.lora, config.model.task)
            except SelectionError as exc:
                problems.append(f"Layers — {exc.message}")
        return problems

    def start_training(self) -> None:
        if self.training.running:
            return
        problems = self.preflight_problems()
        if problems:
            self.show_error("Cannot start training", "\n".join(problems))
            if self.form.first_problem():  # behind the message: the field to fix, with the cursor in it
                self.tabs.setCurrentWidget(self.form)
                self.form.focus_field(self.form.first_problem())
            return
        if self.training.location.separate:
            self.external.start(self.store.config, self.training.location.process_count)
            return
        control = RunControl()
        worker = workers.TrainWorker(self.store.config, control)
        worker.event.connect(self.training.handle)
        worker.result.connect(self._training_done)
        worker.failed.connect(self._training_failed)
        worker.finished.connect(self._training_ended)
        self._show_training_tab(control)
        self._start(worker)

    def _show_training_tab(self, control: RunControl) -> None:
        """Reset the Train tab for a new run and paint it, before the training thread starts: its first paint
        (five plots laid out and drawn, mostly pyqtgraph's Python) takes 30–50 ms of the GUI thread, and twice
        that while the new thread's Python competes for the GIL."""
        self.training.begin_run(control)
        self.tabs.setCurrentWidget(self.training)
        self.training.repaint()

    def _training_done(self, result) -> None:
        self.training.append_log(f"Run folder: {result.run_dir}")
        self._continue_elsewhere(result)
        self.training_done.emit(result)

    def _training_failed(self, message: str, details: str) -> None:
        self.training.show_failure(message)
        self.show_error("Training failed", message, details)
        self.training_failed.emit(message)

    def _training_ended(self) -> None:
        self.training.end_run()
        self.training_ended.emit()

    # -- drag and drop ------------------------------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        from workbench.core.data import DATA_SUFFIXES

        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        data = [str(p) for p in paths if p.suffix.lower() in DATA_SUFFIXES]
        runs = [p for p in paths if p.suffix.lower() == ".toml"]
        models = [p for p in paths if p.is_dir() or p.suffix.lower() == ".gguf"]
        if runs:
            self.confirm_discard(f"open {runs[0].name}", lambda: self.open_run(runs[0]))
        elif models:
            self.open_model(str(models[0]))
        if data:
            self.data.add_files(data)
            self.tabs.setCurrentWidget(self.data)
