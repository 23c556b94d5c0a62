"""Where a run trains and in which number formats: one rule for the engine, the estimates and the window.

``resolve_compute`` decides it once per run (``training.engine``), asking torch which devices and formats this
machine has, and the engine carries the resulting ``Compute`` from there: nothing downstream asks torch again.
``planned_compute`` applies the same rule to a device that is only being planned for (the memory estimate for
a GPU the window may not have), without asking the hardware or refusing anything.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import TrainingError

if TYPE_CHECKING:
    from .config import RunConfig

# training.precision → the torch dtype a mixed-precision run computes in (autocast); fp32 computes in the weights'.
_HALF_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Compute:
    """A run's device and number formats, resolved: no field is ever "auto"."""

    device: str  # "cuda", "mps", "cpu", …
    precision: str  # "bf16" | "fp16" | "fp32": the Trainer's mixed-precision mode
    weight_dtype: str  # torch dtype name the frozen base weights are held in
    compute_dtype: str  # torch dtype name activations are computed in

    def torch_weight_dtype(self) -> Any:
        import torch

        return getattr(torch, self.weight_dtype)


def resolve_compute(config: RunConfig) -> Compute:
    """The device and formats ``config`` trains with on this machine. Raises ``TrainingError`` for a device or a
    precision this machine does not have (fp16 on a CPU, bf16 on an old GPU, cuda without a GPU)."""
    device = choose_device(config.training.device)
    precision = choose_precision(config.training.precision, device)
    return _compute(config.model.dtype, device, precision)


def planned_compute(config: RunConfig, device: str) -> Compute:
    """The same rule for a device that is planned for, not asked about: 'auto' precision on a GPU is taken to be
    bf16 (what every GPU of the last generations runs), and nothing is refused."""
    return _compute(config.model.dtype, device, effective_precision(config.training.precision, device))


def _compute(model_dtype: str, device: str, precision: str) -> Compute:
    weights = training_weight_dtype(model_dtype, device, precision)
    return Compute(device, precision, weights, _HALF_DTYPES.get(precision, weights))


def choose_device(requested: str) -> str:
    """training.device on this machine: 'auto' is the CUDA GPU, else Apple's MPS, else the CPU.

    A torch built for the CPU alone answers 'auto' with the CPU before it is imported (``torch_has_gpu_backend``):
    a remembered module tree makes ``workbench inspect`` need no torch otherwise, and importing torch only to hear
    "no CUDA" cost more than the rest of the command."""
    if requested == "auto" and "torch" not in sys.modules and torch_has_gpu_backend() is False:
        return "cpu"
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


def torch_has_gpu_backend() -> bool | None:
    """Whether the installed torch can report a GPU to ``choose_device``, read from its ``torch/version.py``
    without importing it: False for a CPU-only build (``cuda`` and ``hip`` are None) on a system without Apple's
    MPS, whose ``torch.cuda.is_available()`` is False on any machine; True for a CUDA or ROCm build or on macOS;
    None when the file cannot be read (ask torch itself)."""
    if sys.platform == "darwin":
        return True
    try:
        spec = find_spec("torch")
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        text = (Path(folders[0]) / "version.py").read_text(encoding="utf-8") if folders else None
    except (OSError, ImportError, ValueError, UnicodeDecodeError):
        return None
    return None if text is None else gpu_backend_in_version_file(text)


def gpu_backend_in_version_file(text: str) -> bool | None:
    """True/False: whether a ``torch/version.py`` names a CUDA or ROCm (hip) toolkit; None when it does not say."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    values: dict[str, Any] = {}
    for node in tree.body:
        target: ast.expr
        value: ast.expr | None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in ("cuda", "hip") and isinstance(value, ast.Constant):
            values[target.id] = value.value
    if set(values) != {"cuda", "hip"}:
        return None  # a layout this rule does not know: torch decides
    return any(v is not None for v in values.values())


def choose_precision(requested: str, device: str) -> str:
    """bf16 where the GPU supports it, fp16 (with loss scaling) on older GPUs, fp32 on CPU — unless set."""
    import torch

    if requested != "auto":
        if device == "cpu" and requested == "fp16":
            raise TrainingError("training.precision fp16 needs a GPU", "use fp32 or bf16 on the CPU")
        if requested == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrainingError("this GPU does not support bf16", "set training.precision = 'fp16' or 'auto'")
        return requested
    return effective_precision(requested, device, bf16_supported=device == "cuda" and torch.cuda.is_bf16_supported())


def effective_precision(requested: str, device: str, *, bf16_supported: bool = True) -> str:
    """What 'auto' means on ``device``: bf16 on a CUDA GPU that has it (fp16 on one that has not), fp32 elsewhere."""
    if requested != "auto":
        return requested
    if device == "cuda":
        return "bf16" if bf16_supported else "fp16"
    return "fp32"


def training_weight_dtype(setting: str, device: str, precision: str) -> str:
    """The dtype the frozen base weights are held in while training.

    An explicit ``model.dtype`` wins. Otherwise: float32 on the CPU (half-precision matmuls there are slow and
    imprecise); on a GPU the compute precision (bf16 or fp16; bf16 when still 'auto'), or float32 for fp32 runs.
    """
    if setting != "auto":
        return setting
    if device == "cpu":
        return "float32"
    return {"bf16": "bfloat16", "fp16": "float16", "auto": "bfloat16"}.get(precision, "float32")
