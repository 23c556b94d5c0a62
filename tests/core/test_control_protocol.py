"""One ``Control`` protocol: the in-process ``RunControl`` and the run folder's ``FolderControl`` behave the same
for every request the window makes and every state the engine reads."""

import threading

import pytest

from workbench.core.control import Control, RunControl
from workbench.core.runs import ControlFileWatcher, FolderControl, RunFolder


def _running_folder(path):
    """A run folder whose recorder is there (status.json written), so a folder control sends at once."""
    path.mkdir()
    RunFolder(path).status_file.write_text("{}")
    return path


CONTROLS = {
    "in-process": lambda tmp_path: RunControl(),
    "run folder": lambda tmp_path: FolderControl(_running_folder(tmp_path / "run")),
}


@pytest.fixture(params=list(CONTROLS))
def control(request, tmp_path) -> Control:
    return CONTROLS[request.param](tmp_path)


def test_it_is_a_control(control):
    assert isinstance(control, Control)


def test_a_fresh_control_asks_for_nothing(control):
    assert not control.stop_requested
    assert not control.pause_requested
    assert not control.take_checkpoint_request()
    assert control.wait_while_paused(timeout=0)


def test_pause_then_resume(control):
    control.request_pause()
    assert control.pause_requested
    assert not control.wait_while_paused(timeout=0)  # still paused when the timeout ran out
    control.request_resume()
    assert not control.pause_requested
    assert control.wait_while_paused(timeout=0)


def test_checkpoint_requests_are_taken_once(control):
    control.request_checkpoint()
    control.request_checkpoint()  # before the engine looked: one checkpoint for both
    assert control.take_checkpoint_request()
    assert not control.take_checkpoint_request()
    control.request_checkpoint()
    assert control.take_checkpoint_request()
    assert not control.take_checkpoint_request()


def test_a_stop_wins_over_a_pause(control):
    control.request_pause()
    control.request_stop()
    assert control.stop_requested
    assert not control.pause_requested
    assert control.wait_while_paused(timeout=0)
    control.request_pause()  # after a stop a pause changes nothing
    assert control.stop_requested and not control.pause_requested


def test_a_paused_job_waits_until_another_thread_resumes_it(control):
    control.request_pause()
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(control.wait_while_paused()))
    waiter.start()
    control.request_resume()
    waiter.join(timeout=60)
    assert woke == [True]


def test_a_folder_control_holds_requests_until_the_recorder_is_there(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    control = FolderControl(run_dir)
    control.request_pause()
    assert control.pause_requested  # asked for, though not sent yet
    assert not RunFolder(run_dir).control_file.exists()
    engine = RunControl()
    watcher = ControlFileWatcher(run_dir, engine)  # the engine starts: it resets control.json
    RunFolder(run_dir).status_file.write_text("{}")  # and its recorder reports
    control.flush()
    assert watcher.poll() == ["pause"]
    assert engine.pause_requested


def test_what_a_folder_control_asks_reaches_the_engine_watching_the_folder(tmp_path):
    run_dir = _running_folder(tmp_path / "run")
    engine = RunControl()
    watcher = ControlFileWatcher(run_dir, engine)
    window = FolderControl(run_dir)
    window.request_checkpoint()
    window.request_pause()
    assert watcher.poll() == ["pause", "checkpoint"]
    assert engine.pause_requested and engine.take_checkpoint_request()
    window.request_stop()
    assert watcher.poll() == ["stop"]
    assert engine.stop_requested
