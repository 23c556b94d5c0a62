"""Real CPU training runs on tiny models: loss, run folder, PEFT reload, determinism, stop/pause/resume, CLI."""

import json
import threading
from pathlib import Path

import pytest
import torch

from workbench.core import events as ev
from workbench.core.config import RunConfig
from workbench.core.control import RunControl
from workbench.core.training import resume, run

FACTS = [
    ("What is the capital of France?", "Paris."),
    ("Two plus two?", "Four."),
    ("Translate cat to French.", "chat"),
    ("Colour of the sky?", "Blue."),
]


@pytest.fixture
def model_dir(tiny_model_dir):
    """Tiny models with a wide weight initialisation: at the default 0.02 a 64-wide random model cannot
    produce confident logits at all, whatever the adapter learns."""
    return lambda arch="llama": tiny_model_dir(arch, initializer_range=0.3)


def write_data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "facts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in FACTS))
    return path


def make_config(model_dir: Path, tmp_path: Path, **training) -> RunConfig:
    return RunConfig.from_dict({
        "model": {"source": str(model_dir)},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "preset": "all-linear"},
        "data": {"train_files": [str(write_data(tmp_path))], "max_length": 64},
        # The CPU path, pinned: these tests compare exact numbers (fp32, 1e-5) and run two gloo processes, which
        # on a GPU machine "auto" would turn into bf16 on CUDA and two processes on one GPU (seen on an H100:
        # six failures, none of them the engine's). The CUDA path is checked by bench/gpu_check.py.
        "training": {"max_steps": 40, "learning_rate": 1e-2, "batch_size": 4, "warmup_ratio": 0.0,
                     "scheduler": "constant", "device": "cpu", "logging_steps": 1, **training},
        "output": {"runs_root": str(tmp_path / "runs")},
    })


def steps_in(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e["step"] for e in map(json.loads, lines) if e["kind"] == "step"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.slow
def test_training_learns_and_saves_a_peft_adapter(arch, model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sink = ev.ListSink()
    result = run(make_config(model_dir(arch), tmp_path), sink)
    assert result.status == "finished" and result.final_step == 40
    losses = [e.loss for e in sink.of(ev.Step)]
    assert losses[-1] <= 0.5 * losses[0], losses

    run_dir = result.run_dir
    assert (run_dir / "run.toml").is_file()
    assert RunConfig.from_toml(run_dir / "run.toml").lora.target_modules, "run.toml records the resolved modules"
    assert steps_in(run_dir) == list(range(1, 41))
    kinds = [json.loads(line)["kind"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert kinds[0] in ("message", "run_started") and kinds[-1] == "finished"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (run_dir / "adapter").iterdir()}
    started = sink.of(ev.RunStarted)[0]
    assert started.device == "cpu" and started.precision == "fp32" and started.trainable_params > 0
    finished = sink.of(ev.Finished)[0]
    assert finished.status == "finished" and Path(finished.adapter_path) == run_dir / "adapter"

    # PEFT alone loads the adapter, and it changes the model's output
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 120]])
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir(arch)), run_dir / "adapter").eval()
    plain = AutoModelForCausalLM.from_pretrained(model_dir(arch)).eval()
    with torch.no_grad():
        assert not torch.allclose(loaded(ids).logits, plain(ids).logits, atol=1e-3), "the adapter changed nothing"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.slow
