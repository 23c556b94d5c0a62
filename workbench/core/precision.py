"""Where a run trains and in which precision: one rule for the engine, the estimates and the window.

Resolved once per run (``training.engine``) and carried from there; everything that needs the device or the
precision of a run takes the resolved values instead of asking torch again.
"""

from __future__ import annotations

from .errors import TrainingError


def choose_device(requested: str) -> str:
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingError("training.device is 'cuda' but no CUDA GPU is available", "set training.device = 'auto' or 'cpu'")
    return requested


def choose_precision(requested: str, device: str) -> str:
    """bf16 where the GPU supports it, fp16 (with loss scaling) on older GPUs, fp32 on CPU — unless set."""
    import torch

    if requested != "auto":
        if device == "cpu" and requested == "fp16":
            raise TrainingError("training.precision fp16 needs a GPU", "use fp32 or bf16 on the CPU")
        if requested == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrainingError("this GPU does not support bf16", "set training.precision = 'fp16' or 'auto'")
        return requested
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"
