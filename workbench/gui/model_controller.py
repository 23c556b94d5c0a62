"""The open base model: the job that opens it, what it found (the overview, the training device), the layer tree
it feeds and the one owner of the layer selection while a model is open, and the summary bar's numbers.

``ModelController`` owns that state and talks to widgets only through its signals (the window wires them to the
model picker, the layer panel and its summary bar): it never reaches into a panel. The selection lives in the
``LayerTreeModel`` it builds (a Qt item model, not a widget); the configuration store is told of a user's edit
(``write_selection``) and the tree of a loaded run file's choice (``load_selection``), so there is one way in each
direction and no guard against echoes.

An open's result reaches the window in pieces, one per quick turn of the event loop (``IdleSteps`` with
``when_idle``), each after the previous one has been painted: the tree's top rows, then its rows down to the first
block, then the block map, then the summary. On an 80-block model they were one turn of 35-80 ms (the result handler
and the Model tab's first paint between the same two ticks). Every piece leaves the window consistent: the tree
model carries the configuration's selection from the first piece on, and each later view reads that same
selection when it comes. A newer result (or ``clear``) stops the pieces still due, so no piece of an earlier model
lands after it. ``settled`` says the last piece has landed.
"""

from __future__ import annotations

from typing import Callable, Iterator

from PySide6.QtCore import QObject, QTimer, Signal

from workbench.core.config import ConfigError

from . import workers
from .config_store import ConfigStore
from .widgets.layer_tree_model import LayerTreeModel
from .widgets.lazy_plot import IdleSteps

# The pieces a view shows after the tree's top rows (``viewsDue``), in this order, a quick event-loop turn each.
VIEW_PIECES = ("rows", "map")


