"""The window's controllers on their own, with no window: the one way a job starts (``JobRunner``), the open
model and its selection (``ModelController``), and run files (``RunFilesController``). Each is driven through its
methods and observed through its signals, as the window wires them."""

import threading
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QWidget

from workbench.core.config import RunConfig
from workbench.core.layers import resolve_selection
from workbench.gui import workers
from workbench.gui.config_store import ConfigStore
from workbench.gui.model_controller import ModelController
from workbench.gui.recents import Recents
from workbench.gui.run_files import RunFilesController


def _owner(qtbot) -> QWidget:
    """What the controllers hang from, deleted with the test (as the window is): no Qt object outlives it."""
    owner = QWidget()
    qtbot.addWidget(owner)
    return owner


def test_job_runner_counts_a_job_until_its_thread_ends_and_cancels_what_starts_while_closing(qtbot):
    owner = _owner(qtbot)
    runner = workers.JobRunner(owner)
    release = threading.Event()
    results = []
    worker = workers.FunctionWorker(lambda: release.wait(30) and "done", "A job")
    worker.result.connect(results.append)
    job = runner.start(worker)
    assert runner.count == 1 and runner.running == {job} and job.parent() is runner
    with qtbot.waitSignal(runner.idle, timeout=10_000):
        release.set()
    assert runner.count == 0 and results == ["done"]

    runner.accepting = False  # the owner is closing: a job a late slot starts is cancelled at once
    late = workers.FunctionWorker(lambda should_stop: should_stop(), "A late job", stoppable=True)
    late.result.connect(results.append)
    with qtbot.waitSignal(runner.idle, timeout=10_000):
        runner.start(late)
    assert results == ["done"], "nothing a cancelled job reports reaches a slot"


def test_job_runner_abandons_a_job_that_ignores_cancelling(qtbot):
    owner = _owner(qtbot)
    runner = workers.JobRunner(owner)
    release = threading.Event()
    runner.start(workers.FunctionWorker(lambda: release.wait(30), "A stubborn job"))
    runner.cancel_all()
    with qtbot.waitSignal(runner.idle, timeout=1000):
        runner.abandon_all()
    assert runner.count == 0
    release.set()


def test_model_controller_opens_a_model_and_owns_its_selection(qtbot, tiny_model_dir):
    owner = _owner(qtbot)
    store = ConfigStore(owner)
    store.update("lora", preset="attention-qv")
    runner = workers.JobRunner(owner)
    models = ModelController(store, runner.start, owner)
    shown, summaries = [], []
    models.presetShown.connect(shown.append)
    models.summaryReady.connect(lambda counts, *_: summaries.append(counts))
    with qtbot.waitSignal(models.opened, timeout=60_000) as opened:
        assert models.open(str(tiny_model_dir("llama")))
    tree_model = opened.args[0]
    assert tree_model is models.tree_model and models.overview is not None and models.device_kind == "cpu"
    expected = resolve_selection(models.overview.tree, store.config.lora, "causal-lm").targets
    assert sorted(tree_model.selection.ordered()) == sorted(expected) and shown == ["attention-qv"]
    qtbot.waitUntil(lambda: bool(summaries), timeout=5_000)
    assert summaries[-1].modules == len(expected)

    # A user's edit (one module less) goes to the configuration; the preset no longer matches.
    name = expected[0]
    tree_model.selection.set_selected([name], False)
    models.write_selection(None)
    assert name not in store.config.lora.target_modules and len(store.config.lora.target_modules) == len(expected) - 1
    assert store.config.lora.preset == "attention-qv" and shown[-1] is None
    assert models.selection_problem() is None
    qtbot.waitUntil(lambda: runner.count == 0, timeout=20_000)  # the Hub look-up (offline: nothing)
    models.clear()  # the tree model goes with the test, not at the interpreter's exit
    del tree_model, opened


def test_run_files_controller_titles_dirty_runs_and_opens_what_it_saved(qtbot, tmp_path):
    parent = _owner(qtbot)
    store = ConfigStore(parent)
    recents = Recents(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    files = RunFilesController(store, recents, lambda: False, parent, lambda: False)
    titles, wanted, cleared = [], [], []
    files.titleChanged.connect(titles.append)
    files.modelRequested.connect(wanted.append)
    files.cleared.connect(lambda: cleared.append(1))
    store.update("lora", r=4)
    assert titles[-1] == "untitled run • — LoRA Workbench" and files.needs_saving

    path = tmp_path / "mine.toml"
    assert files.save_to(path)
    assert titles[-1] == "mine.toml — LoRA Workbench" and not files.needs_saving
    assert recents.items("recent/runs") == [str(path)]
    assert RunConfig.from_toml(path).lora.r == 4

    files.new_run()
    assert cleared == [1] and store.config.lora.r == RunConfig().lora.r and store.path is None
    RunConfig.from_toml(path).copy_with(model={"source": "some/model"}).save(path)
    assert files.open_run(Path(path))
    assert store.config.lora.r == 4 and wanted == ["some/model"] and titles[-1] == "mine.toml — LoRA Workbench"
