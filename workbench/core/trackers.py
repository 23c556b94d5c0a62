"""Experiment trackers: the run's events also go to TensorBoard, MLflow and trackio, each through its own library.

``[output] trackers = ["tensorboard", "mlflow", "trackio"]`` adds one sink per tracker to the run (rank 0 only).
Each keeps its data locally by default, where that tool's own viewer finds it:

* TensorBoard — event files in ``RUN/tensorboard`` (``torch.utils.tensorboard.SummaryWriter``);
* MLflow — a SQLite store ``mlflow.db`` (artifacts in ``mlartifacts/``) in the folder that holds the run folders,
  so every run of that folder is one experiment, comparable in one MLflow UI;
* trackio — its own local store (``TRACKIO_DIR``, by default under the Hugging Face cache), project
  ``lora-workbench``.

Each logs what the Train tab plots (loss, learning rate, gradient norm, tokens/s, memory; eval loss and the
evaluation's metrics) and the run configuration. A tracker that fails while the run trains says so once on stderr
and goes quiet: the run itself is never stopped by its dashboard.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import WorkbenchError
from .events import Evaluation, Event, Failed, Finished, RunStarted, Step

__all__ = ["TRACKERS", "missing_packages", "check_trackers", "tracker_sinks", "start_viewer", "Viewer",
           "TrackerError", "MLFLOW_DB", "TENSORBOARD_DIR", "TRACKIO_PROJECT", "step_metrics"]

TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
MLFLOW_EXPERIMENT = "lora-workbench"
TRACKIO_PROJECT = "lora-workbench"

# tracker → (import name that must be there, pip command that installs it)
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard",), "pip install tensorboard"),
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "pip install mlflow-skinny sqlalchemy alembic"),
    "trackio": (("trackio",), "pip install trackio"),
}


class TrackerError(WorkbenchError):
    """A tracker that cannot be used: its package is missing, or its viewer did not start."""


def missing_packages(trackers: Sequence[str]) -> dict[str, str]:
    """{tracker: pip command} for every chosen tracker whose library is not installed."""
    return {t: TRACKERS[t][1] for t in trackers if any(importlib.util.find_spec(m) is None for m in TRACKERS[t][0])}


def check_trackers(trackers: Sequence[str]) -> None:
    """Part of the run's preflight: a missing tracker package is named with the command that installs it."""
    missing = missing_packages(trackers)
    if missing:
        names = ", ".join(missing)
        raise TrackerError(f"output.trackers lists {names}, but {'its' if len(missing) == 1 else 'their'} Python "
                           "package is not installed",
                           "; ".join(missing.values()) + f" (or remove {names} from output.trackers)")


def step_metrics(event: Event) -> dict[str, float]:
    """The numbers a Step or Evaluation event contributes, under the names every tracker uses."""
    if isinstance(event, Step):
        values = {"train/loss": event.loss, "train/learning_rate": event.learning_rate,
                  "train/grad_norm": event.grad_norm, "train/tokens_per_second": event.tokens_per_second,
                  "train/trained_tokens_per_second": event.trained_tokens_per_second,
                  "train/examples_per_second": event.examples_per_second,
                  "train/memory_bytes": event.memory_bytes, "train/epoch": event.epoch}
    elif isinstance(event, Evaluation):
        values = {"eval/loss": event.eval_loss,
                  **{f"eval/{k.removeprefix('eval_')}": v for k, v in (event.metrics or {}).items()}}
    else:
        return {}
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def tracker_sinks(trackers: Sequence[str], run_dir: Path) -> list[Any]:
    """One sink per chosen tracker, for the training run in ``run_dir``."""
    kinds = {"tensorboard": _TensorBoard, "mlflow": _MLflow, "trackio": _Trackio}
    return [_Guarded(kinds[t](Path(run_dir))) for t in trackers]


def _flat_config(config: dict[str, Any]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, fields in config.items() if isinstance(fields, dict)
            for key, value in fields.items()}


class _Guarded:
    """A tracker's failure is reported once and then the tracker is left out; the run goes on."""

    def __init__(self, tracker: Any):
        self.tracker, self.broken = tracker, False

    def emit(self, event: Event) -> None:
        if self.broken:
            return
        try:
            self.tracker.emit(event)
        except Exception as exc:
            self.broken = True
            print(f"workbench: the {self.tracker.name} tracker failed and is switched off for this run: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            try:
                self.tracker.close("FAILED")
            except Exception:
                pass


class _Tracker:
    name = ""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.started = False

    def emit(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            if not self.started:
                self.start(event.config)
                self.started = True
        elif isinstance(event, (Step, Evaluation)) and self.started:
            metrics = step_metrics(event)
            if metrics:
                self.log(metrics, event.step)
        elif isinstance(event, (Finished, Failed)) and self.started:
            self.close("FAILED" if isinstance(event, Failed) else
                       "KILLED" if event.status == "stopped" else "FINISHED")
            self.started = False

    def start(self, config: dict[str, Any]) -> None: ...

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self, status: str) -> None: ...


class _TensorBoard(_Tracker):
    name = "TensorBoard"

    def start(self, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        import tomli_w

        self.writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR))
        # Markdown code block: TensorBoard's text plugin renders it as written.
        toml = tomli_w.dumps({k: v for k, v in config.items() if isinstance(v, dict)})
        self.writer.add_text("run config", "```toml\n" + toml + "\n```", 0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self, status: str) -> None:
        writer, self.writer = getattr(self, "writer", None), None  # type: ignore[assignment]  # closed: nothing to log to
        if writer is not None:
            writer.close()


