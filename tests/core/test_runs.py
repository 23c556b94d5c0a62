"""Run folders: creation, status (including crashed processes), listing, metrics reading and tailing,
checkpoints, resume, cross-process control, deletion and `workbench runs`.

Crashes and other writers are real processes: a child records events through a RunRecorder and dies
with os._exit (no outcome reported, like SIGKILL), or appends to metrics.jsonl while the test reads it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from safetensors.numpy import save_file

from workbench import cli
from workbench.core.config import RunConfig
from workbench.core.control import RunControl
from workbench.core.errors import OutputError, TrainingError
from workbench.core.events import (
    CheckpointSaved,
    Evaluation,
    Failed,
    Finished,
    JsonlSink,
    Message,
    RunStarted,
    Step,
)
from workbench.core.runs import (
    ControlFileWatcher,
    MetricsTailer,
    RunFolder,
    RunRecorder,
    RunStatus,
    create_run,
    delete_run,
    latest_checkpoint,
    list_checkpoints,
    list_runs,
    load_config,
    model_short_name,
    prepare_resume,
    read_events,
    run_status,
    send_control,
    summarize_run,
)
from waiting import DEADLINE_S, wait_until



# ------------------------------------------------------------------------------------------ helpers


def make_config(root: Path, **output) -> RunConfig:
    return RunConfig.from_dict(
        {
            "model": {"source": "models/tiny-llama"},
            "lora": {"r": 8, "rank_pattern": {"model.layers.0.self_attn.q_proj": 4}},
            "data": {"train_files": ["data/train.jsonl", "data/more.jsonl"]},
            "training": {"max_steps": 10, "learning_rate": 1e-3, "save_steps": 5},
            "output": {"runs_root": str(root), **output},
        }
    )


def step(n: int, loss: float | None = None, total: int = 10) -> Step:
    return Step(step=n, total_steps=total, epoch=n / total, loss=3.0 - 0.1 * n if loss is None else loss,
                learning_rate=1e-3)


def started(total: int = 10, resumed_from: int = 0) -> RunStarted:
    return RunStarted(run_dir="", config={}, device="cpu", device_name="cpu", precision="fp32",
                      trainable_params=10, total_params=100, total_steps=total, resumed_from_step=resumed_from)


def python(code: str, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], **popen)


CRASHING_WRITER = """
    import json, os, sys
    from workbench.core.events import event_from_dict
    from workbench.core.runs import RunRecorder

    recorder = RunRecorder(sys.argv[1])
    for line in sys.stdin.read().splitlines():
        recorder.emit(event_from_dict(json.loads(line)))
    os._exit(1)  # die like a killed process: no outcome reported, status.json still says running
"""


def record_then_crash(folder: RunFolder, events: list) -> int:
    """Record ``events`` in a child process that then dies; returns the dead process's pid."""
    proc = python(CRASHING_WRITER, str(folder.path), stdin=subprocess.PIPE)
    proc.communicate("".join(e.to_json() + "\n" for e in events).encode(), timeout=DEADLINE_S)
    assert proc.returncode == 1
    return proc.pid


def record(folder: RunFolder, *events) -> None:
    with RunRecorder(folder) as recorder:
        for event in events:
            recorder.emit(event)


def rewrite_status(folder: RunFolder, written_at: float | None = None, **changes) -> None:
    """Edit status.json as another host (or a crash at a precise moment) would have left it.

    ``written_at`` is when the file system saw the write (the file's modification time, which is what
    heartbeat ages are measured by); by default the writer's ``updated_at`` when that changes, as when
    the writer's clock agrees with the file system's, and now otherwise."""
    data = json.loads(folder.status_file.read_text())
    data.update(changes)
    folder.status_file.write_text(json.dumps(data))
    when = written_at if written_at is not None else changes.get("updated_at")
    if when is not None:
        os.utime(folder.status_file, (when, when))


def make_checkpoint(folder: RunFolder, step_: int, name: str | None = None) -> Path:
    """A checkpoint folder with the files the HF Trainer writes for a PEFT model (tiny torch.save files stand in
    for the optimizer, scheduler and RNG states: resume loads them with the safe loader before it goes on)."""
    path = folder.checkpoints_dir / (name or f"checkpoint-{step_}")
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    save_file({"base_model.model.q.lora_A.weight": np.ones((8, 16), dtype=np.float32)},
              str(path / "adapter_model.safetensors"))
    for state in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"state": {0: torch.zeros(64)}, "name": state}, path / state)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step_, "log_history": []}))
    return path


