"""What the window says about the machine a run will train on: the device, and how much memory it has free.

A description for people and for the memory estimate, made with the engine's device rule
(``precision.choose_device``, which the run applies again when it starts): the window shows it when a model
opens, beside the estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DeviceInfo", "describe_device"]


@dataclass(frozen=True)
class DeviceInfo:
    text: str  # "GPU: NVIDIA H200, 139.2 GiB free" / "CPU, 12.3 GiB RAM available"
    available_bytes: int  # free GPU memory, or available RAM: what the memory estimate is compared with
    kind: str  # "cuda" or "cpu": the device the memory estimate is made for


def describe_device(wanted: str = "auto") -> DeviceInfo:
    """The device a run asking for ``wanted`` ("auto", "cuda", "cpu", ...) trains on (the engine's own rule,
    ``precision.choose_device``), and its free memory. A "cuda" that this machine lacks is described as the CPU:
    the window shows what is there, and the run itself refuses to start with the engine's message."""
    import psutil
    import torch

    from .errors import TrainingError
    from .precision import choose_device

    try:
        device = choose_device(wanted)
    except TrainingError:
        device = "cpu"
    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        return DeviceInfo(f"GPU: {torch.cuda.get_device_name()}, {free / 2**30:.1f} GiB free", int(free), "cuda")
    available = int(psutil.virtual_memory().available)
    if device == "mps":  # unified memory: the estimate is made as for the CPU, against the same RAM
        return DeviceInfo(f"Apple GPU (MPS), {available / 2**30:.1f} GiB memory available", available, "cpu")
    return DeviceInfo(f"CPU, {available / 2**30:.1f} GiB RAM available", available, "cpu")
