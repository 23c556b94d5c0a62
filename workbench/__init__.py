"""LoRA Workbench: point-and-click LoRA fine-tuning on a workstation."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# CUDA's caching allocator fragments badly under LoRA training's mix of large short-lived buffers (the logits
# and the loss's float32 copies): on an H100 a 1.5B model at 1 x 4096 tokens reserved 26.3 GiB for 10.5 GiB of
# live tensors; with expandable segments 11.9 GiB, and training ran faster (bench/gpu_check.py,
# docs/benchmarks.md). The memory estimate is calibrated with them on. PyTorch reads the setting when CUDA
# first allocates, so it is set here, on import; a setting the user made (under any of its names, ROCm's too,
# even an empty one) is kept.
# Linux only: elsewhere PyTorch does not support expandable segments and would warn.
_ALLOCATOR_SETTINGS = {"PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF"}
if _sys.platform == "linux" and not _ALLOCATOR_SETTINGS & _os.environ.keys():
    _os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
