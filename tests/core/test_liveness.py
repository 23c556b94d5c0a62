"""Is a run alive? Heartbeats judged on the file system's clock (immune to the writer's and the reader's
clock skew), and resume refused unless the run is positively dead — with real writer processes, one of
them pretending to be another host whose clock is an hour off.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from workbench.core.runs import status as runs_status
from workbench.core.errors import TrainingError
from workbench.core.runs import RunFolder, RunStatus, create_run, heartbeat_age, prepare_resume, run_status, summarize_run

from test_runs import make_checkpoint, make_config, record_then_crash, rewrite_status, started, step
from waiting import wait_until

HOUR = 3600.0


def probes(folder: RunFolder) -> list[str]:
    return [p.name for p in folder.path.iterdir() if p.name.startswith(".tmp-")]


# ------------------------------------------------------------------------------------------ staleness


def test_a_live_run_whose_writer_clock_lags_an_hour_is_still_running(tmp_path):
    """The writer's updated_at says an hour ago, but the file system saw status.json written just now."""
    folder = create_run(make_config(tmp_path))
    record_then_crash(folder, [started(), step(1)])
    rewrite_status(folder, hostname="gpu-node-7", updated_at=time.time() - HOUR, written_at=time.time())
    assert run_status(folder) is RunStatus.RUNNING
    detail = summarize_run(folder).status_detail
    assert "gpu-node-7" in detail and "file system's clock" in detail
    assert heartbeat_age(folder)[0] < 60
    assert probes(folder) == [], "the clock probe is removed at once"


def test_a_dead_run_whose_writer_clock_runs_an_hour_ahead_is_crashed(tmp_path):
    """updated_at lies in the future; the file system last saw status.json written an hour ago."""
    folder = create_run(make_config(tmp_path))
    record_then_crash(folder, [started(), step(1)])
    rewrite_status(folder, hostname="gpu-node-7", updated_at=time.time() + HOUR, written_at=time.time() - HOUR)
    assert run_status(folder) is RunStatus.CRASHED
    assert "no heartbeat from gpu-node-7 for 36" in summarize_run(folder).status_detail
    assert run_status(folder, stale_after=2 * HOUR) is RunStatus.RUNNING