def test_saved_adapter_matches_in_memory_model(arch, model_dir, tmp_path, monkeypatch):
    """Compare with the model as it was at the end of training (captured through the sink)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from workbench.core.training import engine

    captured = {}
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    save_adapter = engine.save_adapter

    def save_and_capture(peft_model, run_dir, *args, **kwargs):  # record the trained model's logits, then save as usual
        with torch.no_grad():
            captured["logits"] = peft_model.eval()(input_ids=ids).logits.clone()
        return save_adapter(peft_model, run_dir, *args, **kwargs)

    monkeypatch.setattr(engine, "save_adapter", save_and_capture)
    result = run(make_config(model_dir(arch), tmp_path, max_steps=8))
    base = AutoModelForCausalLM.from_pretrained(model_dir(arch), dtype=torch.float32).eval()
    loaded = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    with torch.no_grad():
        assert (loaded(input_ids=ids).logits - captured["logits"]).abs().max() <= 1e-5


@pytest.mark.slow
def test_same_seed_same_loss_curve(model_dir, tmp_path):
    a, b = ev.ListSink(), ev.ListSink()
    run(make_config(model_dir(), tmp_path / "a", max_steps=6), a)
    run(make_config(model_dir(), tmp_path / "b", max_steps=6), b)
    assert [e.loss for e in a.of(ev.Step)] == [e.loss for e in b.of(ev.Step)]


def test_stop_saves_adapter_and_checkpoint(model_dir, tmp_path):
    control = RunControl()

    def on_event(event):
        if isinstance(event, ev.Step) and event.step == 3:
            control.request_stop()

    result = run(make_config(model_dir(), tmp_path), ev.CallbackSink(on_event), control)
    assert result.status == "stopped" and result.final_step == 3
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert (result.run_dir / "checkpoints" / "checkpoint-3").is_dir()
    from workbench.core.runs import run_status

    assert run_status(result.run_dir).value == "stopped"


@pytest.mark.slow
def test_pause_blocks_between_steps_and_resumes(model_dir, tmp_path):
    control = RunControl()
    seen = []

    def on_event(event):
        seen.append(event)
        if isinstance(event, ev.Step) and event.step == 2:
            control.request_pause()
        if isinstance(event, ev.Paused):
            # resume from another thread, as the window would; the engine must be blocked meanwhile
            threading.Thread(target=control.request_resume).start()

    result = run(make_config(model_dir(), tmp_path, max_steps=5), ev.CallbackSink(on_event), control)
    kinds = [(e.kind, getattr(e, "step", None)) for e in seen if e.kind in ("step", "paused", "resumed")]
    assert kinds == [("step", 1), ("step", 2), ("paused", 2), ("resumed", 2), ("step", 3), ("step", 4), ("step", 5)]
    assert result.status == "finished"


def test_resume_continues_step_counter_without_gaps(model_dir, tmp_path):
    control = RunControl()

    def on_event(event):
        if isinstance(event, ev.Step) and event.step == 5:
            control.request_stop()

    first = run(make_config(model_dir(), tmp_path, max_steps=10, save_steps=2), ev.CallbackSink(on_event), control)
    assert first.status == "stopped" and first.final_step == 5
    sink = ev.ListSink()
    second = resume(first.run_dir, sink)
    assert second.status == "finished" and second.final_step == 10
    assert sink.of(ev.RunStarted)[0].resumed_from_step == 5
    assert steps_in(first.run_dir) == list(range(1, 11)), "no step repeated or skipped in metrics.jsonl"


@pytest.mark.subprocess
def test_resume_after_a_crash_reproduces_the_uninterrupted_run(model_dir, tmp_path):
    """Killed mid-run, past its last checkpoint: resuming must continue data order, optimizer, schedule and
    dropout exactly, so the loss curve equals that of a run that was never interrupted."""
    import subprocess
    import sys

    from waiting import wait_until

    rows = [(f"Question number {i}?", f"Answer {i}.") for i in range(16)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in rows))
    # A long schedule that both runs share; each is stopped at step 12 (the crashed one is killed at ~6).
    cfg = make_config(model_dir(), tmp_path, max_steps=2000, batch_size=2, save_steps=4, scheduler="cosine",
                      learning_rate=3e-3).copy_with(data={"train_files": [str(data)], "packing": False},
                                                      lora={"dropout": 0.1})
    cfg.save(tmp_path / "run.toml")

    def stop_at_12():
        control = RunControl()
        return control, ev.CallbackSink(lambda e: e.kind == "step" and e.step == 12 and control.request_stop())

    crashed = tmp_path / "crashed"
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "train", str(tmp_path / "run.toml"), "--run-dir", str(crashed),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: (crashed / "metrics.jsonl").exists() and max(steps_in(crashed) or [0]) >= 6,
               "step 6 in metrics.jsonl (the training process must still be running)", timeout=180, proc=proc,
               interval=0.02)
    proc.kill()
    proc.wait()
    control, sink = stop_at_12()
    resumed = resume(crashed, sink, control)
    assert resumed.status == "stopped" and resumed.final_step == 12
    assert steps_in(crashed) == list(range(1, 13)), "steps after the last checkpoint are dropped, then redone once"

    control, sink = stop_at_12()
    straight = run(cfg, sink, control, run_dir=tmp_path / "straight")

    def losses(d):
        return [e["loss"] for e in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if e["kind"] == "step"]

    assert losses(crashed) == pytest.approx(losses(straight.run_dir), rel=1e-5)


def test_cli_train_runs_and_resume(model_dir, tmp_path, capsys):
    from workbench.cli import main

    cfg = make_config(model_dir(), tmp_path, max_steps=3)
    cfg.save(tmp_path / "run.toml")
    code = main(["train", str(tmp_path / "run.toml"), "--set", "training.max_steps=4", "--run-dir", str(tmp_path / "r1")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "finished: step 4" in out.out and "4/4" in out.err
    assert steps_in(tmp_path / "r1") == [1, 2, 3, 4]
    code = main(["train", str(tmp_path / "missing.toml")])
    assert code == 2 and "file not found" in capsys.readouterr().err


def test_gradient_checkpointing_gives_the_same_losses(model_dir, tmp_path):
    plain, ckpt = ev.ListSink(), ev.ListSink()
    run(make_config(model_dir(), tmp_path / "a", max_steps=4), plain)
    run(make_config(model_dir(), tmp_path / "b", max_steps=4, gradient_checkpointing=True), ckpt)
    assert [e.loss for e in ckpt.of(ev.Step)] == pytest.approx([e.loss for e in plain.of(ev.Step)], rel=1e-5)


@pytest.mark.slow
def test_samples_before_and_during_training_and_eval_events(model_dir, tmp_path):
    sink = ev.ListSink()
    cfg = make_config(model_dir(), tmp_path, max_steps=6, sample_steps=3, sample_prompts=["What is the capital of France?"],
                      sample_max_new_tokens=4, eval_steps=3)
    cfg = cfg.copy_with(data={"validation_files": [str(write_data(tmp_path / "val"))]})
    run(cfg, sink)
    samples = sink.of(ev.Sample)
    assert [s.step for s in samples] == [0, 3, 6], "a 'before' sample at step 0, then every 3 steps"
    assert all(s.prompt == "What is the capital of France?" for s in samples)
    assert samples[0].completion != samples[-1].completion, "training changed what the model says"
    evals = sink.of(ev.Evaluation)
    assert [e.step for e in evals] == [0, 3, 6], "the base model's loss first, then every 3 steps"
    assert evals[-1].eval_loss < evals[0].eval_loss
    assert sink.of(ev.Finished)[0].summary["best_eval_loss"] == pytest.approx(evals[-1].eval_loss)


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.slow
def test_checkpoints_are_written_aside_flushed_and_renamed_into_place(model_dir, tmp_path, monkeypatch):
    """Every checkpoint file is written under checkpoints/.tmp-checkpoint-N.partial/, flushed there, and the
    folder appears as checkpoint-N only whole; rotation (save_total_limit) removes old ones through a
    temporary name; the checkpoint event and the recorder's flush come after the rename; and the Trainer's
    log_history stops growing at LOG_HISTORY_KEEP entries while metrics.jsonl keeps every step."""
    import workbench.core.fsutil as fsutil
    import workbench.core.runs.recorder as runs
    from workbench.core.training import callback
    from workbench.core.runs import list_checkpoints

    monkeypatch.setattr(callback, "LOG_HISTORY_KEEP", 3)
    written, synced, sealed, seen_at_event = [], [], [], []
    real_save, real_sync, real_seal = torch.save, fsutil.fsync_tree, runs.fsync_tree

    def save(obj, f, *args, **kwargs):
        written.append(Path(f))
        return real_save(obj, f, *args, **kwargs)

    def sync(path):  # the engine's flush: in staging, before the final name exists
        path = Path(path)
        synced.append((path, (path.parent.parent / path.name).exists()))
        return real_sync(path)

    def seal(path):  # the recorder's flush when the event arrives: the published folder
        sealed.append(Path(path))
        return real_seal(path)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(fsutil, "fsync_tree", sync)
    monkeypatch.setattr(runs, "fsync_tree", seal)

    def on_event(event):
        if isinstance(event, ev.CheckpointSaved):
            folder = Path(event.path)
            seen_at_event.append((folder.name, (folder / "trainer_state.json").is_file(),
                                  sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(".tmp-"))))

    result = run(make_config(model_dir(), tmp_path, max_steps=8, save_steps=2, save_total_limit=2), ev.CallbackSink(on_event))
    checkpoints_dir = result.run_dir / "checkpoints"
    in_checkpoints = [p for p in written if checkpoints_dir in p.parents]
    assert in_checkpoints and all(p.parent.parent.name == f".tmp-{p.parent.name}.partial" for p in in_checkpoints), in_checkpoints
    assert [(p.name, existed) for p, existed in synced if p.parent.name.startswith(".tmp-checkpoint-")] == [
        (f"checkpoint-{n}", False) for n in (2, 4, 6, 8)], "flushed in staging, before the rename"
    assert seen_at_event == [(f"checkpoint-{n}", True, []) for n in (2, 4, 6, 8)], "the event names the published folder"
    assert sealed == [checkpoints_dir / f"checkpoint-{n}" for n in (2, 4, 6, 8)]
    assert sorted(p.name for p in checkpoints_dir.iterdir()) == ["checkpoint-6", "checkpoint-8"], "rotated, nothing left over"
    assert all(c.complete for c in list_checkpoints(result.run_dir, thorough=True))

    state = json.loads((checkpoints_dir / "checkpoint-8" / "trainer_state.json").read_text())
    assert len(state["log_history"]) == 3 and state["log_history"][-1]["step"] == 8
    assert steps_in(result.run_dir) == list(range(1, 9)), "metrics.jsonl keeps every step"


@pytest.mark.slow
def test_a_checkpoint_save_that_fails_leaves_no_folder_and_the_run_resumes(model_dir, tmp_path, monkeypatch):
    """A save that dies half-way (here: an error while writing the scheduler state) leaves the earlier
    checkpoints as they were and nothing under checkpoint-4 or a temporary name."""
    from workbench.core.runs import list_checkpoints

    real_save = torch.save
    failing = {"on": True}

    def save(obj, f, *args, **kwargs):
        if failing["on"] and Path(f).parent.name == "checkpoint-4" and Path(f).name == "scheduler.pt":
            Path(f).write_bytes(b"PK\x03\x04")
            raise RuntimeError("simulated crash while saving")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    sink = ev.ListSink()
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_config(model_dir(), tmp_path, max_steps=6, save_steps=2), sink)
    run_dir = Path(sink.of(ev.RunStarted)[0].run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-2"]
    assert [c.step for c in list_checkpoints(run_dir)] == [2]

    failing["on"] = False
    result = resume(run_dir)
    assert result.status == "finished" and result.final_step == 6
    assert steps_in(run_dir) == list(range(1, 7))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


@pytest.mark.slow
def test_a_resumed_run_holds_the_resume_lock_until_it_ends(model_dir, tmp_path):
    import fcntl
    import os

    control = RunControl()
    first = run(make_config(model_dir(), tmp_path, max_steps=4, save_steps=2),
                ev.CallbackSink(lambda e: isinstance(e, ev.Step) and e.step == 2 and control.request_stop()), control)
    lock_file = first.run_dir / ".resume.lock"

    def locked() -> bool:
        fd = os.open(lock_file, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    seen = []
    resume(first.run_dir, ev.CallbackSink(lambda e: isinstance(e, ev.Step) and seen.append(locked())))
    assert seen == [True, True], "held through the resumed training"
    assert not locked(), "released when it ended"
