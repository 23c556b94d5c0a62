"""Headless engine of LoRA Workbench. Never imports Qt (enforced by tests/core/test_headless.py).

Submodules import torch/transformers lazily where they can, so ``import workbench.core`` is cheap.
"""
