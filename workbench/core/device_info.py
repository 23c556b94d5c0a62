"""What the window says about the machine a run will train on: the device, and how much memory it has free.

A description for people and for the memory estimate, not the engine's device choice (``training.choose_device``
makes that when the run starts): the window shows it when a model opens, beside the estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DeviceInfo", "describe_device"]


@dataclass(frozen=True)
class DeviceInfo:
    text: str  # "GPU: NVIDIA H200, 139.2 GiB free" / "CPU, 12.3 GiB RAM available"
    available_bytes: int  # free GPU memory, or available RAM: what the memory estimate is compared with
    kind: str  # "cuda" or "cpu": the device the estimate is made for


def describe_device(wanted: str = "auto") -> DeviceInfo:
    """The device a run asking for ``wanted`` ("auto", "cuda", "cpu", ...) trains on, and its free memory.

    "auto" and "cuda" mean the current CUDA device when there is one; anything else (or no GPU) means the CPU.
    """
    import psutil
    import torch

    if wanted in ("auto", "cuda") and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return DeviceInfo(f"GPU: {torch.cuda.get_device_name()}, {free / 2**30:.1f} GiB free", int(free), "cuda")
    available = int(psutil.virtual_memory().available)
    return DeviceInfo(f"CPU, {available / 2**30:.1f} GiB RAM available", available, "cpu")