def cut_short(path: Path) -> None:
    """Keep the first half of a file, as a process killed while writing it would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------------ creation


def test_create_run_names_the_folder_after_the_model_and_time_and_stores_the_config(tmp_path):
    config = make_config(tmp_path / "runs")
    folder = create_run(config)
    assert folder.path.parent == tmp_path / "runs"
    assert re.fullmatch(r"tiny-llama-\d{8}-\d{6}", folder.name)
    assert sorted(p.name for p in folder.path.iterdir()) == ["run.toml"]
    assert load_config(folder) == config
    assert load_config(folder).lora.rank_pattern == {"model.layers.0.self_attn.q_proj": 4}


@pytest.mark.parametrize(
    "source, name",
    [
        ("HuggingFaceTB/SmolLM2-135M", "SmolLM2-135M"),
        ("/models/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1"),
        ("./models/tiny/", "tiny"),
        ("C:\\models\\my model", "my-model"),
        ("", "run"),
    ],
)
def test_model_short_name(source, name):
    assert model_short_name(source) == name


def test_create_run_adds_a_suffix_when_the_name_is_taken(tmp_path):
    config = make_config(tmp_path / "runs", name="exp")
    names = [create_run(config).name for _ in range(3)]
    assert names == ["exp", "exp-2", "exp-3"]
    assert all((tmp_path / "runs" / n / "run.toml").is_file() for n in names)


def test_create_run_that_cannot_write_its_run_file_leaves_no_folder_behind(tmp_path, monkeypatch):
    """A full disk when run.toml is written (reported by fsync at the latest): the claimed run folder and the
    runs folder made for it are removed again; a folder that was there before stays."""
    import errno

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputError, match="cannot create the run folder: No space left on device") as err:
        create_run(make_config(tmp_path / "new" / "runs"))
    assert "choose a folder you can write to" in err.value.hint
    assert not (tmp_path / "new").exists()

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "earlier-run").mkdir()
    with pytest.raises(OutputError):
        create_run(make_config(tmp_path / "runs", name="next"))
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["earlier-run"]

    (tmp_path / "chosen").mkdir()
    with pytest.raises(OutputError):
        create_run(make_config(tmp_path, run_dir=str(tmp_path / "chosen")))
    assert (tmp_path / "chosen").is_dir() and not any((tmp_path / "chosen").iterdir()), "the user's empty folder stays"


def test_the_check_before_loading_refuses_what_create_run_would_and_makes_nothing(tmp_path, monkeypatch):
    """A run checks its folder before it loads anything (training/engine.py): with create_run's own errors, and
    without creating a folder, even where it passes."""
    from workbench.core.runs import check_run_dir_claimable

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine\n")
    config = make_config(tmp_path / "runs", run_dir=str(tmp_path / "full"))
    with pytest.raises(OutputError) as early:
        check_run_dir_claimable(config)
    with pytest.raises(OutputError) as late:
        create_run(config)
    assert (early.value.message, early.value.hint) == (late.value.message, late.value.hint)
    assert early.value.message == f"the run folder {tmp_path / 'full'} is not empty"

    # Folders this user may not write into. Permission bits do not bind root (CI often runs as root): the
    # kernel's answer to access(2) is what is replaced.
    locked = tmp_path / "locked"
    (locked / "runs").mkdir(parents=True)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not str(path).startswith(str(locked))
                        and real_access(path, mode, **kw))
    for root, first in ((locked / "new", locked / "new"), (locked / "runs", locked / "runs" / "exp")):
        with pytest.raises(OutputError) as early:
            check_run_dir_claimable(make_config(root, name="exp"))
        assert early.value.message == f"cannot create the run folder: Permission denied ({first})", first
        assert early.value.hint == "choose a folder you can write to (output.runs_root or output.run_dir)"
    assert [p.name for p in locked.iterdir()] == ["runs"] and not any((locked / "runs").iterdir())

    check_run_dir_claimable(make_config(tmp_path / "new" / "runs"))  # a writable place passes
    check_run_dir_claimable(make_config(tmp_path / "runs", run_dir=str(tmp_path / "empty" / "run")))
    assert not (tmp_path / "new").exists() and not (tmp_path / "empty").exists(), "the check creates nothing"


def test_create_run_uses_an_explicit_run_dir_and_never_overwrites_one(tmp_path):
    config = make_config(tmp_path / "runs", run_dir=str(tmp_path / "exact"))
    folder = create_run(config)
    assert folder.path == tmp_path / "exact"
    before = folder.run_file.read_bytes()
    with pytest.raises(OutputError, match="not empty"):
        create_run(config.copy_with(training={"max_steps": 99}))
    assert folder.run_file.read_bytes() == before
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ status


@pytest.mark.parametrize(
    "outcome, status",
    [
        (Finished(status="finished", adapter_path="adapter", step=4), RunStatus.FINISHED),
        (Finished(status="stopped", adapter_path="adapter", step=4), RunStatus.STOPPED),
        (Failed(reason="loss is NaN at step 4", step=4), RunStatus.FAILED),
    ],
)
def test_reported_outcomes(tmp_path, outcome, status):
    folder = create_run(make_config(tmp_path))
    record(folder, started(), step(1), outcome, Message(text="bye"))
    assert run_status(folder) is status
    summary = summarize_run(folder)
    assert summary.status is status
    assert summary.status_detail == (outcome.reason if status is RunStatus.FAILED else "")


def test_running_while_the_recorder_is_open_in_this_process(tmp_path):
    folder = create_run(make_config(tmp_path))
    assert run_status(folder) is RunStatus.NEW
    with RunRecorder(folder) as recorder:
        recorder.emit(started())
        assert run_status(folder) is RunStatus.RUNNING
        assert str(os.getpid()) in summarize_run(folder).status_detail
        with pytest.raises(OutputError, match="already running"):
            RunRecorder(folder)
        recorder.emit(Finished(status="finished", adapter_path="adapter", step=10))
    assert run_status(folder) is RunStatus.FINISHED


def test_a_block_that_raises_or_ends_without_an_outcome_is_recorded_as_failed(tmp_path):
    raised = create_run(make_config(tmp_path, name="raised"))
    with pytest.raises(RuntimeError):
        with RunRecorder(raised) as recorder:
            recorder.emit(step(1))
            raise RuntimeError("CUDA error: device-side assert")
    failure = read_events(raised)[-1]
    assert isinstance(failure, Failed) and "device-side assert" in failure.reason and failure.step == 1
    assert "RuntimeError" in failure.traceback
    assert run_status(raised) is RunStatus.FAILED

    silent = create_run(make_config(tmp_path, name="silent"))
    record(silent, step(1))
    assert run_status(silent) is RunStatus.FAILED
    assert "without reporting" in summarize_run(silent).status_detail


@pytest.mark.subprocess
def test_a_run_whose_process_died_is_crashed_not_running(tmp_path):
    folder = create_run(make_config(tmp_path))
    pid = record_then_crash(folder, [started(), step(1), step(2)])
    assert json.loads(folder.status_file.read_text())["state"] == "running"  # what the dead process left
    summary = summarize_run(folder)
    assert summary.status is RunStatus.CRASHED
    assert f"process {pid} ended" in summary.status_detail
    assert (summary.step, summary.last_loss) == (2, step(2).loss)  # read from the metrics tail


def test_a_reused_pid_does_not_keep_a_dead_run_running(tmp_path):
    folder = create_run(make_config(tmp_path))
    with RunRecorder(folder):
        assert run_status(folder) is RunStatus.RUNNING
        # As if the run's process had died before this process was created and its pid had been reused.
        rewrite_status(folder, session_started_at=psutil.Process().create_time() - 3600)
        assert run_status(folder) is RunStatus.CRASHED


@pytest.mark.subprocess
def test_a_run_on_another_host_goes_stale_without_heartbeat(tmp_path):
    folder = create_run(make_config(tmp_path))
    record_then_crash(folder, [started(), step(1)])
    rewrite_status(folder, hostname="gpu-node-7", updated_at=time.time() - 10)
    assert run_status(folder) is RunStatus.RUNNING
    assert "gpu-node-7" in summarize_run(folder).status_detail
    rewrite_status(folder, updated_at=time.time() - 3600)
    assert run_status(folder) is RunStatus.CRASHED
    assert "no heartbeat from gpu-node-7" in summarize_run(folder).status_detail
    assert run_status(folder, stale_after=7200) is RunStatus.RUNNING


@pytest.mark.subprocess
def test_an_outcome_in_metrics_wins_over_a_running_record(tmp_path):
    """The engine wrote Finished to metrics.jsonl and died before status.json was updated."""
    folder = create_run(make_config(tmp_path))
    record_then_crash(folder, [started(), step(1), Finished(status="stopped", adapter_path="adapter", step=1),
                               Message(text="adapter saved")])
    assert json.loads(folder.status_file.read_text())["state"] == "stopped"  # the recorder wrote it at once
    rewrite_status(folder, state="running")
    assert run_status(folder) is RunStatus.STOPPED


def test_the_heartbeat_thread_keeps_status_fresh_without_events(tmp_path):
    folder = create_run(make_config(tmp_path))
    with RunRecorder(folder, heartbeat_interval=0.05):
        first = json.loads(folder.status_file.read_text())["updated_at"]
        wait_until(lambda: json.loads(folder.status_file.read_text())["updated_at"] > first, "a heartbeat")
        status = json.loads(folder.status_file.read_text())
        assert (status["pid"], status["hostname"]) == (os.getpid(), socket.gethostname())


# ------------------------------------------------------------------------------------------ listing


@pytest.mark.subprocess
def test_list_runs_summarises_each_run_newest_first(tmp_path):
    root = tmp_path / "runs"
    create_run(make_config(root, name="new"))  # never started: listed as new
    done = create_run(make_config(root, name="done"))
    record(done, started(total=4), step(1, 2.0, 4), Evaluation(step=2, eval_loss=2.5), step(2, 1.8, 4),
           Evaluation(step=3, eval_loss=1.5), step(3, 1.6, 4), Evaluation(step=4, eval_loss=float("nan")),
           step(4, 1.4, 4), Finished(status="finished", adapter_path="adapter", step=4))
    stopped = create_run(make_config(root, name="stopped"))
    record(stopped, started(), step(1), Finished(status="stopped", adapter_path="adapter", step=1))
    crashed = create_run(make_config(root, name="crashed"))
    record_then_crash(crashed, [started(), step(1), step(2)])
    rewrite_status(crashed, hostname="elsewhere", updated_at=0.0, step=1)  # heartbeat lagged behind step 2
    # Not runs: a deletion in progress, a folder without run.toml, a file.
    (root / ".tmp-old.deleting").mkdir()
    (root / ".tmp-old.deleting" / "run.toml").write_text("")
    (root / "notes").mkdir()
    (root / "README.txt").write_text("my runs")

    summaries = list_runs(root)
    assert [s.name for s in summaries] == ["crashed", "stopped", "done", "new"]
    by_name = {s.name: s for s in summaries}
    assert {n: s.status for n, s in by_name.items()} == {
        "new": RunStatus.NEW, "done": RunStatus.FINISHED, "stopped": RunStatus.STOPPED, "crashed": RunStatus.CRASHED}
    d = by_name["done"]
    assert (d.step, d.total_steps, d.last_loss, d.best_eval_loss) == (4, 4, 1.4, 1.5)
    assert d.model_source == "models/tiny-llama"
    assert d.data_files == ("data/train.jsonl", "data/more.jsonl")
    assert d.started_at is not None and d.duration_s is not None and d.duration_s >= 0
    assert d.path == done.path
    assert by_name["crashed"].step == 2
    n = by_name["new"]
    assert (n.step, n.total_steps, n.last_loss, n.started_at, n.duration_s) == (0, None, None, None, None)
    assert json.loads(json.dumps(d.to_dict()))["status"] == "finished"
    assert list_runs(tmp_path / "missing") == []


# ------------------------------------------------------------------------------------------ metrics


def test_read_events_tolerates_a_torn_last_line_and_unknown_kinds(tmp_path):
    folder = create_run(make_config(tmp_path))
    with JsonlSink(folder.metrics_file) as sink:
        sink.emit(step(1))
        sink.emit(step(2))
    with open(folder.metrics_file, "ab") as fh:
        fh.write(b'{"kind": "telemetry_from_a_newer_version", "step": 2}\n')
        fh.write(b"not json at all\n")
        fh.write(b'\xff\xfe binary \n')
        fh.write(step(3).to_json().encode() + b"\n")
        fh.write(step(4).to_json().encode()[:25])  # the writer was killed mid-line
    events = read_events(folder)
    assert [(type(e), e.step) for e in events] == [(Step, 1), (Step, 2), (Step, 3)]
    assert read_events(tmp_path / "nowhere") == []


TWO_PHASE_WRITER = """
    import sys
    path = sys.argv[1]
    lines = [sys.stdin.readline().rstrip("\\n").encode() for _ in range(3)]
    with open(path, "ab") as fh:
        sys.stdin.readline()  # go
        fh.write(lines[0] + b"\\n" + lines[1][:10]); fh.flush()
        print("half", flush=True)
        sys.stdin.readline()  # go
        fh.write(lines[1][10:] + b"\\n" + lines[2] + b"\\n"); fh.flush()
        print("done", flush=True)
