"""The Runs tab's "Open in…" menu: TensorBoard started in a worker for a run with TensorBoard logs, answering on
localhost with the run's scalars; entries without a store are disabled; a second click reuses the viewer."""

import json
import types
import urllib.request

from workbench.core import trackers
from workbench.gui.widgets.tracker_viewers import TrackerViewers


def test_open_in_tensorboard_serves_the_runs_scalars(qtbot, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from PySide6.QtWidgets import QWidget

    run_dir = tmp_path / "runs" / "one"
    with SummaryWriter(log_dir=str(run_dir / trackers.TENSORBOARD_DIR)) as writer:
        for step, loss in enumerate([2.0, 1.5, 1.25], start=1):
            writer.add_scalar("train/loss", loss, step)
    parent = QWidget()
    qtbot.addWidget(parent)
    chosen = types.SimpleNamespace(path=run_dir)
    viewers = TrackerViewers(lambda: chosen, parent, open_browser=False)
    viewers.update(run_dir)
    assert viewers.button.isEnabled()
    assert viewers.actions["tensorboard"].isEnabled() and not viewers.actions["mlflow"].isEnabled()
    try:
        with qtbot.waitSignal(viewers.opened, timeout=90_000) as opened:
            viewers.actions["tensorboard"].trigger()
        kind, url = opened.args
        assert kind == "tensorboard" and url.startswith("http://127.0.0.1:")
        query = url + "data/plugin/scalars/scalars?run=.&tag=train/loss"
        with urllib.request.urlopen(query, timeout=30) as reply:
            values = [[step, value] for _, step, value in json.loads(reply.read())]
        assert values == [[1, 2.0], [2, 1.5], [3, 1.25]]
        with qtbot.waitSignal(viewers.opened, timeout=5_000) as again:
            viewers.actions["tensorboard"].trigger()
        assert again.args == [kind, url] and len(viewers.viewers) == 1, "the running viewer is reused"
    finally:
        process = next(iter(viewers.viewers.values())).process if viewers.viewers else None
        viewers.stop_all()
    assert process is None or process.poll() is not None
    viewers.update(None)
    assert not viewers.button.isEnabled()


def test_the_windows_viewer_jobs_are_counted_by_the_window(window, qtbot, tmp_path, monkeypatch):
    """Starting a viewer is one of the window's jobs, so a closing window waits for it like any other."""
    import threading

    release = threading.Event()
    started = types.SimpleNamespace(kind="tensorboard", url="http://127.0.0.1:1/", stop=lambda: None,
                                    process=types.SimpleNamespace(poll=lambda: 0))

    def slow_start(kind, run_dir):  # stands in for the TensorBoard process start-up, which takes seconds
        release.wait(30)
        return started

    monkeypatch.setattr(trackers, "start_viewer", slow_start)
    viewers = window.runs.viewers
    viewers.open_browser = False
    chosen = types.SimpleNamespace(path=tmp_path / "runs" / "one")
    viewers._selected = lambda: chosen
    before = window._jobs
    with qtbot.waitSignal(viewers.opened, timeout=30_000):
        viewers.open("tensorboard")
        assert window._jobs == before + 1
        release.set()
    qtbot.waitUntil(lambda: window._jobs == before, timeout=30_000)
