"""The evaluation before the first step, shared by the runs of a sweep that would all compute the same one.

With validation data a run evaluates at step 0, before it has trained anything: with a fresh adapter (B = 0) that
scores the base model. The runs of a sweep over the adapter or the optimisation (``lora.r``, ``lora.alpha``, the
target modules, ``training.learning_rate``, …) all score the same base on the same rows with the same scorers, and
on a CPU that took 1.5-6 minutes a run. The first run of the sweep (``output.group``) stores its step-0 result in
``<runs folder>/.base-eval/<group>/<key>.json``; a later run with the same key replays it instead of evaluating.

The key is a hash of everything that can decide the result: the whole resolved run file *except* the fields listed
here as unable to change a step-0 evaluation (the adapter's shape and scale only while its initialisation leaves
B = 0, the optimiser and schedule, checkpoint and logging cadence, output names), the bytes of the data files and of
the retention reference file, the base model folder's files (name, size, modification time), the device and number
formats, and the versions of the libraries that compute it. Any other difference, a field added to the run file
later included, gives another key and a fresh evaluation. A run on its own (no ``output.group``), a resumed run, a
run under torchrun, a classifier and a preference run always evaluate for themselves.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunConfig
from .fsutil import atomic_write_text
from .precision import Compute

__all__ = ["CACHE_DIR", "BaseEvaluation", "evaluation_key", "reuse_slot", "load", "save", "rng_states", "restore_rng"]

CACHE_DIR = ".base-eval"  # beside the run folders; run listings skip dot-folders
FORMAT = 1

# Fields that cannot change what the model computes at step 0, nor how it is evaluated.
_NEVER_DECIDE = {
    "training": {"epochs", "max_steps", "learning_rate", "gradient_accumulation", "scheduler", "warmup_ratio",
                 "weight_decay", "max_grad_norm", "optimizer", "loraplus_lr_ratio", "oom_retry", "logging_steps",
                 "eval_steps", "save_steps", "save_total_limit", "sample_steps", "sample_prompts",
                 "sample_max_new_tokens"},
    "eval": {"best_metric", "early_stopping_patience", "retention_warn_below"},
    "output": {"runs_root", "name", "run_dir", "group", "trackers"},
}
# The adapter's shape and scale: its output is exactly zero at step 0 while B starts at zero (and no DoRA
# magnitude rescales the base), so the step-0 model is the base, bit for bit, whatever these say.
_ADAPTER_SHAPE = {"r", "alpha", "dropout", "use_rslora", "preset", "include", "blocks", "target_modules",
                  "rank_pattern", "alpha_pattern"}
_ZERO_B_INITS = {"default", "gaussian"}


@dataclass(frozen=True)
class BaseEvaluation:
    """A step-0 evaluation as the run's callback saw it: ``trainer_metrics`` what the Trainer handed its callbacks
    (``eval_loss``, ``eval_runtime``, …, and ``eval_<scorer>``), ``event_metrics`` the ``Evaluation`` event's."""

    eval_loss: float
    trainer_metrics: dict[str, float]
    event_metrics: dict[str, float]
    from_run: str  # the run folder's name that computed it


def _decisive_fields(config: RunConfig) -> dict[str, Any]:
    data = config.to_dict()
    for section, names in _NEVER_DECIDE.items():
        for name in names:
            data.get(section, {}).pop(name, None)
    lora = data.get("lora", {})
    if lora.get("init", "default") in _ZERO_B_INITS and not lora.get("use_dora") and not config.model.init_adapter:
        for name in _ADAPTER_SHAPE:
            lora.pop(name, None)
    return data


class _Unreadable(Exception):
    """A data file that cannot be read: no key can vouch for it, so its run evaluates for itself."""


