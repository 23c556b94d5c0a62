"""Stop a run at a step, resume it, and train the same configuration straight through: the three results, for tests
that check a resumed run lands on the uninterrupted curve (preference runs compare their reward margins)."""

from __future__ import annotations

import json
from pathlib import Path


def stopped_resumed_and_straight(config, stop_at: int, tmp_path: Path):
    """(the stopped run, the resumed result, the straight run) for ``config``, stopped after step ``stop_at``."""
    from workbench.core import events as ev
    from workbench.core.control import RunControl
    from workbench.core.training import resume, run

    control = RunControl()
    stopped = run(config, ev.CallbackSink(lambda e: e.kind == "step" and e.step == stop_at and control.request_stop()),
                  control, run_dir=tmp_path / "stopped")
    resumed = resume(stopped.run_dir, ev.ListSink()) if stopped.status == "stopped" else None
    straight = run(config, ev.ListSink(), run_dir=tmp_path / "straight")
    return stopped, resumed, straight


def step_metric(run_dir: Path, name: str) -> list[float]:
    """One metric of every logged step, from the run folder's metrics.jsonl."""
    return [e["metrics"][name] for e in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
            if e["kind"] == "step"]
