"""The kill harness (bench/kill_harness.py), reduced to four trials: real ``workbench train``, ``export``
and ``merge`` processes are killed with SIGKILL at moments found by watching their files, then resumed
or rerun (in this process, to save start-up time), and every output under a final name is checked with
the harness's own readers. The full run (24 trials, resumes killed again too) is in docs/reliability.md.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_harness():
    spec = importlib.util.spec_from_file_location("kill_harness", REPO / "bench" / "kill_harness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.subprocess
def test_sigkill_never_leaves_damaged_output_and_costs_at_most_one_checkpoint_interval(tmp_path):
    kh = load_harness()
    setup = kh.build(tmp_path, "test", max_steps=20, save_steps=4, log=lambda *a: None)
    # Seed 2 draws: a kill early in the writing of checkpoint-4 (nothing to resume: a rerun), a portable
    # export, a kill after step 10 (a resume from checkpoint 8), and a merge.
    harness = kh.Harness(setup, seed=2, in_process=True)
    report = harness.run([("train", "checkpoint"), ("export", "writing"), ("train", "step"), ("merge", "writing")])
    print(report.summary())

    assert report.failures == [] and report.corrupted == 0
    assert report.trials == Counter(train=2, export=1, merge=1)
    assert report.outputs_checked > 0
    assert report.max_steps_lost <= setup.save_steps
    assert report.resumes + report.reruns >= 2, "both killed trainings were continued"
