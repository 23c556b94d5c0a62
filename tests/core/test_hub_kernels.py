"""core/hub_kernels.py: importing bitsandbytes (as peft does whenever it is installed) fetches no kernel from the Hub."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from workbench.core.hub_kernels import no_hub_kernels

# In a fresh interpreter: what happens when bitsandbytes' CPU backend asks kernels.get_kernel for its Hub kernel at
# import (only on a CPU with AVX512-BF16; elsewhere it never asks). The real get_kernel is replaced *inside the
# kernels module* by a recorder, the way a Hub fetch would be reached, with or without workbench.core first.
PROBE = r"""
import json, sys
import kernels
reached = []
def fetch(repo_id, *args, **kwargs):
    reached.append(repo_id)
    raise RuntimeError("the probe fetches nothing")
kernels.get_kernel = fetch
if sys.argv[1] == "with-workbench":
    import workbench.core
import bitsandbytes
from bitsandbytes.functional import has_avx512bf16
print(json.dumps({"reached": reached, "asks": bool(has_avx512bf16()), "restored": kernels.get_kernel is fetch,
                  "loader": type(bitsandbytes.__spec__.loader).__name__}))
"""


def probe(mode: str) -> tuple[dict, str]:
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("kernels")
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_bitsandbytes_imported_after_workbench_reaches_no_hub_fetch_and_prints_nothing():
    result, stderr = probe("with-workbench")
    assert result["loader"] == "_WrappedLoader", "the hook wrapped bitsandbytes' import"
    assert result["reached"] == [], "kernels.get_kernel was refused before it could fetch"
    assert result["restored"], "kernels works as before once bitsandbytes is imported"
    assert "kernels-community" not in stderr and "Failed to load" not in stderr, stderr[-2000:]


def test_without_the_hook_bitsandbytes_asks_the_hub():
    """The control: the same probe without workbench.core — what peft's import did before."""
    result, _ = probe("alone")
    if not result["asks"]:
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never asks for a Hub kernel here")
    assert result["reached"] == ["kernels-community/quantization-bitsandbytes"]


def test_kernels_imported_inside_the_block_is_patched_and_everything_is_restored():
    kernels = pytest.importorskip("kernels")
    loggers = [logging.getLogger(name) for name in ("bitsandbytes", "kernels")]
    before = kernels.get_kernel, [lg.level for lg in loggers]
    with pytest.raises(ValueError):
        with no_hub_kernels():
            with pytest.raises(RuntimeError, match="loads no kernel from the Hub unasked"):
                kernels.get_kernel("kernels-community/anything", version=1)
            assert all(lg.level == logging.ERROR for lg in loggers)
            raise ValueError("an import that fails")
    assert (kernels.get_kernel, [lg.level for lg in loggers]) == before