def test_without_write_access_the_writer_clock_is_the_fallback_and_the_detail_says_so(tmp_path, monkeypatch):
    folder = create_run(make_config(tmp_path))
    record_then_crash(folder, [started(), step(1)])
    rewrite_status(folder, hostname="gpu-node-7", updated_at=time.time() - HOUR, written_at=time.time())

    def read_only(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(runs_status, "_file_system_now", read_only)
    assert run_status(folder) is RunStatus.CRASHED
    assert "gpu-node-7's clock" in summarize_run(folder).status_detail


# A writer on "another host": its hostname is gpu-node-7 and its wall clock runs an hour behind. It records
# through a real RunRecorder with a fast heartbeat, says so, then lives until the test kills it (SIGKILL): its
# heartbeat thread beats meanwhile. The sleep is not a wait for anything; its ten minutes only bound the life of a
# writer orphaned by a test that died before killing it (signal.pause() would leave such a writer forever).
SKEWED_WRITER = """
    import socket, sys, time
    socket.gethostname = lambda: "gpu-node-7"
    real_time = time.time
    time.time = lambda: real_time() - 3600.0
    from workbench.core.runs import RunRecorder
    from workbench.core.events import Step
    recorder = RunRecorder(sys.argv[1], heartbeat_interval=0.05)
    recorder.emit(Step(step=1, total_steps=10, epoch=0.1, loss=1.0, learning_rate=1e-3))
    print("recording", flush=True)
    time.sleep(600)  # stands for a live process until killed
"""

LOCAL_WRITER = """
    import sys, time
    from workbench.core.runs import RunRecorder
    from workbench.core.events import Step
    recorder = RunRecorder(sys.argv[1], heartbeat_interval=0.05)
    recorder.emit(Step(step=5, total_steps=10, epoch=0.5, loss=1.0, learning_rate=1e-3))
    print("recording", flush=True)
    time.sleep(600)  # stands for a live process until killed
"""


def start_writer(code: str, folder: RunFolder) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(folder.path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "recording\n"
    return proc


def wait_for_beats_spanning(folder: RunFolder, seconds: float) -> None:
    """Until the writer has kept rewriting status.json for longer than ``seconds`` (by the file system's
    clock): a run judged by its heartbeat must still count as alive then."""
    first = folder.status_file.stat().st_mtime
    wait_until(lambda: folder.status_file.stat().st_mtime - first > seconds, "the writer to keep beating")


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    proc.stdout.close()


@pytest.mark.subprocess
def test_a_skewed_writer_on_another_host_is_running_while_it_beats_and_crashed_once_it_stops(tmp_path):
    folder = create_run(make_config(tmp_path))
    writer = start_writer(SKEWED_WRITER, folder)
    try:
        status = json.loads(folder.status_file.read_text())
        assert status["hostname"] == "gpu-node-7" and status["updated_at"] < time.time() - HOUR + 60
        assert run_status(folder, stale_after=1.0) is RunStatus.RUNNING  # the old rule said crashed here
        wait_for_beats_spanning(folder, 1.5)  # longer than stale_after: a live writer has beaten many times meanwhile
        assert run_status(folder, stale_after=1.0) is RunStatus.RUNNING
    finally:
        stop(writer)
    wait_until(lambda: run_status(folder, stale_after=1.0) is RunStatus.CRASHED, "the heartbeat to go stale")
    assert "no heartbeat from gpu-node-7" in summarize_run(folder, stale_after=1.0).status_detail


# ------------------------------------------------------------------------------------------ resume refusals


@pytest.mark.subprocess
def test_resume_refuses_a_run_whose_process_on_this_machine_lives_and_names_it(tmp_path):
    folder = create_run(make_config(tmp_path))
    make_checkpoint(folder, 5)
    writer = start_writer(LOCAL_WRITER, folder)
    try:
        with pytest.raises(TrainingError) as refused:
            prepare_resume(folder)
        message, hint = refused.value.message, refused.value.hint
        assert f"process {writer.pid} on this machine" in message and "two processes" in message
        assert f"workbench control {folder.path} stop" in hint and f"kill {writer.pid}" in hint
        assert (folder.checkpoints_dir / "checkpoint-5").is_dir() and folder.metrics_file.read_text()
    finally:
        stop(writer)
    point = prepare_resume(folder)  # positively dead now: its process is gone
    assert point.step == 5


@pytest.mark.subprocess
def test_resume_refuses_a_live_run_on_another_host_despite_its_lagging_clock(tmp_path, monkeypatch):
    """The writer's clock is an hour behind: judged by its updated_at the run looked dead and was resumed
    under a live process. Judged on the file system's clock it is refused until its heartbeat is stale."""
    monkeypatch.setattr(runs_status, "STALE_AFTER_S", 1.0)
    folder = create_run(make_config(tmp_path))
    make_checkpoint(folder, 5)
    writer = start_writer(SKEWED_WRITER, folder)
    try:
        wait_for_beats_spanning(folder, 1.5)  # longer than STALE_AFTER_S, beating all along
        with pytest.raises(TrainingError) as refused:
            prepare_resume(folder)
        message, hint = refused.value.message, refused.value.hint
        assert f"still running: process {writer.pid} on gpu-node-7, heartbeat" in message
        assert "workbench control" in hint and "gpu-node-7 is down" in hint and "1 s old" in hint
    finally:
        stop(writer)
    wait_until(lambda: run_status(folder, stale_after=1.0) is RunStatus.CRASHED, "the heartbeat to go stale")
    assert prepare_resume(folder).step == 5


def test_resume_refuses_a_run_whose_process_cannot_be_inspected(tmp_path, monkeypatch):
    """A process that exists but belongs to another user may be the writer: not positively dead."""
    import psutil

    folder = create_run(make_config(tmp_path))
    make_checkpoint(folder, 5)
    record_then_crash(folder, [started(), step(5)])

    class Foreign:
        def __init__(self, pid):
            raise psutil.AccessDenied(pid)

    monkeypatch.setattr(psutil, "Process", Foreign)
    with pytest.raises(TrainingError, match="still running"):
        prepare_resume(folder)
