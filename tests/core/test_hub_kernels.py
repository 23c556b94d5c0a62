"""core/hub_kernels.py: importing bitsandbytes (as peft does whenever it is installed) fetches no kernel from the Hub."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from workbench.core.hub_kernels import hub_kernels_offline

# In a fresh interpreter: record what kernels.get_kernel sees of the Hub when bitsandbytes' CPU backend asks for its
# Hub kernel at import (only on a CPU with AVX512-BF16; elsewhere it never asks), with or without workbench.core first.
PROBE = r"""
import json, sys
import huggingface_hub.constants as hub
import kernels
seen = []
def get_kernel(repo_id, *args, **kwargs):
    seen.append({"repo": repo_id, "offline": hub.HF_HUB_OFFLINE})
    raise RuntimeError("the probe fetches nothing")
kernels.get_kernel = get_kernel
if sys.argv[1] == "with-workbench":
    import workbench.core
import bitsandbytes
from bitsandbytes.functional import has_avx512bf16
print(json.dumps({"seen": seen, "offline_after": hub.HF_HUB_OFFLINE, "asks": bool(has_avx512bf16()),
                  "loader": type(bitsandbytes.__spec__.loader).__name__}))
"""


def probe(mode: str) -> tuple[dict, str]:
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("kernels")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_bitsandbytes_imported_after_workbench_asks_kernels_offline_and_prints_nothing():
    result, stderr = probe("with-workbench")
    assert result["loader"] == "_OfflineLoader", "the hook wrapped bitsandbytes' import"
    assert result["offline_after"] is False, "other Hub downloads (models, tokenizers) stay online"
    if result["asks"]:  # this CPU has AVX512-BF16: bitsandbytes asked for its Hub kernel
        assert result["seen"] and all(call["offline"] is True for call in result["seen"]), result
    assert "kernels-community" not in stderr and "Failed to load" not in stderr, stderr[-2000:]


def test_without_the_hook_bitsandbytes_would_ask_the_hub_online():
    """The control: the same probe without workbench.core — what peft's import did before."""
    result, _ = probe("alone")
    if not result["asks"]:
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never asks for a Hub kernel here")
    assert result["seen"] and result["seen"][0]["offline"] is False


def test_the_offline_block_restores_the_hub_setting_and_the_loggers():
    from huggingface_hub import constants

    loggers = [logging.getLogger(name) for name in ("bitsandbytes", "kernels")]
    before = constants.HF_HUB_OFFLINE, [lg.level for lg in loggers]
    with pytest.raises(ValueError):
        with hub_kernels_offline():
            assert constants.HF_HUB_OFFLINE is True
            assert all(lg.level == logging.ERROR for lg in loggers)
            raise ValueError("an import that fails")
    assert (constants.HF_HUB_OFFLINE, [lg.level for lg in loggers]) == before