def _file_digest(path: str | Path) -> str:
    """The bytes of a data file, or of every file in a data folder (a saved dataset, a folder of shards), by name."""
    target = Path(path)
    try:
        if target.is_dir():
            digest = hashlib.sha256()
            for file in sorted(p for p in target.rglob("*") if p.is_file()):
                digest.update(f"{file.relative_to(target).as_posix()}\0{_file_digest(file)}\0".encode())
            return "folder:" + digest.hexdigest()
        digest = hashlib.sha256()
        with open(target, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:  # the run reads it or fails on its own; a shared result must not stand in for it
        raise _Unreadable(f"{target}: {exc.__class__.__name__}") from exc
    return digest.hexdigest()


def _folder_stats(folder: str | Path) -> list[list[Any]]:
    """Name, size and modification time of each file in ``folder`` (or of the file itself): the model weights are
    too large to hash at every run, and a model that changes is rewritten (a new time, usually a new size)."""
    path = Path(folder)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    out: list[list[Any]] = []
    for p in files:
        stat = p.stat()  # an OSError here: reuse_slot gives no slot
        out.append([str(p.relative_to(path)) if path.is_dir() else p.name, stat.st_size, stat.st_mtime_ns])
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    found = {"workbench": __version__}
    for package in ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "none"
    return found


def evaluation_key(config: RunConfig, compute: Compute, model_folder: str | Path) -> str:
    """The hash of everything that decides the step-0 evaluation of ``config`` (see the module docstring)."""
    files = {"data": [_file_digest(f) for f in [*config.data.train_files, *config.data.validation_files]],
             "retention": _file_digest(config.eval.retention_file) if config.eval.retention_file else None,
             "model": _folder_stats(model_folder),
             "source": _folder_stats(config.model.source)}
    if config.model.init_adapter:
        files["init_adapter"] = _folder_stats(config.model.init_adapter)
    blob = json.dumps({"format": FORMAT, "config": _decisive_fields(config), "files": files,
                       "compute": [compute.device, compute.precision, compute.weight_dtype, compute.compute_dtype],
                       "model_folder": str(model_folder), "versions": _versions()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def reuse_slot(config: RunConfig, run_dir: Path, compute: Compute, model_folder: str | Path, *,
               world_size: int, resumed: bool) -> Path | None:
    """Where this run's step-0 evaluation is kept for the other runs of its sweep; None when it is not shared, or
    when a data, reference or model file cannot be read (no key could vouch for it: the run evaluates itself)."""
    group = config.output.group
    if not group or resumed or world_size != 1 or config.model.task != "causal-lm" or config.training.method != "sft":
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", group)[:60] + "-" + hashlib.sha256(group.encode()).hexdigest()[:8]
    try:
        key = evaluation_key(config, compute, model_folder)
    except (_Unreadable, OSError):
        return None
    return run_dir.parent / CACHE_DIR / folder / f"{key}.json"


def load(slot: Path) -> BaseEvaluation | None:
    """The evaluation kept at ``slot``, or None (none yet, or a file that cannot be read: then the run evaluates)."""
    try:
        data = json.loads(slot.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            return None
        return BaseEvaluation(float(data["eval_loss"]), _numbers(data["trainer_metrics"]),
                              _numbers(data["event_metrics"]), str(data["from_run"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save(slot: Path, evaluation: BaseEvaluation) -> None:
    """Keep ``evaluation`` at ``slot``; raises OSError (a full disk, a read-only runs folder), which the caller turns
    into a message: the cache is a saving, never a reason for a run to fail."""
    slot.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, "eval_loss": evaluation.eval_loss, "trainer_metrics": evaluation.trainer_metrics,
              "event_metrics": evaluation.event_metrics, "from_run": evaluation.from_run}
    # json writes NaN/Infinity for a non-finite loss and reads them back: the replay shows what the run saw
    atomic_write_text(slot, json.dumps(record, indent=1, allow_nan=True))


def _numbers(data: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def rng_states() -> dict[str, Any]:
    """The state of every random generator training draws from (Python's, NumPy's, torch's CPU and CUDA ones)."""
    import random

    import numpy as np
    import torch

    states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                              "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
