"""Importing workbench turns on CUDA's expandable segments unless the user chose an allocator setting.

The memory estimate is calibrated with them on (docs/benchmarks.md); without them one measured case reserved
2.9x its live tensors. Checked in fresh interpreters, since the variable must be set before CUDA allocates."""

import os
import subprocess
import sys

import pytest

SHOW = "import os, workbench; print(os.environ.get('PYTORCH_CUDA_ALLOC_CONF'), os.environ.get('PYTORCH_ALLOC_CONF'))"
NAMES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF")


def _run(**env):
    clean = {k: v for k, v in os.environ.items() if k not in NAMES}
    return subprocess.run([sys.executable, "-c", SHOW], env={**clean, **env}, capture_output=True, text=True,
                          check=True).stdout.split()


@pytest.mark.skipif(sys.platform != "linux", reason="expandable segments are a Linux feature of PyTorch")
@pytest.mark.subprocess
def test_expandable_segments_are_on_by_default():
    assert _run() == ["expandable_segments:True", "None"]


@pytest.mark.subprocess
def test_a_users_setting_is_kept_under_either_name():
    assert _run(PYTORCH_CUDA_ALLOC_CONF="max_split_size_mb:128") == ["max_split_size_mb:128", "None"]
    assert _run(PYTORCH_ALLOC_CONF="backend:cudaMallocAsync") == ["None", "backend:cudaMallocAsync"]
    assert _run(PYTORCH_HIP_ALLOC_CONF="expandable_segments:False") == ["None", "None"]  # ROCm's name
    assert _run(PYTORCH_CUDA_ALLOC_CONF="") == ["None"]  # set empty: PyTorch's own defaults, on purpose
