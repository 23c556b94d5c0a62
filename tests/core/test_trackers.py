"""Experiment trackers: one real 3-step run (a separate `workbench train` process, as from the window or a
terminal) logs to TensorBoard, MLflow and trackio; each tracker's own reader sees the losses of metrics.jsonl."""

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from test_training import make_config  # noqa: E402  (tests/core is on sys.path through pytest's rootdir)
from workbench.core import trackers
from workbench.core.config import ConfigError, RunConfig
from workbench.core.runs import read_events

READ_TRACKIO = """\
import json, sys
from trackio.sqlite_storage import SQLiteStorage
logs = SQLiteStorage.get_logs(sys.argv[1], sys.argv[2])
print(json.dumps([[row["step"], row.get("train/loss"), row.get("eval/loss")] for row in logs]))
"""


@pytest.fixture(scope="module")
def tracked_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trackers")
    cfg = make_config(tiny_model_dir("llama"), tmp, max_steps=3, eval_steps=3).copy_with(
        data={"validation_split": 0.25}, output={"trackers": ["tensorboard", "mlflow", "trackio"]})
    cfg.save(tmp / "run.toml")
    env = {**os.environ, "TRACKIO_DIR": str(tmp / "trackio"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "workbench", "train", str(tmp / "run.toml"), "--run-dir",
                          str(tmp / "runs" / "tracked"), "--quiet"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tracker failed" not in out.stderr, out.stderr[-3000:]
    run_dir = tmp / "runs" / "tracked"
    losses = {e.step: e.loss for e in read_events(run_dir) if e.kind == "step"}
    evals = {e.step: e.eval_loss for e in read_events(run_dir) if e.kind == "evaluation"}
    assert sorted(losses) == [1, 2, 3] and 3 in evals
    return run_dir, losses, evals, env


def test_tensorboard_event_files_hold_the_losses(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, losses, evals, _ = tracked_run
    acc = EventAccumulator(str(run_dir / trackers.TENSORBOARD_DIR))
    acc.Reload()
    assert {e.step: e.value for e in acc.Scalars("train/loss")} == pytest.approx(losses, rel=1e-6)
    assert {e.step: e.value for e in acc.Scalars("eval/loss")} == pytest.approx(evals, rel=1e-6)
    assert {"train/learning_rate", "train/grad_norm", "train/tokens_per_second"} <= set(acc.Tags()["scalars"])
    assert "run config" in " ".join(acc.Tags()["tensors"])


def test_mlflow_store_beside_the_runs_holds_the_losses_and_the_config(tracked_run):
    from mlflow.tracking import MlflowClient

    run_dir, losses, evals, _ = tracked_run
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir.parent / trackers.MLFLOW_DB}")
    experiment = client.get_experiment_by_name(trackers.MLFLOW_EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")} == losses
    assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval/loss")} == evals
    config = RunConfig.from_toml(run_dir / "run.toml")
    assert run.data.params["lora.r"] == str(config.lora.r) and run.data.params["training.max_steps"] == "3"


def test_trackio_local_store_holds_the_losses(tracked_run):
    run_dir, losses, evals, env = tracked_run
    out = subprocess.run([sys.executable, "-c", READ_TRACKIO, trackers.TRACKIO_PROJECT, run_dir.name],
                         capture_output=True, text=True, env=env, check=True, timeout=120)
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert {step: loss for step, loss, _ in rows if loss is not None} == pytest.approx(losses, rel=1e-6)
    assert {step: ev for step, _, ev in rows if ev is not None} == pytest.approx(evals, rel=1e-6)


def test_tensorboard_viewer_serves_the_run_on_localhost(tracked_run):
    run_dir, *_ = tracked_run
    viewer = trackers.start_viewer("tensorboard", run_dir)
    try:
        assert viewer.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(viewer.url + "data/runs", timeout=30) as reply:
            assert reply.status == 200 and json.loads(reply.read()) == ["."]
    finally:
        viewer.stop()
    assert viewer.process.poll() is not None


def test_missing_store_and_missing_ui_are_explained(tmp_path):
    with pytest.raises(trackers.TrackerError) as info:
        trackers.start_viewer("tensorboard", tmp_path)
    assert 'output.trackers = ["tensorboard"]' in info.value.hint
    with pytest.raises(trackers.TrackerError) as info:
        trackers.start_viewer("mlflow", tmp_path)
    assert "no MLflow store" in info.value.message


def test_a_missing_tracker_package_names_its_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a))
    assert trackers.missing_packages(["tensorboard", "trackio"]) == {"trackio": "pip install trackio"}
    with pytest.raises(trackers.TrackerError) as info:
        trackers.check_trackers(["trackio"])
    assert "trackio" in info.value.message and info.value.hint.startswith("pip install trackio")


def test_trackers_setting_is_validated():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"output": {"trackers": ["wandb"]}})
    assert "output.trackers" in str(info.value) and "tensorboard" in str(info.value)
    with pytest.raises(ConfigError):
        RunConfig.from_dict({"output": {"trackers": ["mlflow", "mlflow"]}})
    assert RunConfig.from_toml_text('[output]\ntrackers = ["trackio"]\n').output.trackers == ["trackio"]
