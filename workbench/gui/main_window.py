"""The main window: seven tabs (model and layers, settings, data, train, runs, inspect adapter, playground) over
one ``ConfigStore``, composed with the controllers that own the window's state and wired to them.

* ``JobRunner`` (``workers.jobs``) starts every job (the window's, and the dialogs' and panels' it hands its
  ``start`` to) and counts them, so closing can wait for them;
* ``ModelController`` (``model_controller``): opening a base, the layer tree and its selection, the summary;
* ``RunController`` (``run_controller``): a run in this process, new or resumed, and its hand-off on quitting;
  ``ExternalRunController`` (``external_run``): a run in a separate process;
* ``RunFilesController`` (``run_files``): new / open / save / save as, the title, "ask before discarding".

Controllers talk to widgets only through the signals wired here. What is left in the window's own mixins:
menus and remembered settings (``window_menus``), the actions on finished runs and adapters (``adapter_actions``)
and closing (``closing``). Long jobs run in workers on background threads (the ``workers`` package); results come
back as signals on the GUI thread, errors as a message box, and the window stays usable either way. Signals
(``model_opened``, ``data_inspected``, ``training_done`` …) let tests and scripts wait on each job's outcome.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import shiboken6
from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtWidgets import QMainWindow, QMessageBox, QVBoxLayout, QWidget

from workbench.core.control import RunControl

from . import workers
from .closing import CLOSE_WAIT_MS, ClosingMixin  # noqa: F401  (CLOSE_WAIT_MS: part of the window's interface)
from .adapter_actions import AdapterActionsMixin
from .process_switches import freeze_long_lived_objects
from .recents import Recents
from .run_files import DEMO_READY, RUN_FILE_FILTER  # noqa: F401  (RUN_FILE_FILTER: the window's interface)
from .startup import BuildsInSteps
from .widgets.lazy_plot import IdleSteps
from .window_compat import WindowCompatMixin
from .window_menus import MenusMixin

if TYPE_CHECKING:
    from .widgets.export_dialog import ExportDialog
    from .widgets.launch_dialog import LaunchScriptDialog

# The panels and controllers (and through them core.config and pydantic) are imported by ``_build_steps``, after
# the first paint (startup.py).

class MainWindow(BuildsInSteps, WindowCompatMixin, MenusMixin, AdapterActionsMixin, ClosingMixin, QMainWindow):
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
        self.recents = Recents(self.settings)
        self.error_box: QMessageBox | None = None
        self.consent_box: QMessageBox | None = None  # "trust this model's pickle files / code?", while open
        self.save_prompt: QMessageBox | None = None  # "save before closing?", while open
        self.training_close_box: QMessageBox | None = None  # "stop the run, keep it running, cancel?" on quitting
        self.garbage_collector = workers.GarbageCollector(self)  # before any job: Qt objects die on this thread
        self.job_runner = workers.JobRunner(self)  # every job the window (or a dialog of it) starts
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
        from .model_controller import ModelController
        from .run_controller import RunController
        from .run_files import RunFilesController

        self.model_ctl = ModelController(self.store, self._start, self)
        self.run_ctl = RunController(self._start, self)
        self.external = ExternalRunController(self)  # runs in a separate process, watched through their folder
        self.files = RunFilesController(self.store, self.recents, lambda: self.training.running, self,
                                        lambda: self.overview is not None)

        self._data_timer = QTimer(self, singleShot=True, interval=300)  # debounce typing in data settings
        self._data_timer.timeout.connect(self.inspect_data)
        self._wire_jobs()
        self._wire_model()
        self._wire_runs()
        self._wire_files()
        self.store.changed.connect(self._config_changed)
        self.data.inspectRequested.connect(self._data_timer.start)
        self.data.problem.connect(lambda text: self.show_error("Data settings", text))
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
        self.files.update_title()
        # The build's ~50,000 objects live as long as the window: out of the collections, or each full one walks
        # them again, ~30 ms every 10-60 s of an idle window (bench/gui_responsiveness.py --why)
        freeze_long_lived_objects()

    # -- wiring -------------------------------------------------------------------------------------------
    def _wire_jobs(self) -> None:
        self.job_runner.idle.connect(self._jobs_idle)

    def _wire_model(self) -> None:
        m, picker, layers = self.model_ctl, self.picker, self.layers
        m.opening.connect(self._model_opening)
        # Late-bound (lambdas): a test or script may replace a widget's method after the window was built.
        m.progress.connect(lambda done, total, detail: picker.show_progress(done, total, detail))
        m.progress.connect(lambda done, total, detail: layers.show_progress(done, total, detail))
        m.jobDone.connect(lambda: picker.set_busy(False))
        m.opened.connect(self._model_ready)  # the tree's top rows; the rest a quick turn each (model_controller)
        m.viewsDue.connect(lambda model, piece: layers.show_piece(model, piece))
        m.settled.connect(self.model_opened)
        m.failed.connect(self._model_failed)
        m.consentNeeded.connect(self._ask_consent)
        m.suggestions.connect(lambda ids: picker.set_suggestions(ids))
        m.presetShown.connect(lambda preset: layers.show_preset(preset))
        m.status.connect(lambda text, ms: self.statusBar().showMessage(text, ms))
        m.summaryReady.connect(lambda *numbers: layers.summary.show_counts(*numbers))
        m.summaryProblem.connect(lambda text: layers.summary.show_problem(text))
        m.problem.connect(self.show_error)
        picker.openRequested.connect(self.open_model)
        layers.selectionEdited.connect(self._selection_to_config)

    def _wire_runs(self) -> None:
        r = self.run_ctl
        r.started.connect(self._show_training_tab)
        r.event.connect(lambda event: self.training.handle(event))
        r.done.connect(self._training_done)
        r.failed.connect(self._training_failed)
        r.ended.connect(self._training_ended)
        r.handOffFailed.connect(self._hand_off_failed)
        self.training.startRequested.connect(self.start_training)
        self.runs.resumeRequested.connect(self.resume_run)

    def _wire_files(self) -> None:
        f = self.files
        f.cleared.connect(self._cleared)
        f.modelRequested.connect(self.open_model)
        f.problem.connect(self.show_error)
        f.status.connect(lambda text, ms: self.statusBar().showMessage(text, ms))
        f.titleChanged.connect(self.setWindowTitle)
        f.recentChanged.connect(self._fill_recent_menu)
        self.picker.demoRequested.connect(f.request_demo)

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

    # -- jobs ---------------------------------------------------------------------------------------------
    def _start(self, worker: workers.Worker) -> workers.Job:
        """Every job of the window, and of the dialogs and panels it hands this to, starts here. Once closing
        has begun the runner cancels a job at once (``ClosingMixin`` switches ``accepting``)."""
        return self.job_runner.start(worker)

    def _jobs_idle(self) -> None:
        """The last job's thread has ended (or a closing window gave up waiting for it): only now may the window
        close for good."""
        if self._closing:
            self.close()
        if self._delete_when_jobs_end and not self._jobs:  # the deletion that waited for the jobs
            self._delete_when_jobs_end = False
            # Not deleteLater() again: Qt ignores it once the object's first DeferredDelete was delivered. From
            # the event loop, so that no frame of this window's code is running when it goes.
            QTimer.singleShot(0, lambda: shiboken6.isValid(self) and shiboken6.delete(self))

    def warm_up(self) -> None:
        """Import torch and transformers in the background once the window is on screen."""
        worker = workers.FunctionWorker(workers.warm_up_imports, "Loading the machine-learning libraries")
        worker.result.connect(lambda _: IdleSteps(self, self._prebuild_plots(), when_idle=True))
        self._start(worker)

    def _prebuild_plots(self):
        """The plots a first run or a first data reading would build on the GUI thread, built in idle turns now."""
        self.training.prebuild_plots()
        while self.training.prebuilding:
            yield
        self.data.histogram.prebuild()  # the Data tab's, built by the first reading of the data otherwise

    # -- model --------------------------------------------------------------------------------------------
    def open_model(self, spec: str) -> None:
        self.model_ctl.open(spec)

    def _model_opening(self, spec: str) -> None:
        self.picker.set_text(spec)
        self.picker.set_busy(True, f"Opening {spec}…")
        self.layers.show_waiting(f"Opening {html.escape(spec)}… the layer tree appears here."
                                 + (" The first start converts the built-in model once (about half a minute)."
                                    if spec.startswith("builtin:") else ""))

    def _model_ready(self, model) -> None:
        self.layers.set_model(model)
        self.picker.show_overview(self.overview, self.device_text)
        self.recents.remember("recent/models", self.store.config.model.source)
        self.picker.set_recent(self.recents.items("recent/models"))
        if self.files.demo_opening:
            self.files.demo_opening = False
            self.statusBar().showMessage(DEMO_READY)
        if self.store.config.data.train_files:
            self._data_timer.start()  # the preview needs the model's tokenizer

    def _model_failed(self, message: str, details: str) -> None:
        if self.consent_box is not None:  # not an error: the question is on screen
            self.picker.info.setText("Waiting for your choice: the model needs something that is off by default.")
            return
        self.picker.info.setText("The model could not be opened. Choose another one.")
        self.files.demo_opening = False
        self.layers.show_hint("The model could not be opened. Choose another one (above).")
        self.show_error("Cannot open the model", message, details)
        self.model_failed.emit(message)

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
            if not (box.clickedButton() is allow and self.model_ctl.allow(setting, spec)):
                self.picker.info.setText(f"Not opened: {html.escape(spec)} needs model.{setting}.")
                self.model_failed.emit(message)

        box.finished.connect(answered)
        self.consent_box = box
        box.open()

    def _selection_to_config(self) -> None:
        """A user's edit of the selection (tree or block map), written to the configuration."""
        model = self.model_ctl.tree_model
        if model is not None:
            self.model_ctl.write_selection(self.layers.matching_preset(model.selection.ordered()))

    def _config_changed(self, section: str) -> None:
        if section in ("", "output"):  # only these can change runs_root
            self.runs.set_root(self.store.config.output.runs_root)
        if section == "":  # a new or opened run file
            self.picker.set_text(self.store.config.model.source)
            # The preset box names the file's preset at once, not the previous one until its model has opened.
            preset_index = self.layers.preset_combo.findData(self.store.config.lora.preset)
            if preset_index >= 0:
                self.layers.preset_combo.setCurrentIndex(preset_index)
        if section in ("", "model"):  # a new file, or the task, problem type or classes: what the Data tab reads
            self._data_timer.start()
        if section in ("", "model", "data") and self.statusBar().currentMessage() == DEMO_READY:
            self.statusBar().clearMessage()  # it would tell a user who changed the run to train the demo as it was
        self.model_ctl.config_changed(section)

    def _cleared(self) -> None:
        """A new, empty run: nothing of the previous one stays on screen."""
        self.model_ctl.clear()
        self.layers.clear_model()
        self.picker.info.setText("Open a model to see its layers.")
        self.data.clear_results()
        if self.error_box is not None:  # an error about the previous run's data or model is no longer true
            self.error_box.close()

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
            self.recents.remember("recent/data", path)
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
        selection = self.model_ctl.selection_problem()
        if selection:
            problems.append(f"Layers — {selection}")
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
        self.run_ctl.start(self.store.config)

    def resume_run(self, run_dir: str) -> None:
        if self.training.running:
            self.show_error("Resume", "A run is already training in the window; stop it first.")
            return
        self.runs.set_busy(run_dir, True)
        self.run_ctl.ended.connect(self.runs.clear_busy, Qt.ConnectionType.SingleShotConnection)
        self.run_ctl.resume(run_dir)

    def _show_training_tab(self, control: RunControl) -> None:
        """Reset the Train tab for a new run and paint it, before the training thread starts: its first paint
        (five plots laid out and drawn, mostly pyqtgraph's Python) takes 30–50 ms of the GUI thread, and twice
        that while the new thread's Python competes for the GIL."""
        self.training.begin_run(control)
        self.tabs.setCurrentWidget(self.training)
        self.training.repaint()

    def _training_done(self, result) -> None:
        self.training.append_log(f"Run folder: {result.run_dir}")
        self.training_done.emit(result)

    def _training_failed(self, message: str, details: str) -> None:
        self.training.show_failure(message)
        self.show_error("Training failed", message, details)
        self.training_failed.emit(message)

    def _training_ended(self) -> None:
        self.training.end_run()
        self.training_ended.emit()

    def _hand_off_failed(self, message: str) -> None:
        """"Keep it running" could not start the process that continues the run: stay open, with the message."""
        self.show_error("Cannot keep the run running", message)
        try:
            self.training_ended.disconnect(self.close)
        except (RuntimeError, TypeError):
            pass

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
            self.files.request_open(runs[0])
        elif models:
            self.open_model(str(models[0]))
        if data:
            self.data.add_files(data)
            self.tabs.setCurrentWidget(self.data)
