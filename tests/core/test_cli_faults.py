"""The CLI as a script or a scheduler meets it: unexpected errors, a console that goes away, SIGTERM."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from waiting import wait_until
from workbench.core import events as ev
from workbench.core.control import RunControl
from workbench.core.exitcodes import EXIT_BUG, EXIT_STOPPED, EXIT_USER
from workbench.core.runs import list_checkpoints, run_status
from workbench.core.training import resume, run

from test_training import make_config, steps_in


@pytest.fixture
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama", initializer_range=0.3)


def workbench(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workbench", *args], **kw)


def test_an_unexpected_error_is_one_line_and_a_log_with_the_traceback(monkeypatch, tmp_path, capsys):
    from workbench import cli
    from workbench.commands import runs as runs_command

    def broken(args):
        raise KeyError("a bug deep inside")

    monkeypatch.setattr(runs_command, "run", broken)
    monkeypatch.setenv("LORA_WORKBENCH_CACHE", str(tmp_path / "cache"))
    assert cli.main(["runs", "--root", str(tmp_path)]) == EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0] == "error: workbench runs failed unexpectedly: KeyError: 'a bug deep inside'"
    log = Path(lines[1].split(" in ", 1)[1].split(" (")[0])
    assert log.parent == tmp_path / "cache" / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text and "KeyError" in text


@pytest.mark.subprocess
def test_a_closed_console_does_not_fail_the_run_and_the_exit_code_is_the_runs(model_dir, tmp_path):
    cfg = make_config(model_dir, tmp_path, max_steps=3)
    cfg.save(tmp_path / "run.toml")
    run_dir = tmp_path / "piped"
    # `workbench train RUN.toml 2>&1 | head -0`: the reader is gone before the first line is written.
    proc = workbench("train", str(tmp_path / "run.toml"), "--run-dir", str(run_dir), stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT)
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0, "the run finished, so the exit code says so"
    assert run_status(run_dir).value == "finished"
    assert steps_in(run_dir) == [1, 2, 3]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()

    # A run that fails still fails, console or not.
    proc = workbench("train", str(tmp_path / "missing.toml"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc.stdout.close()
    assert proc.wait(timeout=120) == EXIT_USER


@pytest.mark.subprocess
def test_sigterm_stops_like_ctrl_c_and_resume_reproduces_the_uninterrupted_run(model_dir, tmp_path):
    cfg = make_config(model_dir, tmp_path, max_steps=2000, batch_size=2, save_steps=4).copy_with(
        data={"packing": False})
    cfg.save(tmp_path / "run.toml")
    run_dir = tmp_path / "terminated"
    proc = workbench("train", str(tmp_path / "run.toml"), "--run-dir", str(run_dir), "--quiet",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: (run_dir / "metrics.jsonl").exists() and max(steps_in(run_dir) or [0]) >= 3,
               "step 3 in metrics.jsonl", timeout=180, proc=proc, interval=0.02)
    proc.send_signal(signal.SIGTERM)  # what scancel, docker stop and systemd send
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, err  # stopped before its target: resumable
    assert "SIGTERM received" in err and "Traceback" not in err
    assert run_status(run_dir).value == "stopped"
    stopped_at = steps_in(run_dir)[-1]
    assert stopped_at < 2000
    assert [c.step for c in list_checkpoints(run_dir)][-1] == stopped_at, "a checkpoint at the step it stopped"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()

    def stop_at_12():
        control = RunControl()
        return control, ev.CallbackSink(lambda e: e.kind == "step" and e.step == 12 and control.request_stop())

    control, sink = stop_at_12()
    resumed = resume(run_dir, sink, control)
    assert resumed.final_step == 12 and steps_in(run_dir) == list(range(1, 13))
    control, sink = stop_at_12()
    straight = run(cfg, sink, control, run_dir=tmp_path / "straight")

    def losses(d):
        return [e["loss"] for e in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if e["kind"] == "step"]

    assert losses(run_dir) == pytest.approx(losses(straight.run_dir), rel=1e-5)
