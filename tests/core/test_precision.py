"""core/precision.py: the one rule for a run's device and number formats, used by the engine (resolve_compute, once
per run) and by the memory estimate (planned_compute, for a device that may not be here)."""

from __future__ import annotations

import pytest
import torch

from workbench.core.config import RunConfig
from workbench.core.errors import TrainingError
from workbench.core.precision import Compute, planned_compute, resolve_compute


def config(precision: str = "auto", device: str = "cpu", dtype: str = "auto") -> RunConfig:
    return RunConfig.from_dict({"model": {"source": "some/model", "dtype": dtype},
                                "training": {"precision": precision, "device": device}})


@pytest.mark.parametrize("precision, dtype, expected", [
    ("auto", "auto", Compute("cpu", "fp32", "float32", "float32")),
    ("fp32", "auto", Compute("cpu", "fp32", "float32", "float32")),
    ("bf16", "auto", Compute("cpu", "bf16", "float32", "bfloat16")),  # autocast over float32 weights
    ("fp32", "bfloat16", Compute("cpu", "fp32", "bfloat16", "bfloat16")),  # an explicit model.dtype wins
])
def test_a_cpu_run_resolves_to(precision, dtype, expected):
    assert resolve_compute(config(precision, "cpu", dtype)) == expected
    assert planned_compute(config(precision, "cpu", dtype), "cpu") == expected  # the estimate agrees


def test_what_the_cpu_cannot_do_is_refused_with_the_setting_to_change():
    with pytest.raises(TrainingError, match="training.precision fp16 needs a GPU"):
        resolve_compute(config("fp16", "cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="training.device is 'cuda'"):
            resolve_compute(config("auto", "cuda"))


@pytest.mark.parametrize("precision, dtype, device, expected", [
    ("auto", "auto", "cuda", Compute("cuda", "bf16", "bfloat16", "bfloat16")),
    ("fp16", "auto", "cuda", Compute("cuda", "fp16", "float16", "float16")),
    ("fp32", "auto", "cuda", Compute("cuda", "fp32", "float32", "float32")),
    ("auto", "float32", "cuda", Compute("cuda", "bf16", "float32", "bfloat16")),
    # On a Mac 'auto' trains in fp32 (the engine's rule): the estimate used to plan bfloat16 weights there.
    ("auto", "auto", "mps", Compute("mps", "fp32", "float32", "float32")),
    ("fp16", "auto", "cpu", Compute("cpu", "fp16", "float32", "float16")),  # planned, not refused
])
def test_the_estimate_plans_a_device_with_the_engines_rule(precision, dtype, device, expected):
    assert planned_compute(config(precision, device, dtype), device) == expected


def test_the_weight_dtype_is_a_torch_dtype():
    assert resolve_compute(config()).torch_weight_dtype() is torch.float32


CPU_BUILD = ("from typing import Optional\n__version__ = '2.13.0+cpu'\ncuda: Optional[str] = None\n"
             "hip: Optional[str] = None\nrocm: Optional[str] = None\n")


@pytest.mark.parametrize("text, expected", [
    (CPU_BUILD, False),
    (CPU_BUILD.replace("cuda: Optional[str] = None", "cuda: Optional[str] = '12.8'"), True),
    (CPU_BUILD.replace("hip: Optional[str] = None", "hip = '6.4.43482'"), True),  # ROCm answers torch.cuda too
    ("__version__ = '2.13.0'\ncuda = None\n", None),  # says nothing of hip: torch decides
    ("cuda = compute()\nhip = None\n", None),
    ("def broken(:\n", None),
])
def test_the_torch_build_is_read_from_its_version_file(text, expected):
    from workbench.core.precision import gpu_backend_in_version_file

    assert gpu_backend_in_version_file(text) is expected


def test_the_answer_without_importing_torch_is_the_one_torch_gives(tmp_path):
    """choose_device('auto') in a fresh interpreter (torch not imported: the version-file rule) against torch's own
    answer in another: on this machine the rule must not skip a GPU torch would see, nor import torch needlessly."""
    import subprocess
    import sys

    rule = subprocess.run([sys.executable, "-c", "import sys\nfrom workbench.core.precision import choose_device, "
                           "torch_has_gpu_backend\nprint(choose_device('auto'), torch_has_gpu_backend(), "
                           "'torch' in sys.modules)"], capture_output=True, text=True, timeout=300)
    assert rule.returncode == 0, rule.stderr
    device, has_gpu_backend, imported = rule.stdout.split()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    assert device == ("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    assert has_gpu_backend == str(torch.version.cuda is not None or torch.version.hip is not None or sys.platform == "darwin")
    assert imported == str(has_gpu_backend != "False")  # torch is imported only when it has something to say
