"""Training faults turned into errors that say what to change: a NaN or infinite loss (divergence), a step that
ran out of memory (and the smaller micro-batch to retry with), a full disk or a refused write while saving.

Every fault ends the run as "failed" (a diverged or crashed-out run is not the user's "stopped", whose
adapter is saved) with the newest complete checkpoint intact, so `workbench resume` can continue from it.
Nothing here imports torch or accelerate at module level: the engine imports this module on every run path.
"""

from __future__ import annotations

import errno
import math
import shlex
from pathlib import Path
from typing import Any

from ..config import RunConfig, TrainingConfig
from ..errors import OutputError, TrainingError
from ..fsutil import exception_chain, format_size, free_bytes, is_disk_full, mount_point
from ..runs import RUN_FILE, RunFolder, discard_unfinished_checkpoints, latest_checkpoint, list_checkpoints, newest_complete


def explain_failure(exc: BaseException) -> tuple[str, str]:
    text = str(exc).split("\n")[0]
    if "out of memory" in text.lower():
        return (f"out of memory: {text}",
                "lower training.batch_size (and raise gradient_accumulation to keep the effective batch), "
                "shorten data.max_length, or turn on training.gradient_checkpointing")
    return f"{type(exc).__name__}: {text}", ""


def divergence_error(config: RunConfig, precision: str, run_dir: Path, step: int, loss: float | None,
                      grad_norm: float | None) -> TrainingError:
    """The failure of a run whose loss, gradient norm or weights became NaN or infinite at ``step``."""
    if loss is not None and not math.isfinite(loss):
        what = f"the loss became {loss} at step {step}" + (f" (gradient norm {grad_norm:.4g})" if grad_norm is not None else "")
    elif grad_norm is not None and not math.isfinite(grad_norm):
        what = f"the gradient norm became {grad_norm} at step {step}" + (f" (loss {loss:.4g})" if loss is not None else "")
    else:
        what = f"the adapter weights became NaN or infinite at step {step}" + (f" (loss {loss:.4g})" if loss is not None else "")
    good = latest_checkpoint(run_dir)
    kept = f"the newest good checkpoint is {good.path.name}" if good else "the run has no checkpoint"
    t = config.training
    tips = [f"lower training.learning_rate (now {t.learning_rate:g}; try {t.learning_rate / 10:g})"]
    if precision == "fp16":
        tips.append("train in bf16 or fp32 instead of fp16 (training.precision), whose range overflows easily")
    if t.max_grad_norm > 0:
        tips.append(f"clip gradients harder (training.max_grad_norm, now {t.max_grad_norm:g}; try {t.max_grad_norm / 2:g})")
    else:
        tips.append("turn gradient clipping on (training.max_grad_norm = 1.0)")
    resume_hint = (f"; `workbench resume {shlex.quote(str(run_dir))}` continues from {good.path.name} with unchanged settings"
                   if good else "")
    return TrainingError(f"{what}: training diverged. Nothing was saved from these weights; {kept}",
                         "in a new run, " + "; or ".join(tips) + resume_hint)


def abandon(control: Any) -> Any:
    """A diverged run ends at this step and writes nothing: no checkpoint, no evaluation of broken weights."""
    control.should_training_stop = True
    control.should_save = False
    control.should_evaluate = False
    return control