def mlflow_uri(runs_root: Path) -> str:
    return f"sqlite:///{(Path(runs_root) / MLFLOW_DB).absolute()}"


class _MLflow(_Tracker):
    """Through ``MlflowClient`` with an explicit store, not ``mlflow.start_run``: no process-wide active run, so two
    runs in one process (the window) never log into each other."""

    name = "MLflow"

    def start(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        root = self.run_dir.parent
        self.client = MlflowClient(tracking_uri=mlflow_uri(root))
        experiment = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(
            MLFLOW_EXPERIMENT, artifact_location=(root / MLFLOW_ARTIFACTS).absolute().as_uri())
        tag = "workbench.run_dir"
        # A resumed run continues its MLflow run (same folder, same run), instead of starting a second one.
        previous = [r for r in self.client.search_runs([experiment_id], max_results=1000)
                    if r.data.tags.get(tag) == str(self.run_dir.absolute())]
        if previous:
            self.run_id = previous[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name, tags={tag: str(self.run_dir.absolute())})
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in sorted(_flat_config(config).items())]
        for i in range(0, len(params), 100):  # MLflow's batch limit is 100 params a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self, status: str) -> None:
        if getattr(self, "run_id", None) is not None:
            self.client.set_terminated(self.run_id, status=status)
            self.run_id = None


class _Trackio(_Tracker):
    name = "trackio"

    def start(self, config: dict[str, Any]) -> None:
        import trackio

        self.run = trackio.init(project=TRACKIO_PROJECT, name=self.run_dir.name, config=_flat_config(config),
                                resume="allow", auto_log_gpu=False, auto_log_cpu=False, embed=False)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self, status: str) -> None:
        run, self.run = getattr(self, "run", None), None  # type: ignore[assignment]  # finished: nothing to log to
        if run is not None:
            run.finish()


# ---------------------------------------------------------------------------------------------- viewers


@dataclass
class Viewer:
    kind: str
    url: str
    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_viewer(kind: str, run_dir: str | Path, *, timeout: float = 60.0,
                 should_stop: Callable[[], bool] = lambda: False) -> Viewer:
    """Start ``kind``'s viewer ("tensorboard" or "mlflow") for the run in ``run_dir`` on localhost; returns once it
    answers (blocking: call it from a worker thread). Its URL is in the result; ``stop()`` ends it."""
    from .selfcmd import module_command

    run_dir = Path(run_dir)
    port = _free_port()
    if kind == "tensorboard":
        logdir = run_dir / TENSORBOARD_DIR
        if not logdir.is_dir():
            raise TrackerError(f"the run {run_dir.name} has no TensorBoard logs ({logdir} does not exist)",
                               'train with output.trackers = ["tensorboard"] to write them')
        check_trackers(["tensorboard"])
        cmd = module_command("tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port))
        url = f"http://127.0.0.1:{port}/"
    elif kind == "mlflow":
        db = run_dir.parent / MLFLOW_DB
        if not db.is_file():
            raise TrackerError(f"there is no MLflow store beside the run {run_dir.name} ({db} does not exist)",
                               'train with output.trackers = ["mlflow"] to write one')
        if importlib.util.find_spec("flask") is None:  # mlflow-skinny logs runs but has no UI server
            raise TrackerError("the MLflow UI is not installed (mlflow-skinny logs runs but cannot show them)",
                               f"pip install mlflow, or run: mlflow ui --backend-store-uri {mlflow_uri(run_dir.parent)}")
        cmd = module_command("mlflow", "server", "--backend-store-uri", mlflow_uri(run_dir.parent), "--host",
                             "127.0.0.1", "--port", str(port))
        url = f"http://127.0.0.1:{port}/"
    else:
        raise TrackerError(f"no viewer for {kind!r}", "choose tensorboard or mlflow")
    log = run_dir / f".{kind}-viewer.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    viewer = Viewer(kind, url, proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not should_stop():
        if proc.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            raise TrackerError(f"the {kind} viewer exited at once (status {proc.returncode})",
                               "\n".join(tail) or f"see {log}")
        if _answers(port):
            return viewer
        time.sleep(0.2)
    viewer.stop()
    raise TrackerError(f"the {kind} viewer did not answer on port {port} within {timeout:.0f} s", f"see {log}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