"""


@pytest.mark.subprocess
def test_tailer_leaves_a_partial_line_written_by_another_process_for_the_next_poll(tmp_path):
    folder = create_run(make_config(tmp_path))
    tailer = MetricsTailer(folder)
    assert tailer.poll() == []  # the file does not exist yet
    writer = python(TWO_PHASE_WRITER, str(folder.metrics_file), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    text=True)
    try:
        writer.stdin.write("".join(step(n).to_json() + "\n" for n in (1, 2, 3)) + "go\n")
        writer.stdin.flush()
        assert writer.stdout.readline() == "half\n"
        assert [e.step for e in tailer.poll()] == [1]
        assert tailer.poll() == []
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline() == "done\n"
        assert [e.step for e in tailer.poll()] == [2, 3]
        assert tailer.poll() == [] and not tailer.restarted
    finally:
        writer.communicate(timeout=DEADLINE_S)


FREE_RUNNING_WRITER = """
    import sys
    from workbench.core.events import JsonlSink, Sample, Step
    with JsonlSink(sys.argv[1]) as sink:
        for n in range(1, 301):
            sink.emit(Step(step=n, total_steps=300, epoch=0.0, loss=1.0, learning_rate=1e-3))
            if n % 50 == 0:  # long lines too, so that reads often end mid-line
                sink.emit(Sample(step=n, prompt="p", completion="x" * 20_000))
