"""The same run file under torchrun (two CPU processes, gloo), and runs controlled through their folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_training import make_config  # noqa: E402  (tests/core is on sys.path through pytest's rootdir)
from waiting import wait_until
from workbench.cli import main
from workbench.core.exitcodes import EXIT_STOPPED
from workbench.core.runs import read_events, run_status, send_control

TORCHRUN = Path(sys.executable).with_name("torchrun")


def losses(run_dir: Path) -> list[float]:
    return [e.loss for e in read_events(run_dir) if e.kind == "step"]


def wait_for(predicate, proc, what: str) -> None:
    """Until the training process ``proc`` has written what ``predicate`` looks for (it must keep running)."""
    wait_until(predicate, what, timeout=120.0, proc=proc, interval=0.05)


@pytest.mark.subprocess
def test_two_processes_match_one_with_the_same_global_batch(tiny_model_dir, tmp_path):
    model = tiny_model_dir("llama", initializer_range=0.3)
    cfg = make_config(model, tmp_path, max_steps=5, batch_size=2).copy_with(data={"packing": False})
    cfg.save(tmp_path / "run.toml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "-m", "workbench", "train", str(tmp_path / "run.toml"),
                          "--run-dir", str(tmp_path / "ddp"), "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("finished: step 5") == 1, "one summary line, from rank 0"
    # The one-process reference runs in this process: the same command without another interpreter's start-up.
    assert main(["train", str(tmp_path / "run.toml"), "--run-dir", str(tmp_path / "single"),
                 "--set", "training.batch_size=4", "--quiet"]) == 0

    ddp = tmp_path / "ddp"
    assert not (tmp_path / "runs").exists(), "the other rank must not create a run folder of its own"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (ddp / "adapter").iterdir()}
    events = read_events(ddp)
    started = next(e for e in events if e.kind == "run_started")
    assert started.world_size == 2 and started.global_batch == 4
    assert all(e.world_size == 2 for e in events if e.kind == "step")
    assert [e.step for e in events if e.kind == "step"] == [1, 2, 3, 4, 5]
    assert losses(ddp) == pytest.approx(losses(tmp_path / "single"), rel=1e-4, abs=1e-5)


@pytest.fixture
def background_run(tiny_model_dir, tmp_path):
    cfg = make_config(tiny_model_dir("llama", initializer_range=0.3), tmp_path, max_steps=2000)
    cfg.save(tmp_path / "run.toml")
    run_dir = tmp_path / "bg"
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "train", str(tmp_path / "run.toml"), "--run-dir", str(run_dir),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield proc, run_dir
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def step_count(run_dir: Path) -> int:
    return sum(1 for e in read_events(run_dir) if e.kind == "step") if (run_dir / "metrics.jsonl").exists() else 0


@pytest.mark.subprocess
def test_pause_resume_and_stop_a_separate_process_through_the_run_folder(background_run):
    """One background process for the three requests (a test of its own for the stop started a second one)."""
    proc, run_dir = background_run
    wait_for(lambda: step_count(run_dir) >= 1, proc, what="the first step")
    send_control(run_dir, "pause")
    wait_for(lambda: any(e.kind == "paused" for e in read_events(run_dir)), proc, what="paused")
    paused_at = step_count(run_dir)
    assert run_status(run_dir).value == "running", "a paused run is alive, not crashed"
    send_control(run_dir, "resume")
    wait_for(lambda: any(e.kind == "resumed" for e in read_events(run_dir)), proc, what="resumed")
    wait_for(lambda: step_count(run_dir) >= paused_at + 2, proc, what="steps after resuming")
    send_control(run_dir, "stop")
    assert proc.wait(timeout=120) == EXIT_STOPPED, "stopped before its target: the exit code says so"
    assert run_status(run_dir).value == "stopped"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    last = read_events(run_dir)[-1]
    assert last.kind == "finished" and last.status == "stopped" and last.step < 2000
    kinds = [(e.kind, getattr(e, "step", None)) for e in read_events(run_dir) if e.kind in ("step", "paused", "resumed")]
    i = kinds.index(next(k for k in kinds if k[0] == "paused"))
    assert kinds[i + 1][0] == "resumed", "no step was taken while paused"
    assert kinds[i - 1] == ("step", kinds[i][1]) and kinds[i + 2] == ("step", kinds[i][1] + 1), "training continued at the next step"


@pytest.mark.subprocess
def test_pause_resume_and_stop_a_two_process_run_through_the_run_folder(tiny_model_dir, tmp_path):
    """The control file reaches rank 0; the engine must carry each request to rank 1 at the same step."""
    cfg = make_config(tiny_model_dir("llama", initializer_range=0.3), tmp_path, max_steps=2000, batch_size=1)
    cfg = cfg.copy_with(data={"packing": False})
    cfg.save(tmp_path / "run.toml")
    run_dir = tmp_path / "ddp"
    proc = subprocess.Popen([str(TORCHRUN), "--nproc_per_node", "2", "-m", "workbench", "train", str(tmp_path / "run.toml"),
                             "--run-dir", str(run_dir), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for(lambda: step_count(run_dir) >= 2, proc, what="two steps")
        send_control(run_dir, "pause")
        wait_for(lambda: any(e.kind == "paused" for e in read_events(run_dir)), proc, what="paused")
        send_control(run_dir, "resume")
        wait_for(lambda: any(e.kind == "resumed" for e in read_events(run_dir)), proc, what="resumed")
        resumed_at = step_count(run_dir)
        wait_for(lambda: step_count(run_dir) >= resumed_at + 2, proc, what="steps after resuming")
        send_control(run_dir, "stop")
        # torchrun counts any other exit code as a crashed worker (traceback, exit 1): under it, a stopped run
        # exits 0 and its folder says "stopped".
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-3000:]
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert run_status(run_dir).value == "stopped"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    events = read_events(run_dir)
    assert all(e.world_size == 2 for e in events), "every event carries the world size"
    stop_step = events[-1].step
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{stop_step}"
    # Both ranks wrote their RNG state into the checkpoint's temporary folder before rank 0 renamed it into place.
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= {p.name for p in checkpoint.iterdir()}
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp-")] == []
