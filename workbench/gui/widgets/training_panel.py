"""The Train tab: start / pause / resume / stop / checkpoint, progress with ETA, live plots, samples, log.

Engine events arrive through ``handle`` (a signal the training worker's job emits on the GUI thread)
and are only queued; a 50 ms timer applies the queue in one go — at most 20 repaints a second however fast
the engine reports. The panel starts no job itself: the main window checks the setup and calls
``start_run``, and the panel turns clicks into ``RunControl`` requests, which the engine reads between
optimizer steps (for a run in another process, ``core.runs.control_file.FolderControl`` writes them to the run
folder's control file instead).
"""

from __future__ import annotations

import html
import threading
from typing import Iterator

from PySide6.QtCore import QRect, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QDoubleSpinBox, QHBoxLayout, QLabel, QPlainTextEdit, QProgressBar, QPushButton, QSplitter, QTabWidget,
    QVBoxLayout, QWidget,
)

from workbench.core import runs as core_runs
from workbench.core.control import RunControl
from workbench.core.events import (
    CheckpointSaved, Evaluation, Failed, Finished, Message, Paused, Progress, Resumed, RunStarted, Sample, Step,
)

from .lazy_plot import IdleSteps, LazyPlot, evaluation_plots, metrics_plots, preference_plots
from .run_location import RunLocation
from .summary_bar import human_bytes

FLUSH_INTERVAL_MS = 50  # progress and labels: ≤ 20 GUI updates per second; plots: one of them per flush


class _History:
    """A resumed run's earlier steps, read from its metrics.jsonl off the GUI thread and queued like an event."""

    def __init__(self, run: object, steps: list, evaluations: list):
        self.run, self.steps, self.evaluations = run, steps, evaluations


def read_history(run_dir: str, up_to_step: int) -> tuple[list, list]:
    """The ``Step`` and ``Evaluation`` events a run recorded up to its resume point (a later line is the resumed
    session's own, which arrives live)."""
    steps, evaluations = [], []
    for e in core_runs.read_events(run_dir):
        if isinstance(e, Step) and e.step <= up_to_step:
            steps.append(e)
        elif isinstance(e, Evaluation) and e.step <= up_to_step:
            evaluations.append(e)
    return steps, evaluations


def before_first_step(e: RunStarted) -> str:
    """What the engine does between RunStarted and the first Step, said in words: without it step 0 looked
    frozen for as long as a baseline evaluation and the "before" samples take."""
    training = e.config.get("training", {}) if isinstance(e.config, dict) else {}
    work = []
    if e.resumed_from_step == 0 and training.get("sample_steps") and training.get("sample_prompts"):
        work.append("writing samples from the base model (Samples tab)")
    if e.validation_examples:
        work.append(f"measuring the baseline evaluation loss on {e.validation_examples:,} validation examples")
    work.append("running the first optimizer step")
    where = f"Step {e.resumed_from_step} of {e.total_steps}" if e.total_steps else f"Step {e.resumed_from_step}"
    return f"{where}: {', then '.join(work)}… The first loss appears after step {e.resumed_from_step + 1}."