"""


@pytest.mark.subprocess
def test_tailer_follows_a_writer_process_without_losing_or_repeating_events(tmp_path):
    folder = create_run(make_config(tmp_path))
    tailer = MetricsTailer(folder)
    writer = python(FREE_RUNNING_WRITER, str(folder.metrics_file))
    events = []
    deadline = time.monotonic() + DEADLINE_S
    while writer.poll() is None:
        assert time.monotonic() < deadline, "the writer did not finish"
        events += tailer.poll()
        try:
            writer.wait(timeout=0.005)
        except subprocess.TimeoutExpired:
            pass
    assert writer.returncode == 0
    events += tailer.poll()
    assert [e.step for e in events if isinstance(e, Step)] == list(range(1, 301))
    assert len(events) == 306


# ------------------------------------------------------------------------------------------ checkpoints


def test_the_newest_complete_checkpoint_is_picked_and_incomplete_ones_say_why(tmp_path):
    folder = create_run(make_config(tmp_path))
    for n in (5, 10, 20, 30, 40, 50, 60, 70):
        make_checkpoint(folder, n)
    (folder.checkpoints_dir / "checkpoint-30" / "trainer_state.json").unlink()  # still being written
    cut_short(folder.checkpoints_dir / "checkpoint-40" / "adapter_model.safetensors")
    cut_short(folder.checkpoints_dir / "checkpoint-50" / "trainer_state.json")
    cut_short(folder.checkpoints_dir / "checkpoint-60" / "optimizer.pt")
    (folder.checkpoints_dir / "checkpoint-70" / "trainer_state.json").write_text('{"global_step": 69}')
    make_checkpoint(folder, 80, name=".tmp-checkpoint-80.partial")  # an unfinished atomic write

    checkpoints = list_checkpoints(folder)
    assert [(c.step, c.complete) for c in checkpoints] == [
        (5, True), (10, True), (20, True), (30, False), (40, False), (50, False), (60, False), (70, False)]
    problems = {c.step: c.problem for c in checkpoints}
    assert "trainer_state.json" in problems[30] and "trainer_state.json" in problems[50]
    assert "adapter_model.safetensors" in problems[40]
    assert "optimizer.pt" in problems[60]
    assert "step 70" in problems[70]
    assert latest_checkpoint(folder).path == folder.checkpoints_dir / "checkpoint-20"
    assert latest_checkpoint(tmp_path / "no-run") is None


# ------------------------------------------------------------------------------------------ resume


@pytest.mark.subprocess
def test_resume_continues_metrics_without_repeating_or_skipping_a_step(tmp_path):
    folder = create_run(make_config(tmp_path))
    make_checkpoint(folder, 5)
    record_then_crash(folder, [
        started(), step(1), step(2), step(3), step(4), Evaluation(step=4, eval_loss=2.0), step(5),
        CheckpointSaved(step=5, path="checkpoints/checkpoint-5"), step(6), Evaluation(step=6, eval_loss=1.0),
        step(7)])
    make_checkpoint(folder, 7)
    (folder.checkpoints_dir / "checkpoint-7" / "trainer_state.json").unlink()  # killed while saving it
    (folder.checkpoints_dir / ".tmp-checkpoint-7.partial").mkdir()
    with open(folder.metrics_file, "ab") as fh:
        fh.write(step(8).to_json().encode()[:30])  # torn line
    watcher = MetricsTailer(folder)
    assert [e.step for e in watcher.poll() if isinstance(e, Step)] == [1, 2, 3, 4, 5, 6, 7]
    assert run_status(folder) is RunStatus.CRASHED

    point = prepare_resume(folder)
    assert point.step == 5 and point.checkpoint.path == folder.checkpoints_dir / "checkpoint-5"
    assert point.config == load_config(folder)
    assert [p.name for p in point.discarded] == [".tmp-checkpoint-7.partial", "checkpoint-7"]
    assert sorted(p.name for p in folder.checkpoints_dir.iterdir()) == ["checkpoint-5"]
    assert point.dropped_events == 4  # steps 6 and 7, the evaluation at 6, the torn line
    assert "checkpoint-5" in point.describe() and "checkpoint-7" in point.describe()
    kept = read_events(folder)
    assert [e.step for e in kept if isinstance(e, Step)] == [1, 2, 3, 4, 5]
    assert isinstance(kept[-1], CheckpointSaved)
    summary = summarize_run(folder)
    assert (summary.step, summary.best_eval_loss) == (5, 2.0)
    # A live viewer notices the cut and gets the kept history again.
    assert [e.step for e in watcher.poll() if isinstance(e, Step)] == [1, 2, 3, 4, 5] and watcher.restarted

    # The engine continues from the checkpoint in the same folder.
    record(folder, started(resumed_from=5), *(step(n) for n in range(6, 11)),
           Finished(status="finished", adapter_path="adapter", step=10))
    assert [e.step for e in read_events(folder) if isinstance(e, Step)] == list(range(1, 11))
    assert [e.step for e in watcher.poll() if isinstance(e, Step)] == [6, 7, 8, 9, 10] and not watcher.restarted
    summary = summarize_run(folder)
    assert (summary.status, summary.step, summary.best_eval_loss) == (RunStatus.FINISHED, 10, 2.0)


def test_resume_refuses_runs_it_cannot_continue(tmp_path):
    new = create_run(make_config(tmp_path, name="new"))
    with pytest.raises(TrainingError, match="never started"):
        prepare_resume(new)
    finished = create_run(make_config(tmp_path, name="finished"))
    make_checkpoint(finished, 5)
    record(finished, step(5), Finished(status="finished", adapter_path="adapter", step=5))
    with pytest.raises(TrainingError, match="already finished"):
        prepare_resume(finished)
    no_checkpoint = create_run(make_config(tmp_path, name="no-checkpoint"))
    record(no_checkpoint, step(1), Finished(status="stopped", adapter_path="adapter", step=1))
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        prepare_resume(no_checkpoint)
    running = create_run(make_config(tmp_path, name="running"))
    make_checkpoint(running, 5)
    with RunRecorder(running):
        with pytest.raises(TrainingError, match="still running"):
            prepare_resume(running)
    assert (running.checkpoints_dir / "checkpoint-5").is_dir()


def crashed_run_with_checkpoint(tmp_path: Path, name: str = "crashed") -> RunFolder:
    folder = create_run(make_config(tmp_path, name=name))
    make_checkpoint(folder, 5)
    record_then_crash(folder, [started(), step(5), step(6)])
    return folder


@pytest.mark.subprocess
def test_a_second_resume_is_refused_while_the_first_holds_the_resume_lock(tmp_path):
    folder = crashed_run_with_checkpoint(tmp_path)
    first = prepare_resume(folder)
    with pytest.raises(TrainingError) as refused:
        prepare_resume(folder)
    assert f"another resume is starting the run {folder.name} (process {os.getpid()} on {socket.gethostname()})" in \
        refused.value.message
    assert "workbench runs" in refused.value.hint
    assert [e.step for e in read_events(folder) if isinstance(e, Step)] == [5], "the refused resume changed nothing"
    first.release()
    with prepare_resume(folder) as again:  # released: a resume may go ahead (this one trims nothing more)
        assert again.step == 5 and again.dropped_events == 0
    assert prepare_resume(folder).step == 5, "the with block released it"


def test_a_refused_resume_takes_no_lock_and_writes_nothing(tmp_path):
    finished = create_run(make_config(tmp_path, name="finished"))
    make_checkpoint(finished, 5)
    record(finished, step(5), Finished(status="finished", adapter_path="adapter", step=5))
    with pytest.raises(TrainingError, match="already finished"):
        prepare_resume(finished)
    assert not (finished.path / ".resume.lock").exists()



class NotATensor:
    """Pickled into a state file by its import path: the safe loader must refuse it (and never import it)."""

    def __reduce__(self):
        return (print, ("this would have run",))


def trained_then_crashed(tmp_path: Path, name: str) -> RunFolder:
    """A crashed run whose run_started event records the configuration, as the engine's does."""
    folder = create_run(make_config(tmp_path, name=name))
    make_checkpoint(folder, 5)
    begun = RunStarted(run_dir=str(folder.path), config=load_config(folder).to_dict(), device="cpu", device_name="cpu",
                       precision="fp32", trainable_params=10, total_params=100, total_steps=10)
    record_then_crash(folder, [begun, step(5), step(6), step(7)])
    return folder