class OutOfMemory(Exception):
    """A training step ran out of memory. Internal: ``_train_attempts`` retries, or raises a ``TrainingError``."""

    def __init__(self, detail: str, step: int):
        super().__init__(detail)
        self.detail, self.step = detail, step


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA / MPS / XPU / CPU allocator failures (torch.cuda.OutOfMemoryError is torch.OutOfMemoryError)."""
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(exc, torch.OutOfMemoryError) or should_reduce_batch_size(exc)


def free_device_memory() -> None:
    from accelerate.utils.memory import clear_device_cache

    clear_device_cache(garbage_collection=True)  # gc first: the cached blocks are only free once nothing holds them


def reset_peak_memory() -> None:
    """Start each attempt's memory peak afresh: the window trains many runs in one process, and CUDA's peak
    counters otherwise keep the largest run's (or an out-of-memory attempt's) peak for every later step."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def smaller_batch(t: TrainingConfig) -> tuple[int, int] | None:
    """(micro-batch, accumulation) to try after running out of memory: half the micro-batch, or for an odd size
    its largest divisor below half, with the accumulation raised so batch × accumulation stays exactly the same.
    None at a micro-batch of 1."""
    smaller = next((d for d in range(t.batch_size // 2, 0, -1) if t.batch_size % d == 0), None)
    return None if smaller is None else (smaller, t.gradient_accumulation * t.batch_size // smaller)


def oom_error(config: RunConfig, run_dir: Path, step: int, detail: str, retry: tuple[int, int] | None,
               world_size: int) -> TrainingError:
    t = config.training
    reason = (f"out of memory at step {step} with training.batch_size = {t.batch_size} "
              f"(gradient_accumulation {t.gradient_accumulation}): {detail}")
    other = "training.gradient_checkpointing = true and a shorter data.max_length save memory too"
    if retry is None:
        return TrainingError(reason, f"the micro-batch is already 1; {other}, and so do fewer adapted layers or a smaller model")
    smaller, accumulation = retry
    overrides = ["--set", f"training.batch_size={smaller}", "--set", f"training.gradient_accumulation={accumulation}"]
    command = ["workbench", "train", str(run_dir / RUN_FILE), *overrides]
    if config.output.run_dir:  # that run file names this (now used) folder: the retry needs another one
        command += ["--run-dir", f"{run_dir}-bs{smaller}"]
    hint = (f"retry with per-device batch size {smaller} and gradient accumulation {accumulation}, the same effective batch "
            f"of {t.batch_size * t.gradient_accumulation}: `{shlex.join(command)}`")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        hint += (f"; or, to continue this run from {checkpoint.path.name}, set those two values in {run_dir / RUN_FILE} "
                 f"and run `workbench resume {shlex.quote(str(run_dir))}`")
    if world_size > 1:
        hint += "; training.oom_retry cannot retry a multi-process (torchrun) run by itself"
    else:
        hint += "; or set training.oom_retry = true to retry like this automatically"
    return TrainingError(reason, f"{hint}. Besides, {other}.")


# torch.save's C++ writer drops the OS error: a full disk shows up as one of these.
_TORCH_WRITE_FAILURES = ("file write failed", "unexpected pos", "iostream error")


def _is_disk_full(exc: BaseException, folder: Path, needed: int) -> bool:
    if is_disk_full(exc):  # ENOSPC / EDQUOT, or their text (safetensors keeps only that)
        return True
    if any(isinstance(e, RuntimeError) and any(s in str(e) for s in _TORCH_WRITE_FAILURES) for e in exception_chain(exc)):
        return free_bytes(folder) < needed  # believe it when there is indeed too little room left
    return False


def checkpoint_disk_full(exc: BaseException, run_dir: Path, step: int, adapter_bytes: int) -> OutputError | None:
    """The error for a checkpoint that could not be written for lack of space, or None for another failure.

    The checkpoint was being written into its temporary folder (``trainer.AtomicCheckpointTrainer``), which is gone by now,
    so the previous checkpoints are untouched; what else is unfinished is removed here, to give space back."""
    folder = RunFolder(run_dir)
    target = folder.checkpoints_dir / f"checkpoint-{step}"
    checkpoints = list_checkpoints(folder)
    previous = newest_complete(checkpoints)
    # The previous checkpoint is the best estimate; without one: the adapter plus AdamW's two moments.
    needed = _folder_bytes(previous.path) if previous else 3 * adapter_bytes
    if not _is_disk_full(exc, target, needed):
        return None
    discard_unfinished_checkpoints(folder, checkpoints)  # gives their space back
    free, mount = free_bytes(target), mount_point(target)
    reason = (f"the disk is full: checkpoint-{step} could not be written to {folder.checkpoints_dir} "
              f"(file system {mount}: {format_size(free)} free now; a checkpoint needs about {format_size(needed)})")
    then = (f"`workbench resume {shlex.quote(str(run_dir))}` continues from {previous.path.name}" if previous
            else "start the run again (it has no complete checkpoint to resume from)")
    return OutputError(reason, f"{_room(needed, free, mount)} (a lower training.save_total_limit keeps fewer checkpoints), "
                               f"then {then}. The unfinished checkpoint-{step} was removed.")


def adapter_disk_full(exc: BaseException, run_dir: Path, step: int, adapter_bytes: int) -> OutputError | None:
    """The error for a final adapter that could not be written for lack of space, or None for another failure.
    The adapter is written aside and renamed into place, so an adapter saved earlier is still whole."""
    target = RunFolder(run_dir).adapter_dir
    checkpoint = latest_checkpoint(run_dir)
    weights = checkpoint.path / "adapter_model.safetensors" if checkpoint else None
    needed = weights.stat().st_size if weights is not None and weights.is_file() else adapter_bytes
    if not _is_disk_full(exc, run_dir, needed):
        return None
    free, mount = free_bytes(run_dir), mount_point(run_dir)
    reason = (f"the disk is full: the adapter of step {step} could not be written to {target} "
              f"(file system {mount}: {format_size(free)} free now; the adapter needs about {format_size(needed)})")
    then = (f"`workbench resume {shlex.quote(str(run_dir))}` continues from {checkpoint.path.name} and saves the adapter"
            if checkpoint else "train again: without a checkpoint (training.save_steps) these weights are lost")
    kept = f" The adapter saved earlier in {target} is unchanged." if target.is_dir() else ""
    return OutputError(reason, f"{_room(needed, free, mount)}, then {then}.{kept}")


# The file system refusing a write (not for lack of space: that is checkpoint_disk_full / adapter_disk_full).
_WRITE_REFUSALS = {errno.EACCES: "no permission", errno.EPERM: "not permitted", errno.EROFS: "read-only file system",
                   errno.ENOTDIR: "a file is in the way of a folder", errno.EEXIST: "something is in the way",
                   errno.EIO: "input/output error", errno.ENOENT: "a folder was removed"}


def write_refused(exc: BaseException, run_dir: Path, what: str) -> OutputError | None:
    """The error for a write into the run folder that the file system refused in the middle of a run (its
    permissions changed, it became read-only, a folder was removed), or None for another failure. The
    checkpoint being written was in its temporary folder, so earlier checkpoints are intact."""
    refused = next((e for e in exception_chain(exc) if isinstance(e, OSError) and e.errno in _WRITE_REFUSALS), None)
    if refused is None:
        return None
    path = refused.filename or run_dir
    if refused.filename2:
        path = f"{path} → {refused.filename2}"
    checkpoint = latest_checkpoint(run_dir)
    then = (f"`workbench resume {shlex.quote(str(run_dir))}` continues from {checkpoint.path.name}" if checkpoint
            else "start the run again (it has no complete checkpoint to resume from)")
    return OutputError(f"the file system refused to write {what}: {path}: {_WRITE_REFUSALS.get(refused.errno or 0, 'refused')} "
                       f"({refused.strerror or refused})",
                       f"make {run_dir} writable again for this user (check its permissions, its mount and the free "
                       f"space), then {then}")


def _room(needed: int, free: int, mount: Path) -> str:
    if needed > free:
        return f"free at least {format_size(needed - free)} on {mount}"
    return f"keep at least {format_size(needed)} free on {mount} (other files may have taken the space)"


def trainable_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

