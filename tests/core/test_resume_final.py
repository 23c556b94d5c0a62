"""A run is finished only when its final adapter is complete, and a resume never trains past the target.

The kill is real: a child process trains, and SIGKILLs itself half-way through writing the final adapter (its
first file written into ``.tmp-adapter.partial``), after the Trainer saved the last checkpoint. Resuming must
then finish the run from that checkpoint without training a step, with an adapter tensor-equal to a run that
was never interrupted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench.core import events as ev
from workbench.core.config import RunConfig
from workbench.core.control import RunControl
from workbench.core.errors import TrainingError
from workbench.core.runs import RunStatus, read_events, run_status, summarize_run
from workbench.core.training import resume, run
from waiting import DEADLINE_S

KILLED_IN_ADAPTER_SAVE = """
    import os, signal, sys
    from pathlib import Path
    from workbench.core import training
    from workbench.core.training import engine
    from workbench.core.config import RunConfig

    def save_then_die(peft_model, run_dir, *_args, **_kwargs):  # engine.save_adapter's signature
        partial = Path(run_dir) / ".tmp-adapter.partial"
        partial.mkdir()
        peft_model.save_pretrained(str(partial), safe_serialization=True)
        data = (partial / "adapter_model.safetensors").read_bytes()
        (partial / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])  # the write in flight
        os.kill(os.getpid(), signal.SIGKILL)

    engine.save_adapter = save_then_die
    training.run(RunConfig.from_toml(sys.argv[1]), run_dir=sys.argv[2])
"""


def make_config(model_dir: Path, tmp_path: Path, **training) -> RunConfig:
    rows = [(f"Question number {i}?", f"Answer {i}.") for i in range(8)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in rows))
    return RunConfig.from_dict({
        "model": {"source": str(model_dir)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "preset": "all-linear"},
        "data": {"train_files": [str(data)], "max_length": 32, "packing": False},
        "training": {"max_steps": 6, "batch_size": 2, "save_steps": 4, "logging_steps": 1, "learning_rate": 3e-3,
                     "scheduler": "cosine", "warmup_ratio": 0.0, "device": "cpu", **training},
        "output": {"runs_root": str(tmp_path / "runs")},
    })


def steps_in(run_dir: Path) -> list[int]:
    return [e.step for e in read_events(run_dir) if isinstance(e, ev.Step)]


def test_a_kill_during_the_final_adapter_save_is_finished_from_the_last_checkpoint(tiny_model_dir, tmp_path):
    cfg = make_config(tiny_model_dir("llama", initializer_range=0.3), tmp_path)
    cfg.save(tmp_path / "run.toml")
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_IN_ADAPTER_SAVE), str(tmp_path / "run.toml"),
                           str(killed)], capture_output=True, timeout=DEADLINE_S * 6)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    # What the kill left: the checkpoint of the last step (the Trainer saves at the end), a half-written
    # adapter under its temporary name only, and a run that is crashed, not finished.
    assert (killed / "checkpoints" / "checkpoint-6").is_dir() and not (killed / "adapter").exists()
    assert (killed / ".tmp-adapter.partial").is_dir()
    assert run_status(killed) is RunStatus.CRASHED

    sink = ev.ListSink()
    result = resume(killed, sink)
    assert (result.status, result.final_step) == ("finished", 6)
    assert sink.of(ev.Step) == [] and sink.of(ev.RunStarted) == [], "nothing trained: the model is not even loaded"
    message = sink.of(ev.Message)[0].text
    assert "checkpoint-6 holds the run's last step (6 of 6)" in message and "no step is trained" in message
    assert steps_in(killed) == [1, 2, 3, 4, 5, 6], "no step 7, no step twice"
    summary = summarize_run(killed)
    assert (summary.status, summary.step) == (RunStatus.FINISHED, 6)
    assert not (killed / ".tmp-adapter.partial").exists()

    straight = run(cfg, ev.NullSink(), run_dir=tmp_path / "straight")
    assert straight.final_step == 6
    got = load_file(str(killed / "adapter" / "adapter_model.safetensors"))
    want = load_file(str(straight.adapter_dir / "adapter_model.safetensors"))
    assert got.keys() == want.keys() and len(got) > 0
    assert all(torch.equal(got[k], want[k]) for k in want), "tensor-equal to the uninterrupted run's adapter"
    def adapter_config(folder: Path) -> dict:  # PEFT keeps target_modules as a set: its order varies by process
        config = json.loads((folder / "adapter_config.json").read_text())
        return {**config, "target_modules": sorted(config["target_modules"])}

    assert adapter_config(killed / "adapter") == adapter_config(straight.adapter_dir)

    with pytest.raises(TrainingError, match="already finished"):
        resume(killed)


def test_a_resume_that_is_stopped_before_its_first_step_does_not_say_nothing_was_trained(tiny_model_dir, tmp_path):
    control = RunControl()
    first = run(make_config(tiny_model_dir("llama", initializer_range=0.3), tmp_path, max_steps=8),
                ev.CallbackSink(lambda e: isinstance(e, ev.Step) and e.step == 4 and control.request_stop()), control)
    assert (first.status, first.final_step) == ("stopped", 4)
    again = RunControl()
    again.request_stop()  # pressed while the resumed run loads its model
    with pytest.raises(TrainingError) as stopped:
        resume(first.run_dir, control=again)
    assert "nothing was trained" not in stopped.value.hint
    assert "still at step 4" in stopped.value.hint and "workbench resume" in stopped.value.hint
    assert steps_in(first.run_dir) == [1, 2, 3, 4]


def test_the_file_system_refusing_a_checkpoint_write_fails_the_run_with_the_path_and_keeps_earlier_ones(
        tiny_model_dir, tmp_path, monkeypatch):
    """A permission change under checkpoints/ mid-run (injected at the write: the tests run as root, whom
    permissions do not stop): the run fails with a message naming the path, status.json says failed, the
    earlier checkpoint is intact, and once the folder is writable again the run resumes from it."""
    import errno

    from workbench.core.errors import OutputError
    from workbench.core.runs import list_checkpoints

    real_save = torch.save
    refusing = {"on": True}

    def save(obj, f, *args, **kwargs):
        if refusing["on"] and Path(f).parent.name == "checkpoint-4":
            raise PermissionError(errno.EACCES, "Permission denied", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    sink = ev.ListSink()
    cfg = make_config(tiny_model_dir("llama", initializer_range=0.3), tmp_path, save_steps=2)
    with pytest.raises(OutputError) as refused:
        run(cfg, sink)
    run_dir = Path(sink.of(ev.RunStarted)[0].run_dir)
    assert "the file system refused to write checkpoint-4" in refused.value.message
    assert "checkpoint-4" in refused.value.message and "no permission" in refused.value.message
    assert f"make {run_dir} writable again" in refused.value.hint and "continues from checkpoint-2" in refused.value.hint
    assert sink.of(ev.Failed)[0].reason == refused.value.message and not sink.of(ev.Failed)[0].traceback
    assert run_status(run_dir) is RunStatus.FAILED, "status.json is not left running"
    assert [(c.step, c.complete) for c in list_checkpoints(run_dir, thorough=True)] == [(2, True)]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-2"]

    refusing["on"] = False
    result = resume(run_dir)
    assert (result.status, result.final_step) == ("finished", 6) and steps_in(run_dir) == [1, 2, 3, 4, 5, 6]