def untouched(folder: RunFolder):
    """A snapshot of everything a refused resume must leave as it was."""
    def snapshot():
        return {p.relative_to(folder.path): (p.read_bytes() if p.is_file() else None) for p in folder.path.rglob("*")}
    before = snapshot()
    return lambda: snapshot() == before


@pytest.mark.parametrize("section, name, value, shown", [
    ("model", "source", "models/other-model", '"models/other-model"'),
    ("model", "revision", "v2", '"v2"'),
    ("model", "task", "sequence-classification", '"sequence-classification"'),
    ("lora", "r", 16, "16"),
    ("lora", "target_modules", ["model.layers.0.mlp.up_proj"], '["model.layers.0.mlp.up_proj"]'),
    ("lora", "rank_pattern", {}, "{}"),
    ("lora", "use_dora", True, "true"),
])
def test_resume_refuses_a_run_file_that_now_names_another_model_or_adapter_shape(tmp_path, section, name, value, shown):
    folder = trained_then_crashed(tmp_path, "changed")
    before = load_config(folder).to_dict()[section].get(name)
    load_config(folder).copy_with(**{section: {name: value}}).save(folder.run_file)
    same = untouched(folder)
    with pytest.raises(TrainingError) as refused:
        prepare_resume(folder)
    message = refused.value.message
    assert f"run.toml now sets {section}.{name} = {shown}" in message
    assert f"trained with {section}.{name} = {json.dumps(before) if before is not None else '(not set)'}" in message
    assert f"{section}.{name} back to" in refused.value.hint and "new run" in refused.value.hint
    assert same(), "refused before the lock: no lock file, metrics.jsonl and checkpoints as they were"


