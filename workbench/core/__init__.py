"""Headless engine of LoRA Workbench. Never imports Qt (enforced by tests/core/test_headless.py).

Submodules import torch/transformers lazily where they can, so ``import workbench.core`` is cheap.
"""

from .hub_kernels import install as _install_hub_kernels_hook

_install_hub_kernels_hook()  # bitsandbytes' import must not fetch a kernel from the Hub (core/hub_kernels.py)