class ModelController(QObject):
    # The window's widgets listen to these (``MainWindow`` wires them).
    opening = Signal(str)  # the model source being opened
    progress = Signal(float, float, str)  # a built-in model's one-time conversion
    jobDone = Signal()  # the open job ended, opened or not
    opened = Signal(object)  # the LayerTreeModel of the opened model (``overview`` and the device facts are set)
    viewsDue = Signal(object, str)  # (that LayerTreeModel, a VIEW_PIECES name): show this piece of it now
    settled = Signal()  # the open's last piece has landed: tree, block map and summary all show the opened model
    failed = Signal(str, str)  # message, details (where the log of an unexpected error is)
    consentNeeded = Signal(str, list, str, str)  # model.* setting, files, preview, the refusal's message
    suggestions = Signal(object)  # a list of Hub ids of the open model's family (online only)
    presetShown = Signal(object)  # the preset the ticks are exactly, or None ("custom selection")
    status = Signal(str, int)  # a status-bar line and how long it stays (ms)
    summaryReady = Signal(object, object, object, str)  # counts, estimate, available memory, device text
    summaryProblem = Signal(str)
    problem = Signal(str, str)  # title, message: a setting that could not be applied

    def __init__(self, store: ConfigStore, start_job: Callable[[workers.Worker], workers.Job],
                 parent: QObject | None = None):
        super().__init__(parent)
        self.store = store
        self._start_job = start_job
        self.overview = None  # core.models.ModelOverview of the open model
        self.origin: str | None = None  # where its tree came from: "built", "cache", "template" or "builtin" (core/tree_cache.py)
        self.tree_model: LayerTreeModel | None = None  # the selection's owner while a model is open
        self.device_kind, self.available_memory, self.device_text = "cpu", None, ""
        self.opened_task: str | None = None  # the tree's model class: causal LM or a classifier
        self._summary_timer = QTimer(self, singleShot=True, interval=0)  # coalesce several edits into one update
        self._summary_timer.timeout.connect(self.update_summary)
        self._landing: IdleSteps | None = None  # the pieces of the last open's result still to come
        # The last resolve_selection: the same tree and settings resolve to the same selection, and an open asked
        # for it three times (the ticks, the summary, the start's check), 8-12 ms each on a loaded machine.
        self._resolved: tuple | None = None

    # -- opening ------------------------------------------------------------------------------------------
    def open(self, spec: str) -> bool:
        """Start opening ``spec``; False (with ``problem``) when the configuration refuses it."""
        try:
            model, fields = self.store.config.model, {"source": spec.strip()}
            if spec.strip() != model.source:  # "I trust this file" is per model: another one starts untrusted
                fields.update(allow_pickle=False, trust_remote_code=False)
            self.store.update("model", **fields)
        except ConfigError as exc:
            self.problem.emit("Model", "\n".join(exc.problems))
            return False
        self.opened_task = self.store.config.model.task
        self.opening.emit(spec)
        worker = workers.OpenModelWorker(self.store.config)
        worker.progress.connect(self.progress)
        worker.result.connect(self._ready)
        worker.failed.connect(self.failed)
        worker.consent_needed.connect(self.consentNeeded)
        worker.finished.connect(self.jobDone)
        self._start_job(worker)
        return True

    def allow(self, setting: str, spec: str) -> bool:
        """The user allowed ``setting`` (``allow_pickle`` / ``trust_remote_code``) for ``spec``: open it again.
        False when another model was chosen meanwhile."""
        if self.store.config.model.source != spec:
            return False
        self.store.update("model", **{setting: True})
        return self.open(spec)

    def clear(self) -> None:
        """No model open (a new run)."""
        self._stop_landing()
        self.overview = self.origin = None
        self.tree_model = None

    def _stop_landing(self) -> None:
        if self._landing is not None:
            self._landing.stop()
            self._landing.deleteLater()
            self._landing = None

    def _ready(self, result: dict) -> None:
        self._stop_landing()  # nothing of a model opened before lands after this one
        self.overview, self.origin = result["overview"], result.get("origin")
        self.device_text, self.available_memory = result["device_text"], result["available"]
        self.device_kind = result["device_kind"]
        lora = self.store.config.lora
        model = LayerTreeModel(self.overview.tree, lora.r, lora.alpha)
        model.set_quantization(self.store.config.model)
        self.tree_model = model
        self._show_config_selection(model)  # before any view sees the model: no per-row repaint signals
        self.opened.emit(model)
        self._landing = landing = IdleSteps(self, self._land(model), when_idle=True)
        landing.done.connect(landing.deleteLater)  # one per open, else each stayed a child of this controller

    def _land(self, model: LayerTreeModel) -> Iterator[None]:
        """The result's later pieces, one per quick turn after the previous one's paint (see the module's doc)."""
        for piece in VIEW_PIECES:
            self.viewsDue.emit(model, piece)
            yield
        self.update_summary()
        yield
        self._suggest_relatives()  # starting a thread waits for it to run: a turn of its own on a busy machine
        self._landing = None
        self.settled.emit()

    def _suggest_relatives(self) -> None:
        """When online, the Hub models of the open model's family (in the background; offline, or on any Hub
        trouble, nothing happens)."""
        from workbench.core.models import hub_suggestions

        spec = self.store.config.model.source
        origin = str(getattr(self.overview.hf_config, "_name_or_path", "") or "")
        worker = workers.FunctionWorker(lambda: hub_suggestions(spec, origin), "Looking up related models")
        worker.result.connect(self.suggestions)
        self._start_job(worker)

    def shows_config_model(self) -> bool:
        """The open model is the one the configuration names."""
        return self.overview is not None and self.overview.source.spec == self.store.config.model.source

    # -- selection ↔ configuration ------------------------------------------------------------------------
    def load_selection(self) -> None:
        """Show the configuration's layer choice (preset, patterns, blocks or exact names) as ticks.

        A choice made for another model (names this one does not have) falls back to its preset, and the
        configuration follows, so what is ticked is always what would train.
        """
        model = self.tree_model
        if model is None:
            return
        self._show_config_selection(model)
        self._summary_timer.start()

    def _show_config_selection(self, model: LayerTreeModel) -> None:
        from workbench.core.config import DEFAULT_PRESET
        from workbench.core.errors import SelectionError

        config = self.store.config
        # Loaded, not edited: the selection does not announce it as an edit, so nothing is written back.
        try:
            sel = self._resolve(model.tree, config)
            model.selection.load(sel.targets, sel.rank_overrides, sel.alpha_overrides)
        except SelectionError as exc:
            preset = config.lora.preset if config.lora.preset != "none" else DEFAULT_PRESET
            model.selection.load(model.tree.preset(preset), {}, {})
            self.store.update("lora", target_modules=[], include=[], blocks=None, preset=preset,
                              rank_pattern={}, alpha_pattern={})
            self.status.emit(f"The layer choice did not fit this model ({exc.message}); "
                             f"selected the {preset} preset instead.", 10_000)
        # The preset box names the configuration's preset (not the last one applied) when the ticks are exactly
        # its modules; patterns, blocks or exact names that differ from it are a "custom selection".
        preset = self.store.config.lora.preset
        # Compared as sets: ordered() sorts by model order, ~4,000 key calls on an 80-block model, for nothing here.
        self.presetShown.emit(preset if model.selection.selected == set(model.tree.preset(preset)) else None)

    def _resolve(self, tree, config):
        """``core.layers.resolve_selection`` of ``config``'s layer choice on ``tree``, remembered for the same
        tree and settings (a SelectionError is raised again each time; nothing is remembered for it)."""
        from workbench.core.layers import resolve_selection

        key = (config.lora, config.model.task)
        if self._resolved is not None and self._resolved[0] is tree and self._resolved[1] == key:
            return self._resolved[2]
        sel = resolve_selection(tree, config.lora, config.model.task)
        self._resolved = (tree, key, sel)
        return sel

    def write_selection(self, matched: str | None) -> None:
        """A user's edit of the selection (tree or block map), written to the configuration. ``matched``: the
        preset whose modules the ticks are exactly (the layer panel knows its presets' order), or None."""
        model = self.tree_model
        if model is None:
            return
        names = model.selection.ordered()
        # The run file names the preset the ticks are exactly (an applied preset, or the same modules by hand);
        # a hand-made selection keeps the file's preset beside its exact names, and the box says "custom".
        preset = matched or (self.store.config.lora.preset if names else "none")
        self.store.update("lora", target_modules=names, include=[], blocks=None, preset=preset,
                          rank_pattern=dict(model.rank_overrides), alpha_pattern=dict(model.alpha_overrides))
        self.presetShown.emit(matched)

    def config_changed(self, section: str) -> None:
        """The configuration changed (``section``; "" for a new or opened run file): the tree's defaults,
        quantization and ticks follow, then the summary."""
        if self.tree_model is not None:
            lora = self.store.config.lora
            # New default rank/alpha for the columns: never a selection edit (see LayerSelection), so the open
            # tree's ticks are not written back into a just-opened run file meant for another model.
            self.tree_model.set_defaults(lora.r, lora.alpha)
            if section in ("", "model"):
                self.tree_model.set_quantization(self.store.config.model)
        if section == "" and self.shows_config_model():  # a different model is being opened: it applies them
            self.load_selection()
        elif section == "model":
            model = self.store.config.model
            if self.overview is not None and model.task != (self.opened_task or model.task):
                self.open(model.source)  # another task is another model class: its head shows in the tree
        self._summary_timer.start()

    def selection_problem(self) -> str | None:
        """Why the configuration's layer choice cannot train on the open model, or None (also with no model)."""
        if self.overview is None:
            return None
        from workbench.core.errors import SelectionError

        try:
            self._resolve(self.overview.tree, self.store.config)
        except SelectionError as exc:
            return exc.message
        return None

    def update_summary(self) -> None:
        """The summary bar's numbers, from the same core functions the engine and `workbench inspect` use."""
        if self.overview is None or self.tree_model is None:
            return
        from workbench.core.config import ConfigError
        from workbench.core.errors import SelectionError
        from workbench.core.init_adapter import with_adapter_settings
        from workbench.core.layers import count_selection
        from workbench.core.memory import estimate_for_config

        try:  # with model.init_adapter, that adapter's rank and modules are what the run trains
            config = with_adapter_settings(self.store.config)
            sel = self._resolve(self.overview.tree, config)
        except (SelectionError, ConfigError) as exc:
            self.summaryProblem.emit("; ".join(getattr(exc, "problems", [exc.message])))
            return
        counts = count_selection(self.overview.tree, sel)
        estimate = estimate_for_config(self.overview.tree, sel, self.overview.hf_config, config, device=self.device_kind)
        self.summaryReady.emit(counts, estimate, self.available_memory, self.device_text)