def test_resume_refuses_a_state_file_the_safe_loader_refuses_and_changes_nothing(tmp_path):
    folder = trained_then_crashed(tmp_path, "unsafe")
    torch.save({"state": NotATensor()}, folder.checkpoints_dir / "checkpoint-5" / "rng_state.pth")
    same = untouched(folder)
    with pytest.raises(TrainingError) as refused:
        prepare_resume(folder)
    assert f"{folder.checkpoints_dir / 'checkpoint-5' / 'rng_state.pth'} does not load safely" in refused.value.message
    assert "nothing was changed" in refused.value.message and "could run code" in refused.value.hint
    assert same(), "metrics.jsonl keeps steps 6 and 7: nothing is cut before a refusal"
    assert [e.step for e in read_events(folder) if isinstance(e, Step)] == [5, 6, 7]


def test_no_complete_checkpoint_hint_fits_whether_checkpoints_were_on(tmp_path):
    saving = create_run(make_config(tmp_path, name="saving"))  # save_steps = 5, stopped at step 3
    record(saving, started(), step(1), step(2), step(3), Finished(status="stopped", adapter_path="adapter", step=3))
    with pytest.raises(TrainingError, match="no complete checkpoint") as refused:
        prepare_resume(saving)
    assert "set training.save_steps" not in refused.value.hint
    assert "training.save_steps is 5" in refused.value.hint and "before it completed a checkpoint" in refused.value.hint

    no_saving = create_run(make_config(tmp_path, name="no-saving").copy_with(training={"save_steps": None}))
    record(no_saving, started(), step(1), Finished(status="stopped", adapter_path="adapter", step=1))
    with pytest.raises(TrainingError, match="no complete checkpoint") as refused:
        prepare_resume(no_saving)
    assert "set training.save_steps" in refused.value.hint


def test_resume_refuses_a_checkpoint_past_a_lowered_target(tmp_path):
    folder = trained_then_crashed(tmp_path, "lowered")
    load_config(folder).copy_with(training={"max_steps": 3}).save(folder.run_file)
    with pytest.raises(TrainingError, match="past the run's target") as refused:
        prepare_resume(folder)
    assert "training.max_steps = 3" in refused.value.message and "at least 5" in refused.value.hint


RESUMER = """
    import sys, time
    from pathlib import Path
    from workbench.core.errors import TrainingError
    from workbench.core.runs import prepare_resume

    go = Path(sys.argv[2])
    print("ready", flush=True)  # imported: from here on, starting takes no time
    while not go.exists():
        time.sleep(0.001)
    try:
        point = prepare_resume(sys.argv[1])
    except TrainingError as exc:
        print("refused:", exc.message, flush=True)
        sys.exit(0)
    print("resumed from", point.step, flush=True)
    sys.stdin.read()  # hold the lock until the test closes stdin
"""


