"""`workbench` with no display server says how to get one instead of crashing inside Qt."""

import os
import subprocess
import sys

import pytest


@pytest.mark.subprocess
def test_no_display_gives_instructions_and_nonzero_exit():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    out = subprocess.run([sys.executable, "-m", "workbench"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2
    assert "no display server found" in out.stderr and "xvfb-run" in out.stderr
    assert "Traceback" not in out.stderr