def evaluation_summary(metrics: dict[str, float]) -> str:
    """The task metrics and retention of one evaluation, for the log line ("; exact_match 0.25, …")."""
    from .metric_labels import LABELS

    shown = [f"{LABELS[k]} {v:.3g}" for k, v in metrics.items() if k in LABELS and isinstance(v, (int, float))]
    return "; " + ", ".join(shown) if shown else ""


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class TrainingPanel(QWidget):
    startRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.control: RunControl | None = None
        self.running = False
        self.paused = False
        self._pending: list = []
        self._failure_shown = False
        self._flush_timer = QTimer(self, interval=FLUSH_INTERVAL_MS)
        self._flush_timer.timeout.connect(self.flush)

        self.start_button = QPushButton("Start training")
        self.start_button.setToolTip("Train with the current settings (Ctrl+Return).")
        self.pause_button = QPushButton("Pause")
        self.pause_button.setToolTip("Pause after the current optimizer step; the model stays in memory.")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the current step and save the adapter and a checkpoint.")
        self.checkpoint_button = QPushButton("Save checkpoint now")
        self._run_token: object | None = None  # identifies the current run, so late history of an old one is dropped
        self._elapsed: float | None = None
        self._history_reader: threading.Thread | None = None
        self.progress = QProgressBar()
        self.progress.setFormat("step %v of %m")
        # In the middle of the bar (some styles put it at the right edge, where it ran into the frame).
        self.progress.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.status_label = QLabel("Not started")
        self.eta_label = QLabel()
        self.batch_label = QLabel()  # the effective global batch, from RunStarted
        self.location = RunLocation()  # in this app, or as a separate process (external_run.py)
        self.smoothing = QDoubleSpinBox(minimum=0.0, maximum=0.99, singleStep=0.05, decimals=2, value=0.6)
        self.smoothing.setToolTip("Weight of the exponential moving average drawn over the raw loss (0 = none).")
        self.plots = LazyPlot(metrics_plots)  # built when the tab is first shown or given data
        self.eval_plots = LazyPlot(evaluation_plots)  # task metrics and retention, shown beside the loss once they arrive
        self.eval_plots.hide()
        self.preference_plots = LazyPlot(preference_plots)  # a DPO/ORPO/KTO run's rewards: shown once a step has them
        self.preference_plots.hide()
        self._run_config: dict = {}  # the running run's config (RunStarted), for evaluation plots built late
        self._prerendering: IdleSteps | None = None  # the live plots' first paint, done off screen in idle turns
        self.samples = QPlainTextEdit(readOnly=True)
        self.samples.setPlaceholderText("Generations for the sample prompts appear here during training "
                                        "(set sample prompts and a sample interval in Settings).")
        self.log = QPlainTextEdit(readOnly=True)
        self.log.setMaximumBlockCount(5000)

        buttons = QHBoxLayout()
        for w in (self.start_button, self.pause_button, self.stop_button, self.checkpoint_button):
            buttons.addWidget(w)
        buttons.addWidget(self.location)
        buttons.addStretch(1)
        buttons.addWidget(QLabel("Loss smoothing:"))
        buttons.addWidget(self.smoothing)
        status = QHBoxLayout()
        status.addWidget(self.progress, 1)
        status.addWidget(self.batch_label)
        status.addWidget(self.eta_label)
        bottom = QTabWidget()
        bottom.addTab(self.samples, "Samples")
        bottom.addTab(self.log, "Log")
        bottom.setMinimumHeight(120)
        # Five plots ask for more height than the window has, and a splitter gives its handle no room to move
        # against a minimum size hint: a small minimum lets the user drag the samples pane up as far as wanted.
        self.plots.setMinimumHeight(200)
        splitter = QSplitter(Qt.Orientation.Vertical)
        self.curves_split = QSplitter(Qt.Orientation.Horizontal)
        self.curves_split.addWidget(self.plots)
        self.curves_split.addWidget(self.eval_plots)
        self.curves_split.addWidget(self.preference_plots)
        splitter.addWidget(self.curves_split)
        splitter.addWidget(bottom)
        splitter.setChildrenCollapsible(False)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([560, 240])
        self.splitter = splitter
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addLayout(status)
        layout.addWidget(self.status_label)
        layout.addWidget(splitter, 1)

        self.start_button.clicked.connect(self.startRequested)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.request_stop)
        self.checkpoint_button.clicked.connect(self.request_checkpoint)
        self.smoothing.valueChanged.connect(lambda weight: self.plots.set_smoothing(weight))  # not built yet
        self._update_buttons()

    def prebuild_plots(self) -> None:
        """Build the live plots now, one per event-loop turn, while the window is idle (the window calls this
        once the warm-up has imported pyqtgraph), then paint them once off screen, again one per turn. Built at
        the first Start instead, all five at once held the GUI thread for ~60 ms there, their first paint another
        ~15 ms, and each several times that with the new run's thread competing for the GIL."""
        if not self.plots.built and self._prerendering is None:
            self.plots.ready.connect(self._prerender_plots)
            self.plots.prebuild()

    @property
    def prebuilding(self) -> bool:
        """Whether ``prebuild_plots`` is still building or painting the plots."""
        return self.plots.prebuilding or (self._prerendering is not None and self._prerendering.running)

    def _prerender_plots(self) -> None:
        if self._prerendering is None and not self.isVisible() and self.parentWidget() is not None:
            self._prerendering = IdleSteps(self, self._prerender_steps(), when_idle=True)

    def _prerender_steps(self) -> Iterator[None]:
        # A hidden tab page has no size of its own yet: the one it will be shown at is its stack's. A 1-pixel
        # grab sends the pending resize events down the tab, which lays out the splitters and the plots.
        self.setGeometry(self.parentWidget().rect())
        self.grab(QRect(0, 0, 1, 1))
        yield
        for _ in self.plots.prerender():
            if self.isVisible():  # shown meanwhile: painted for real
                return
            yield

    # -- run life cycle -------------------------------------------------------------------------------
    def begin_run(self, control: RunControl) -> None:
        """Called by the window when it has started a training worker with ``control``."""
        self.control = control
        self.running, self.paused = True, False
        self._failure_shown = False
        self._pending.clear()
        self._run_token = object()
        self._elapsed = None
        self.plots.reset()
        # The evaluation and preference plots are built only for a run that has such numbers: building a
        # pyqtgraph widget costs the GUI thread tens of milliseconds, paid here at every Start otherwise.
        self._run_config = {}
        for lazy in (self.eval_plots, self.preference_plots):
            if lazy.built:
                lazy.reset()
            lazy.hide()
        self.samples.clear()
        self.progress.setRange(0, 0)  # busy until the engine says how many steps
        self.status_label.setText("Preparing the model and the data…")
        self.eta_label.clear()
        self.batch_label.clear()
        self._flush_timer.start()
        self._update_buttons()

    def end_run(self) -> None:
        """The worker has finished (successfully or not): apply what is left and free the controls."""
        self.running, self.paused = False, False
        # What is left is applied now; the plots it leaves stale are drawn one per flush, and the flush timer stops
        # once nothing is left to apply or draw and no history reader is running (flush).
        self.flush()
        self.control = None
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        self._show_ended_time()
        self._update_buttons()

    def _show_ended_time(self) -> None:
        """No ETA once a run has ended (it read "ETA 1:03" after a stop): how long it ran, only."""
        self.eta_label.setText("" if self._elapsed is None else f"ran for {human_duration(self._elapsed)}")

    def show_failure(self, message: str) -> None:
        """The worker reports the run could not start or went wrong. The engine may or may not have sent a
        ``Failed`` event first (input it rejects before a run exists raises without one): show it once."""
        self.flush()
        if not self._failure_shown:
            self._failure_shown = True
            self.status_label.setText(f"Run failed: {message.splitlines()[0]}")
            self.append_log(f"FAILED: {message}")

    def toggle_pause(self) -> None:
        if not self.control:
            return
        if self.paused:
            self.control.request_resume()
            self.status_label.setText("Resuming…")
        else:
            self.control.request_pause()
            self.status_label.setText("Pausing after this step…")
            self.append_log("Pause requested; the run pauses after the current step.")
        self.pause_button.setEnabled(False)  # re-enabled when the engine confirms with Paused / Resumed

    def request_stop(self) -> None:
        if self.control:
            self.control.request_stop()
            self.status_label.setText("Stopping after this step; the adapter will be saved…")
            self.stop_button.setEnabled(False)

    def request_checkpoint(self) -> None:
        if self.control:
            self.control.request_checkpoint()
            self.append_log("Checkpoint requested; it is saved after the current step.")

    def _update_buttons(self) -> None:
        self.start_button.setEnabled(not self.running)
        self.location.setEnabled(not self.running)
        self.pause_button.setEnabled(self.running)
        self.pause_button.setText("Resume" if self.paused else "Pause")
        self.stop_button.setEnabled(self.running)
        self.checkpoint_button.setEnabled(self.running)

    # -- events ---------------------------------------------------------------------------------------
    def handle(self, event) -> None:
        self._pending.append(event)
        if isinstance(event, RunStarted) and event.resumed_from_step > 0:
            self._load_history(event)

    def _load_history(self, e: RunStarted) -> None:
        """Plot what the run did before it was stopped, read in a thread (a long run's file is megabytes).
        The result joins the event queue (``list.append`` is atomic), which the flush timer applies."""
        token = self._run_token

        def read() -> None:
            try:
                steps, evaluations = read_history(e.run_dir, e.resumed_from_step)
            except Exception:  # noqa: BLE001  (an unreadable history: the live curve still draws)
                return
            self._pending.append(_History(token, steps, evaluations))

        self._history_reader = threading.Thread(target=read, name="read run history", daemon=True)
        self._history_reader.start()

    def _reading_history(self) -> bool:
        return self._history_reader is not None and self._history_reader.is_alive()

    def flush(self) -> None:
        # The reader first: once it has ended, whatever it queued is in _pending already.
        if not self.running and not self._reading_history() and not self._pending and not self.plots.stale:
            self._flush_timer.stop()
        if self._pending:
            events, self._pending = self._pending, []
            last_step = None  # labels show only a batch's last step, but before any later event's own status
            for event in events:
                if isinstance(event, Step):
                    self.plots.add_step(event)
                    if self.preference_plots.built or _has_preference_metrics(event):
                        self.preference_plots.add_step(event)
                    last_step = event
                    continue
                if last_step is not None:
                    self._show_progress(last_step)
                    last_step = None
                self._apply(event)
            if last_step is not None:
                self._show_progress(last_step)
        self._draw_preference()
        if not self.plots.stale:
            return
        # One plot per flush, in turn: a repaint of all five stalls the window for tens of milliseconds (while the
        # training competes for the CPU and the GIL, and after it, when a run's end drew all five at once), one
        # plot costs a fifth of that, and each plot still redraws every 5 × FLUSH_INTERVAL_MS = 250 ms.
        self.plots.redraw_next()
        if self.plots.stale and not self._flush_timer.isActive():
            self._flush_timer.start()  # the others in the next flushes; the timer stops once all are drawn

    def _draw_preference(self) -> None:
        """A preference run's reward curves (a few points a flush: drawn at once), shown with the first of them."""
        if not self.preference_plots.built or not self.preference_plots.stale:
            return
        self.preference_plots.redraw()
        if self.preference_plots.has_data and self.preference_plots.isHidden():
            self.preference_plots.show()
            width = self.curves_split.width()
            self.curves_split.setSizes([width * 2 // 3] + [width // 3 if w.isVisible() else 0
                                                           for w in (self.eval_plots, self.preference_plots)])

    def _show_progress(self, e: Step) -> None:
        self.plots.set_total_steps(e.total_steps)
        self.progress.setRange(0, max(e.total_steps, 1))
        self.progress.setValue(e.step)
        memory = f" · memory {human_bytes(e.memory_bytes)}" if e.memory_bytes else ""
        speed = f" · {e.tokens_per_second:,.0f} tokens/s" if e.tokens_per_second else ""
        if e.trained_tokens_per_second:  # the tokens that carry loss, and examples: what users compare across tools
            speed += f" ({e.trained_tokens_per_second:,.0f} trained · {e.examples_per_second or 0:,.1f} examples/s)"
        if not self.paused:
            self.status_label.setText(f"Training — epoch {e.epoch:.2f} · loss {e.loss:.4f}{speed}{memory}")
        self._elapsed = e.elapsed_s
        self.eta_label.setText(f"elapsed {human_duration(e.elapsed_s)} · ETA {human_duration(e.eta_s)}")

    def _apply(self, event) -> None:
        if isinstance(event, RunStarted):
            self.plots.set_total_steps(event.total_steps)
            self.progress.setRange(0, max(event.total_steps, 1))
            self.progress.setValue(event.resumed_from_step)
            self.append_log(f"Run started in {event.run_dir} on {event.device_name} ({event.precision}); "
                            f"{event.trainable_params:,} trainable parameters, {event.total_steps} steps, "
                            f"{event.train_examples} training examples.")
            self.status_label.setText(before_first_step(event))
            self._run_config = event.config  # the evaluation plots read it when the first evaluation builds them
            if self.eval_plots.built:
                self.eval_plots.set_run_config(event.config)
            self._show_batch(event)
        elif isinstance(event, Evaluation):
            self.plots.add("eval_loss", event.step, event.eval_loss)
            if event.metrics and not self.eval_plots.built:
                self.eval_plots.set_run_config(self._run_config)
            if event.metrics and self.eval_plots.add_evaluation(event.step, event.metrics) and self.eval_plots.isHidden():
                self.eval_plots.show()
                width = self.curves_split.width()
                self.curves_split.setSizes([width * 2 // 3, width // 3])  # a widget shown late gets no room else
            self.append_log(f"Step {event.step}: evaluation loss {event.eval_loss:.4f}" + evaluation_summary(event.metrics))
            if self.plots.points("loss") == 0 and not self.paused:  # the baseline, before any step
                self.status_label.setText(f"Baseline evaluation loss {event.eval_loss:.4f}; running the first "
                                          f"optimizer step…")
        elif isinstance(event, CheckpointSaved):
            self.append_log(f"Step {event.step}: checkpoint saved to {event.path}")
        elif isinstance(event, Sample):
            self.samples.appendHtml(f"<b>step {event.step}</b> — <i>{html.escape(event.prompt)}</i><br>"
                                    f"{html.escape(event.completion)}<br>")
        elif isinstance(event, Paused):
            self.paused = True
            self.status_label.setText(f"Paused at step {event.step}. Resume to continue.")
            self.append_log(f"Step {event.step}: paused; the model stays in memory until Resume.")
            self._update_buttons()
        elif isinstance(event, Resumed):
            self.paused = False
            self.status_label.setText(f"Resumed at step {event.step}.")
            self.append_log(f"Step {event.step}: resumed.")
            self._update_buttons()
        elif isinstance(event, _History):
            added = self.plots.add_history(event.steps, event.evaluations) if event.run is self._run_token else 0
            if event.run is self._run_token and (self.preference_plots.built
                                                 or any(_has_preference_metrics(e) for e in event.steps)):
                self.preference_plots.add_history(event.steps)
            if added:
                self.append_log(f"Plotted the run's history: {added} logged steps before step "
                                f"{event.steps[-1].step + 1}.")
        elif isinstance(event, Finished):
            self.progress.setValue(event.step)
            self._show_ended_time()
            self.status_label.setText(f"Run {event.status} at step {event.step}. Adapter: {event.adapter_path}")
            self.append_log(f"Run {event.status} at step {event.step}; adapter saved to {event.adapter_path}")
        elif isinstance(event, Failed):
            self._failure_shown = True
            self.status_label.setText(f"Run failed: {event.reason}")
            self.append_log(f"FAILED: {event.reason}" + (f"\nHint: {event.hint}" if event.hint else "")
                            + (f"\n{event.traceback}" if event.traceback else ""))
        elif isinstance(event, Message):
            self.append_log(("Warning: " if event.level == "warning" else "") + event.text)
        elif isinstance(event, Progress):  # before the run starts: downloading or converting the base model
            self._show_preparation(event)

    def _show_preparation(self, e: Progress) -> None:
        """The progress bar measures the download (bytes) or conversion (steps) until RunStarted takes it over."""
        what = {"download": "Downloading", "convert": "Converting"}.get(e.task, e.task.capitalize())
        if e.total > 0:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * min(e.done, e.total) / e.total))
        else:
            self.progress.setRange(0, 0)  # size not known yet: a busy bar
        amount = (f"{human_bytes(e.done)} of {human_bytes(e.total)}" if e.unit == "bytes" and e.total
                  else f"{e.done} of {e.total}" if e.total else "")
        self.status_label.setText(f"{what} {e.detail}… {amount}".strip())

    def _show_batch(self, e: RunStarted) -> None:
        """The effective global batch: per-device batch × processes × accumulation (as the engine reports it)."""
        training = e.config.get("training", {}) if isinstance(e.config, dict) else {}
        per_device, accumulation = training.get("batch_size"), training.get("gradient_accumulation", 1)
        text = f"global batch {e.global_batch}"
        if isinstance(per_device, int) and per_device * e.world_size * accumulation == e.global_batch:
            text += f" = {per_device} × {e.world_size} process{'es' if e.world_size > 1 else ''} × {accumulation}"
        self.batch_label.setText(text)
        self.batch_label.setToolTip("Examples (or packed rows) per optimizer step: per-device batch × processes "
                                    "× gradient accumulation.")
        self.append_log(f"Global batch {e.global_batch} on {e.world_size} process{'es' if e.world_size > 1 else ''}.")

    def append_log(self, text: str) -> None:
        self.log.appendPlainText(text)


def _has_preference_metrics(step: Step) -> bool:
    """Whether a step carries a preference method's numbers (TRL's rewards/…), which build the reward plots."""
    return any(key.startswith("rewards/") for key in (getattr(step, "metrics", None) or {}))
