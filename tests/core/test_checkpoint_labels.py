"""labels.json (a classifier's classes) is saved into every checkpoint, not only beside the final adapter: a
classification run killed while its final adapter was written, then finished from its last checkpoint, still has
its classes — and so does any checkpoint a user picks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from workbench.core import events as ev
from workbench.core.classification import LABELS_FILE, read_label_file
from workbench.core.config import RunConfig
from workbench.core.training import resume, run
from waiting import DEADLINE_S

ROWS = [{"text": t, "label": label} for label, texts in {
    "travel": ["Paris is the capital of France.", "capital of France", "the capital Paris", "France and Paris"],
    "animals": ["The quick brown fox jumps.", "the lazy dog", "a quick fox", "lazy brown dog"]}.items() for t in texts]

KILLED_IN_ADAPTER_SAVE = """
    import os, signal, sys
    from workbench.core import training
    from workbench.core.training import engine
    from workbench.core.config import RunConfig

    def die(*args, **kwargs):  # the final adapter is never written: only the checkpoints are
        os.kill(os.getpid(), signal.SIGKILL)

    engine.save_adapter = die
    training.run(RunConfig.from_toml(sys.argv[1]), run_dir=sys.argv[2])
"""


def make_config(base: Path, tmp_path: Path) -> RunConfig:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return RunConfig.from_dict({
        "model": {"source": str(base), "task": "sequence-classification"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "preset": "attention"},
        "data": {"train_files": [str(data)], "max_length": 32},
        "training": {"max_steps": 4, "save_steps": 2, "learning_rate": 1e-2, "batch_size": 4, "device": "cpu"},
        "output": {"runs_root": str(tmp_path / "runs")},
    })


def test_every_checkpoint_holds_the_label_set(tiny_model_dir, tmp_path):
    result = run(make_config(tiny_model_dir("llama", initializer_range=0.2), tmp_path), ev.NullSink())
    checkpoints = sorted((result.run_dir / "checkpoints").glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-2", "checkpoint-4"]
    final = (result.adapter_dir / LABELS_FILE).read_text(encoding="utf-8")
    for checkpoint in checkpoints:
        assert (checkpoint / LABELS_FILE).read_text(encoding="utf-8") == final
    labels = read_label_file(checkpoints[0])
    assert labels is not None and sorted(labels.names) == ["animals", "travel"]


@pytest.mark.subprocess
def test_a_classifier_finished_from_its_last_checkpoint_after_a_kill_keeps_its_labels(tiny_model_dir, tmp_path):
    cfg = make_config(tiny_model_dir("llama", initializer_range=0.2), tmp_path)
    cfg.save(tmp_path / "run.toml")
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_IN_ADAPTER_SAVE), str(tmp_path / "run.toml"),
                           str(killed)], capture_output=True, timeout=DEADLINE_S * 6)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert (killed / "checkpoints" / "checkpoint-4").is_dir() and not (killed / "adapter").exists()

    sink = ev.ListSink()
    result = resume(killed, sink)
    assert (result.status, result.final_step) == ("finished", 4) and sink.of(ev.Step) == []
    labels = read_label_file(result.adapter_dir)
    assert labels is not None and sorted(labels.names) == ["animals", "travel"]
    assert (result.adapter_dir / LABELS_FILE).read_bytes() == (killed / "checkpoints" / "checkpoint-4" /
                                                               LABELS_FILE).read_bytes()