@pytest.mark.subprocess
def test_two_resumes_started_at_the_same_instant_one_is_refused(tmp_path):
    """Both pass the liveness check (the run is dead); only one may trim and train it."""
    folder = crashed_run_with_checkpoint(tmp_path)
    go = tmp_path / "go"
    procs = [python(RESUMER, str(folder.path), str(go), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = []
    try:
        for proc in procs:  # both imported and waiting for the signal, so they start together (either way one must lose)
            assert proc.stdout.readline() == "ready\n"
        go.touch()
        for proc in procs:  # the refused one exits; the winner holds the lock until its stdin closes
            outputs.append((proc, proc.stdout.readline().strip()))
        winners = [(p, line) for p, line in outputs if line.startswith("resumed from 5")]
        losers = [(p, line) for p, line in outputs if line.startswith("refused:")]
        assert len(winners) == 1 and len(losers) == 1, outputs
        winner = winners[0][0]
        assert f"process {winner.pid} on" in losers[0][1] and "another resume is starting" in losers[0][1]
        with pytest.raises(TrainingError, match="another resume is starting"):
            prepare_resume(folder)
    finally:
        go.touch()  # a child still waiting for the signal goes on and ends too
        for proc in procs:
            proc.stdin.close()
            proc.wait(timeout=DEADLINE_S)
            proc.stdout.close()
    assert prepare_resume(folder).step == 5, "the lock went with its holder"


@pytest.mark.subprocess
def test_rewind_metrics_cuts_after_a_step_or_to_the_start(tmp_path):
    from workbench.core.runs import rewind_metrics

    folder = create_run(make_config(tmp_path))
    record_then_crash(folder, [Message("loading"), started(), Evaluation(step=0, eval_loss=3.0), step(1), step(2),
                               Evaluation(step=2, eval_loss=2.0), step(3)])
    assert rewind_metrics(folder, 2) == 1
    assert [type(e).__name__ for e in read_events(folder)][-2:] == ["Step", "Evaluation"]
    assert summarize_run(folder).step == 2
    assert rewind_metrics(folder.path, None) == 4, "to the start: every event of a step, step 0 included"
    assert [type(e).__name__ for e in read_events(folder)] == ["Message", "RunStarted"]


# ------------------------------------------------------------------------------------------ control


def test_control_file_commands_reach_the_run_control(tmp_path):
    folder = create_run(make_config(tmp_path))
    send_control(folder, "stop")  # left over from an earlier session: must not stop the next one
    control = RunControl()
    watcher = ControlFileWatcher(folder, control)
    assert watcher.poll() == [] and not control.stop_requested

    send_control(folder, "pause")
    send_control(folder, "checkpoint")  # two commands between two polls: both apply
    assert watcher.poll() == ["pause", "checkpoint"]
    assert control.pause_requested and control.take_checkpoint_request()
    assert watcher.poll() == [] and not control.take_checkpoint_request()

    send_control(folder, "resume")
    assert watcher.poll() == ["resume"] and not control.pause_requested

    control.request_pause()  # the window's own button, in-process: the file must not undo it
    send_control(folder, "checkpoint")
    assert watcher.poll() == ["checkpoint"] and control.pause_requested

    send_control(folder, "stop")
    assert watcher.poll() == ["stop"] and control.stop_requested and not control.pause_requested
    with pytest.raises(ValueError, match="allowed: stop, pause, resume, checkpoint"):
        send_control(folder, "restart")


@pytest.mark.subprocess
def test_another_process_stops_a_recording_run_through_the_folder(tmp_path):
    folder = create_run(make_config(tmp_path))
    control = RunControl()
    with RunRecorder(folder, control=control):
        sender = python("import sys; from workbench.core.runs import send_control; send_control(sys.argv[1], 'stop')",
                        str(folder.path))
        assert sender.wait(timeout=DEADLINE_S) == 0
        wait_until(lambda: control.stop_requested, "the stop request")


# ------------------------------------------------------------------------------------------ delete


def test_delete_run_removes_a_finished_run_and_refuses_anything_else(tmp_path):
    root = tmp_path / "runs"
    done = create_run(make_config(root, name="done"))
    make_checkpoint(done, 5)
    record(done, step(5), Finished(status="finished", adapter_path="adapter", step=5))
    delete_run(done)
    assert list(root.iterdir()) == []

    running = create_run(make_config(root, name="running"))
    with RunRecorder(running):
        with pytest.raises(OutputError, match="running"):
            delete_run(running)
    assert running.run_file.is_file()

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(OutputError, match="not a run folder"):
        delete_run(tmp_path / "photos")
    assert (tmp_path / "photos" / "cat.jpg").is_file()


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def runs_cli(monkeypatch):
    # Register only this command so the test does not depend on the imports of the other commands.
    assert "runs" in cli.COMMAND_MODULES
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("runs",))
    return cli.main


@pytest.mark.subprocess
def test_workbench_runs_lists_runs_as_a_table_and_as_json(tmp_path, capsys, monkeypatch, runs_cli):
    root = tmp_path / "runs"
    done = create_run(make_config(root, name="done"))
    record(done, started(total=4), step(1, 2.0, 4), step(4, 1.25, 4),
           Finished(status="finished", adapter_path="adapter", step=4))
    crashed = create_run(make_config(root, name="crashed"))
    record_then_crash(crashed, [started(), step(1), step(2, 2.5)])

    assert runs_cli(["runs", "--root", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "STEPS", "LOSS", "BEST", "EVAL", "MODEL", "STARTED", "DURATION"]
    assert lines[1].split()[:6] == ["crashed", "crashed", "2/10", "2.5", "-", "tiny-llama"]
    assert lines[2].split()[:6] == ["done", "finished", "4/4", "1.25", "-", "tiny-llama"]
    assert len(lines) == 3

    assert runs_cli(["runs", "--root", str(root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["status"], r["step"], r["last_loss"]) for r in rows] == [
        ("crashed", "crashed", 2, 2.5), ("done", "finished", 4, 1.25)]
    assert rows[1]["data_files"] == ["data/train.jsonl", "data/more.jsonl"]

    monkeypatch.setattr("workbench.commands.runs.RECENT", 1)
    assert runs_cli(["runs", "--root", str(root)]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["NAME", "crashed"]
    assert "1 older run(s) not shown" in err
    assert runs_cli(["runs", "--root", str(root), "--all"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["NAME", "crashed", "done"]


def test_workbench_runs_with_no_runs(tmp_path, capsys, runs_cli):
    assert runs_cli(["runs", "--root", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out.strip() == f"no runs under {tmp_path / 'empty'}"
    assert runs_cli(["runs", "--root", str(tmp_path / "empty"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


# ------------------------------------------------------------------------------------------ crash safety


def test_a_checkpoint_missing_a_state_file_is_incomplete(tmp_path):
    """The Trainer resumes without a missing optimizer or scheduler state, silently starting them afresh;
    such a folder (half deleted by the Trainer's checkpoint rotation, say) must not count as complete."""
    folder = create_run(make_config(tmp_path))
    for n, missing in ((5, None), (10, "optimizer.pt"), (15, "scheduler.pt"), (20, "rng_state.pth")):
        path = make_checkpoint(folder, n)
        if missing:
            (path / missing).unlink()
    problems = {c.step: c.problem for c in list_checkpoints(folder)}
    assert problems[5] == ""
    assert all(name in problems[n] for n, name in ((10, "optimizer.pt"), (15, "scheduler.pt"), (20, "rng_state.pth")))
    assert latest_checkpoint(folder).step == 5


@pytest.mark.subprocess
def test_resume_reads_its_checkpoint_in_full_and_passes_over_a_damaged_one(tmp_path):
    """A block lost in a power cut leaves a state file of the right size and structure but wrong content:
    only reading it all (zip members against their CRC-32s) shows it."""
    folder = create_run(make_config(tmp_path))
    make_checkpoint(folder, 5)
    damaged = make_checkpoint(folder, 10) / "optimizer.pt"
    data = bytearray(damaged.read_bytes())
    data[data.index(b"\x00" * 64) + 2] ^= 0xFF  # inside the stored tensor's bytes
    damaged.write_bytes(bytes(data))
    record_then_crash(folder, [started(), step(5), step(10)])

    assert latest_checkpoint(folder).step == 10, "the quick check cannot see it"
    assert "CRC" in list_checkpoints(folder, thorough=True)[1].problem
    point = prepare_resume(folder)
    assert point.step == 5 and [p.name for p in point.discarded] == ["checkpoint-10"]
    assert "checkpoint-10: optimizer.pt is damaged" in point.describe()


def test_the_recorder_flushes_a_checkpoint_to_disk_before_metrics_names_it(tmp_path, monkeypatch):
    import workbench.core.runs.recorder as runs

    folder = create_run(make_config(tmp_path))
    path = make_checkpoint(folder, 5)
    synced = []
    monkeypatch.setattr(runs, "fsync_tree", lambda p: synced.append((Path(p), folder.metrics_file.read_text())))
    record(folder, step(5), CheckpointSaved(step=5, path=str(path)))
    assert [p for p, _ in synced] == [path]
    assert '"kind":"checkpoint"' not in synced[0][1], "synced before the event was appended"
    assert isinstance(read_events(folder)[-2], CheckpointSaved)


def test_a_recorder_appending_after_a_torn_line_starts_a_line_of_its_own(tmp_path):
    folder = create_run(make_config(tmp_path))
    with JsonlSink(folder.metrics_file) as sink:
        sink.emit(step(1))
    with open(folder.metrics_file, "ab") as fh:
        fh.write(step(2).to_json().encode()[:25])  # killed mid-line, and resumed without prepare_resume
    record(folder, step(2), Finished(status="finished", adapter_path="adapter", step=2))
    assert [type(e).__name__ for e in read_events(folder)] == ["Step", "Step", "Finished"]
    assert folder.metrics_file.read_bytes().endswith(b"\n")


@pytest.mark.subprocess
def test_prepare_resume_removes_temporary_files_left_by_the_dead_engine(tmp_path):
    folder = create_run(make_config(tmp_path))
    make_checkpoint(folder, 5)
    record_then_crash(folder, [started(), step(5)])
    for name in (".tmp-status.json.k2j4x9", ".tmp-run.toml.abc123", ".tmp-control.json.zz81q0"):
        (folder.path / name).write_text("{")
    (folder.path / ".tmp-adapter.partial").mkdir()
    (folder.path / ".tmp-adapter.partial" / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    (folder.checkpoints_dir / ".tmp-checkpoint-10.partial" / "checkpoint-10").mkdir(parents=True)  # a save cut short
    (folder.checkpoints_dir / ".tmp-checkpoint-10.partial" / "checkpoint-10" / "optimizer.pt").write_bytes(b"PK")
    make_checkpoint(folder, 1, name=".tmp-checkpoint-1.deleting")  # a rotation cut short
    assert [c.step for c in list_checkpoints(folder)] == [5], "temporary folders are never listed"
    point = prepare_resume(folder)
    assert point.step == 5
    assert [p.name for p in point.discarded] == [".tmp-checkpoint-1.deleting", ".tmp-checkpoint-10.partial"]
    assert sorted(p.name for p in folder.checkpoints_dir.iterdir()) == ["checkpoint-5"]
    # control.json is written by other processes, which may be alive: theirs is not ours to remove
    assert sorted(p.name for p in folder.path.iterdir() if p.name.startswith(".tmp-")) == [".tmp-control.json.zz81q0"]


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "move-aside"])
def test_atomic_directory_replaces_a_folder_complete_and_synced(tmp_path, monkeypatch, exchange):
    from workbench.core import fsutil

    if not exchange:
        monkeypatch.setattr(fsutil, "_renameat2", None)  # as on macOS, Windows, or a file system without it
    final = tmp_path / "adapter"
    with fsutil.atomic_directory(final) as tmp:
        (tmp / "weights").write_text("old")
    synced = []
    real_fsync_tree = fsutil.fsync_tree
    monkeypatch.setattr(fsutil, "fsync_tree", lambda p: synced.append((final / "weights").read_text()) or real_fsync_tree(p))
    with fsutil.atomic_directory(final, overwrite=True) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "more").write_text("new too")
        (tmp / "weights").write_text("new")
    assert synced == ["old"], "the new folder is synced before it replaces the old one"
    assert (final / "weights").read_text() == "new" and (final / "sub" / "more").read_text() == "new too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_atomic_directory_never_replaces_a_folder_that_appeared_meanwhile(tmp_path):
    from workbench.core import fsutil

    final = tmp_path / "export"
    with pytest.raises(FileExistsError):
        with fsutil.atomic_directory(final) as tmp:
            (tmp / "a").write_text("mine")
            final.mkdir()  # another writer got there first
            (final / "a").write_text("theirs")
    assert (final / "a").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_paused_run_is_listed_as_paused_and_running_again_once_resumed(tmp_path, capsys, runs_cli):
    from workbench.core.events import Paused, Resumed

    folder = create_run(make_config(tmp_path, name="pausing"))
    with RunRecorder(folder) as recorder:
        recorder.emit(started())
        recorder.emit(step(3))
        recorder.emit(Paused(step=3))
        summary = summarize_run(folder)
        assert (summary.status, summary.shown_status, summary.to_dict()["status"]) == (RunStatus.RUNNING, "paused", "paused")
        assert run_status(folder) is RunStatus.RUNNING, "alive: resume and delete still refuse it"
        assert cli.main(["runs", "--root", str(tmp_path)]) == 0
        assert re.search(r"pausing\s+paused\s+3/10", capsys.readouterr().out)
        recorder.emit(Resumed(step=3))
        assert summarize_run(folder).shown_status == "running"
        recorder.emit(Paused(step=3))
        recorder.emit(Finished(status="stopped", adapter_path="adapter", step=3))
    assert summarize_run(folder).shown_status == "stopped"


@pytest.mark.parametrize("outcome, status", [(None, RunStatus.CRASHED),
                                             (Finished(status="finished", adapter_path="adapter", step=4), RunStatus.FINISHED),
                                             (Failed(reason="the disk is full", step=4), RunStatus.FAILED)])
def test_a_torn_status_file_is_judged_from_metrics_not_shown_as_new(tmp_path, outcome, status):
    folder = create_run(make_config(tmp_path, name="torn"))
    record_then_crash(folder, [started(), step(1), step(2), step(3), step(4)] + ([outcome] if outcome else []))
    cut_short(folder.status_file)
    old = time.time() - 3600  # long since written: a live engine would have rewritten status.json meanwhile
    os.utime(folder.metrics_file, (old, old))
    summary = summarize_run(folder)
    assert summary.status is status and summary.step == 4 and summary.started_at is not None
    if status is RunStatus.CRASHED:
        assert "status.json" in summary.status_detail and "metrics.jsonl" in summary.status_detail
        with pytest.raises(TrainingError, match="no complete checkpoint"):  # resumable (crashed), but no checkpoint
            prepare_resume(folder)
