"""Waiting on another process: poll what it writes until a condition holds, within a deadline.

The writer is a separate process (a training, a recorder, a heartbeat thread in a child): its files are all
there is to wait on, no signal crosses, so these waits poll; each is bounded and says what it waited for.
"""

from __future__ import annotations

import subprocess
import time
from typing import Callable

import pytest

DEADLINE_S = 20.0  # generous: the machine is shared


def wait_until(condition: Callable[[], object], what: str, timeout: float = DEADLINE_S,
               proc: subprocess.Popen | None = None, interval: float = 0.01) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds, or as soon as ``proc`` (the writer,
    when given) has ended without the condition holding (with its stderr, when that was piped)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None and not condition():  # it may have written, then ended
            stderr = proc.stderr.read() if proc.stderr is not None else ""
            pytest.fail(f"the process ended (code {proc.returncode}) before {what}\n{stderr}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)
