"""Training faults (issue #9): a NaN/inf loss, a step that runs out of memory, a full disk while saving.

Real CPU runs on a tiny model; each fault is injected where the framework would raise it: a forward hook
poisons the loss or the gradients from a chosen step, ``Trainer.training_step`` raises PyTorch's CUDA
out-of-memory error, and the checkpoint / adapter writers fail the way a full disk makes them fail.
"""

import errno
import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench.core import events as ev
from workbench.core.training import faults, setup
from workbench.core.config import RunConfig
from workbench.core.control import RunControl
from workbench.core.errors import OutputError, TrainingError
from workbench.core.runs import latest_checkpoint, list_checkpoints, run_status
from workbench.core.training import resume, run

ROWS = [(f"Question number {i}?", f"Answer {i}.") for i in range(16)]
CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)"


@pytest.fixture
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama", initializer_range=0.3)


def make_config(model_dir: Path, tmp_path: Path, **training_fields) -> RunConfig:
    """16 unpacked rows, 4 per micro-batch: one optimizer step is 4 rows, 4 steps an epoch; a checkpoint every 2."""
    data = tmp_path / "rows.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in ROWS))
    return RunConfig.from_dict({
        "model": {"source": str(model_dir)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train_files": [str(data)], "max_length": 32, "packing": False},
        # CPU pinned: the OOM-retry test compares loss curves to 1e-4, which bf16 on a GPU does not reproduce.
        "training": {"max_steps": 6, "learning_rate": 3e-3, "batch_size": 4, "warmup_ratio": 0.0,
                     "scheduler": "constant", "device": "cpu", "save_steps": 2, **training_fields},
        "output": {"runs_root": str(tmp_path / "runs")},
    })


def events_in(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def steps_in(run_dir: Path) -> list[int]:
    return [e["step"] for e in events_in(run_dir) if e["kind"] == "step"]


def run_dir_of(sink: ev.ListSink) -> Path:
    return Path(sink.of(ev.RunStarted)[0].run_dir)


# ------------------------------------------------------------------------------------------ NaN / inf


@pytest.fixture
def poison(monkeypatch):
    """``poison(kind, from_call)``: from the ``from_call``-th training forward on, the last hidden states make the loss
    NaN (``"loss"``) or the gradients infinite with a finite loss (``"grad"``); ``poison(None)`` stops it. With
    one micro-batch per step, forward n of a session is its n-th optimizer step."""
    state = {"kind": None, "from": 1, "calls": 0}
    setup_model = setup.setup_model

    def hook(module, args, output):
        if not module.training:
            return None
        state["calls"] += 1
        if state["kind"] is None or state["calls"] < state["from"]:
            return None
        if state["kind"] == "loss":
            return output * float("nan")
        output = output * 1.0
        output.register_hook(lambda grad: grad * float("inf"))
        return output

    def setup_with_hook(*args, **kwargs):
        peft_model, *rest = setup_model(*args, **kwargs)
        # On the decoder's final norm, the last module every training forward calls: the chunked loss
        # (core/loss.py) multiplies by the output head's weight without calling the head module.
        peft_model.get_base_model().get_decoder().norm.register_forward_hook(hook)
        return (peft_model, *rest)

    monkeypatch.setattr(setup, "setup_model", setup_with_hook)

    def arm(kind, from_call=1):
        state.update({"kind": kind, "from": from_call, "calls": 0})

    return arm


def finite_weights(checkpoint_dir: Path) -> bool:
    return all(torch.isfinite(w).all() for w in load_file(checkpoint_dir / "adapter_model.safetensors").values())


@pytest.mark.parametrize("kind", ["loss", "grad"])
@pytest.mark.slow
def test_nan_stops_at_once_and_keeps_the_last_good_checkpoint(kind, model_dir, tmp_path, poison):
    poison(kind, from_call=6)  # step 6 is a checkpoint step: its checkpoint must not be written
    sink = ev.ListSink()
    with pytest.raises(TrainingError) as err:
        run(make_config(model_dir, tmp_path, max_steps=10), sink)
    run_dir = run_dir_of(sink)
    message = str(err.value)
    cause = "the loss became nan at step 6" if kind == "loss" else "the gradient norm became "
    assert cause in message and "at step 6" in message
    assert "newest good checkpoint is checkpoint-4" in message
    assert "training.learning_rate (now 0.003; try 0.0003)" in message and "training.max_grad_norm" in message
    assert f"workbench resume {run_dir}" in message

    assert [c.step for c in list_checkpoints(run_dir)] == [2, 4], "nothing saved at or after the bad step"
    good = latest_checkpoint(run_dir)
    assert good.step == 4 and finite_weights(good.path)
    assert not (run_dir / "adapter").exists(), "no adapter saved from NaN weights"
    assert run_status(run_dir).value == "failed"
    assert steps_in(run_dir) == [1, 2, 3, 4, 5, 6], "stops at the step it diverged"
    failed = sink.of(ev.Failed)
    assert len(failed) == 1 and "at step 6" in failed[0].reason and "learning_rate" in failed[0].hint

    if kind == "loss":  # resuming from the good checkpoint works (here the cause is gone)
        poison(None)
        result = resume(run_dir, ev.ListSink())
        assert result.status == "finished" and result.final_step == 10
        assert steps_in(run_dir) == list(range(1, 11))
        assert finite_weights(run_dir / "adapter")


def test_nan_leaves_an_adapter_saved_earlier_untouched(model_dir, tmp_path, poison):
    control = RunControl()
    stop_at_2 = ev.CallbackSink(lambda e: isinstance(e, ev.Step) and e.step == 2 and control.request_stop())
    first = run(make_config(model_dir, tmp_path), stop_at_2, control)
    assert first.status == "stopped"
    before = (first.adapter_dir / "adapter_model.safetensors").read_bytes()

    poison("loss", from_call=2)  # the resumed session's second step is step 4, a checkpoint step
    with pytest.raises(TrainingError, match="the loss became nan at step 4"):
        resume(first.run_dir)
    assert (first.adapter_dir / "adapter_model.safetensors").read_bytes() == before
    assert [c.step for c in list_checkpoints(first.run_dir)] == [2]
    assert run_status(first.run_dir).value == "failed"


def test_divergence_hint_fits_the_settings(model_dir, tmp_path):
    cfg = make_config(model_dir, tmp_path, max_grad_norm=0.0, learning_rate=1e-3)
    err = faults.divergence_error(cfg, "fp16", tmp_path / "no-run", 7, float("inf"), None)
    assert err.message.startswith("the loss became inf at step 7")
    assert "the run has no checkpoint" in err.message and "workbench resume" not in err.hint
    assert "bf16 or fp32 instead of fp16" in err.hint
    assert "turn gradient clipping on (training.max_grad_norm = 1.0)" in err.hint
    assert "fp16" not in faults.divergence_error(cfg, "bf16", tmp_path, 7, float("nan"), 3.0).hint


def test_training_without_gradient_clipping(model_dir, tmp_path):
    """max_grad_norm = 0 (the hint's "turn clipping on" implies off must work) trains, and still reports the norm."""
    sink = ev.ListSink()
    result = run(make_config(model_dir, tmp_path, max_steps=2, max_grad_norm=0.0), sink)
    assert result.status == "finished" and all(e.grad_norm is not None for e in sink.of(ev.Step))


# ------------------------------------------------------------------------------------------ out of memory


@pytest.fixture
def oom(monkeypatch):
    """``oom(when)``: ``Trainer.training_step`` raises PyTorch's CUDA out-of-memory error for a micro-batch of
    ``size`` rows at ``step`` (optimizer steps done) when ``when(size, step)``. Returns the micro-batch sizes trained."""
    from transformers import Trainer

    trained: list[int] = []
    rule = {"when": lambda size, step: False}
    original = Trainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        size = int(inputs["input_ids"].shape[0])
        if rule["when"](size, self.state.global_step):
            raise torch.OutOfMemoryError(CUDA_OOM)
        trained.append(size)
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", training_step)

    def arm(when):
        rule["when"] = when
        trained.clear()
        return trained

    return arm


def test_oom_without_retry_fails_with_the_command_to_retry(model_dir, tmp_path, oom, monkeypatch, capsys):
    from workbench.cli import main

    freed = []
    free = faults.free_device_memory
    monkeypatch.setattr(faults, "free_device_memory", lambda: (freed.append(1), free()))
    oom(lambda size, step: size > 2 and step >= 2)  # 4 rows fit in steps 1 and 2, not in step 3
    sink = ev.ListSink()
    with pytest.raises(TrainingError) as err:
        run(make_config(model_dir, tmp_path), sink)
    run_dir = run_dir_of(sink)
    text = str(err.value)
    assert f"out of memory at step 3 with training.batch_size = 4 (gradient_accumulation 1): {CUDA_OOM}" in text
    assert "per-device batch size 2 and gradient accumulation 2, the same effective batch of 4" in text
    assert "set training.oom_retry = true" in text and "continue this run from checkpoint-2" in text
    assert freed, "memory is given back before reporting"
    assert run_status(run_dir).value == "failed"
    assert RunConfig.from_toml(run_dir / "run.toml").training.batch_size == 4, "nothing changed without oom_retry"

    # the command in the message, as printed, trains with the same effective batch
    command = text.split("`")[1]
    assert command.startswith("workbench train ") and "--set training.batch_size=2 --set training.gradient_accumulation=2" in command
    assert main(shlex.split(command)[1:] + ["--quiet"]) == 0, capsys.readouterr().err
    retried = [p for p in (tmp_path / "runs").iterdir() if p != run_dir]
    assert len(retried) == 1 and steps_in(retried[0]) == [1, 2, 3, 4, 5, 6]
    started = [e for e in events_in(retried[0]) if e["kind"] == "run_started"]
    assert started[0]["global_batch"] == 4


def test_oom_retry_continues_from_the_last_checkpoint_with_the_same_effective_batch(model_dir, tmp_path, oom):
    straight = ev.ListSink()
    run(make_config(model_dir, tmp_path / "straight"), straight)

    trained = oom(lambda size, step: size > 2 and step >= 2)
    sink = ev.ListSink()
    result = run(make_config(model_dir, tmp_path, oom_retry=True), sink)
    assert result.status == "finished" and result.final_step == 6
    assert run_status(result.run_dir).value == "finished"
    notes = [m.text for m in sink.of(ev.Message) if "out of memory" in m.text]
    assert len(notes) == 1 and f"out of memory at step 3 with batch size 4 × accumulation 1 ({CUDA_OOM})" in notes[0]
    assert "retrying with batch size 2 × accumulation 2 (same effective batch 4) from checkpoint-2" in notes[0]
    started = sink.of(ev.RunStarted)
    assert [(s.resumed_from_step, s.global_batch) for s in started] == [(0, 4), (2, 4)]
    assert trained == [4, 4] + [2] * 8, "steps 3-6 in two micro-batches of 2"
    saved = RunConfig.from_toml(result.run_dir / "run.toml").training
    assert (saved.batch_size, saved.gradient_accumulation, saved.oom_retry) == (2, 2, True), "a later resume trains the same way"
    assert steps_in(result.run_dir) == [1, 2, 3, 4, 5, 6], "no step recorded twice"
    # same examples per step, same optimizer state: the loss curve is the one of the run that never ran out of memory
    assert [e.loss for e in sink.of(ev.Step)] == pytest.approx([e.loss for e in straight.of(ev.Step)], rel=1e-4)


@pytest.mark.slow
def test_oom_retry_restarts_without_a_checkpoint_and_gives_up_at_batch_size_1(model_dir, tmp_path, oom):
    oom(lambda size, step: size > 1)  # only single rows fit
    sink = ev.ListSink()
    result = run(make_config(model_dir, tmp_path / "a", max_steps=3, save_steps=None, oom_retry=True), sink)
    assert result.status == "finished" and result.final_step == 3
    notes = [m.text for m in sink.of(ev.Message) if "out of memory" in m.text]
    assert len(notes) == 2 and all(n.endswith("from the start") for n in notes)
    assert "batch size 1 × accumulation 4" in notes[1]
    assert [s.global_batch for s in sink.of(ev.RunStarted)] == [4, 4, 4]
    saved = RunConfig.from_toml(result.run_dir / "run.toml").training
    assert (saved.batch_size, saved.gradient_accumulation) == (1, 4)
    assert steps_in(result.run_dir) == [1, 2, 3]

    oom(lambda size, step: True)  # not even one row fits
    sink = ev.ListSink()
    with pytest.raises(TrainingError) as err:
        run(make_config(model_dir, tmp_path / "b", batch_size=3, oom_retry=True), sink)
    assert "training.batch_size = 1 (gradient_accumulation 3)" in str(err.value)  # 3 → 1: odd sizes keep the batch too
    assert "the micro-batch is already 1" in err.value.hint and "gradient_checkpointing" in err.value.hint
    assert run_status(run_dir_of(sink)).value == "failed"


def test_smaller_batch_keeps_the_effective_batch():
    from workbench.core.config import TrainingConfig

    retries = [faults.smaller_batch(TrainingConfig(batch_size=b, gradient_accumulation=2)) for b in (1, 2, 3, 4, 6, 7, 12)]
    assert retries == [None, (1, 4), (1, 6), (2, 4), (3, 4), (1, 14), (6, 4)]


# ------------------------------------------------------------------------------------------ full disk


@pytest.mark.parametrize("error", ["oserror", "torch"])
def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(error, model_dir, tmp_path, monkeypatch):
    real_save, real_usage = torch.save, shutil.disk_usage
    disk = {"full": False, "failing": True}

    def save(obj, f, *args, **kwargs):
        if disk["failing"] and Path(f).parent.name == "checkpoint-4" and Path(f).name == "optimizer.pt":
            Path(f).write_bytes(b"PK\x03\x04 the first bytes of a zip archive")  # what a full disk leaves
            disk["full"] = True
            if error == "oserror":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")  # torch's own words
        return real_save(obj, f, *args, **kwargs)

    def disk_usage(path):  # torch's error names no cause: the engine looks at the free space
        usage = real_usage(path)
        return usage._replace(free=1000) if disk["full"] and error == "torch" else usage

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    sink = ev.ListSink()
    with pytest.raises(OutputError) as err:
        run(make_config(model_dir, tmp_path), sink)
    run_dir = run_dir_of(sink)
    text = str(err.value)
    previous = sum(f.stat().st_size for f in (run_dir / "checkpoints" / "checkpoint-2").iterdir())
    assert f"the disk is full: checkpoint-4 could not be written to {run_dir / 'checkpoints'} (file system " in text
    assert f"a checkpoint needs about {previous / 1024:.1f} KiB" in text and " free now" in text
    if error == "torch":
        assert "1000 bytes free now" in text
    assert f"then `workbench resume {run_dir}` continues from checkpoint-2" in text
    assert [c.step for c in list_checkpoints(run_dir)] == [2], "the half-written checkpoint is gone"
    assert latest_checkpoint(run_dir).step == 2 and finite_weights(latest_checkpoint(run_dir).path)
    assert run_status(run_dir).value == "failed"
    assert "disk is full" in sink.of(ev.Failed)[0].reason

    if error == "oserror":
        disk["failing"] = False  # space was freed
        result = resume(run_dir)
        assert result.status == "finished" and result.final_step == 6
        assert steps_in(run_dir) == [1, 2, 3, 4, 5, 6]


def test_disk_full_while_saving_the_adapter(model_dir, tmp_path, monkeypatch):
    import peft.peft_model
    from safetensors import SafetensorError

    real_save_file = peft.peft_model.safe_save_file
    disk = {"failing": True}

    def save_file(tensors, filename, *args, **kwargs):
        if disk["failing"] and ".tmp-adapter.partial" in str(filename):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", save_file)
    sink = ev.ListSink()
    with pytest.raises(OutputError) as err:
        run(make_config(model_dir, tmp_path, max_steps=4), sink)
    run_dir = run_dir_of(sink)
    text = str(err.value)
    assert f"the disk is full: the adapter of step 4 could not be written to {run_dir / 'adapter'}" in text
    assert "the adapter needs about" in text and " free now" in text
    assert f"`workbench resume {run_dir}` continues from checkpoint-4 and saves the adapter" in text
    assert not (run_dir / "adapter").exists() and not list(run_dir.glob(".tmp-*"))
    assert run_status(run_dir).value == "failed"

    disk["failing"] = False
    result = resume(run_dir)
    assert result.status == "finished" and result.final_step == 4
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert steps_in(run_dir) == [1, 2, 3, 4]


def damage_a_member(archive: Path) -> None:
    """Flip the last byte of the largest member of a zip archive (a torch.save file): sizes and structure stay
    intact, so only a read against the CRC-32s (the check a resume makes) can tell, as after a power cut."""
    import struct
    import zipfile

    with zipfile.ZipFile(archive) as zf:
        info = max(zf.infolist(), key=lambda i: i.compress_size)
    data = bytearray(archive.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    end = info.header_offset + 30 + name_len + extra_len + info.compress_size
    data[end - 1] ^= 0xFF
    archive.write_bytes(bytes(data))


@pytest.mark.slow
def test_oom_retry_passes_over_a_damaged_checkpoint_as_a_resume_does(model_dir, tmp_path, oom):
    """The retry picks its checkpoint as prepare_resume does, CRC check included: a checkpoint-4 whose optimizer
    state lost a block is not continued from, and is removed."""
    def when(size, step):
        if size > 2 and step >= 4:
            newest = next((tmp_path / "runs").iterdir()) / "checkpoints" / "checkpoint-4" / "optimizer.pt"
            if newest.exists() and latest_checkpoint(newest.parents[2]).step == 4:
                damage_a_member(newest)
            return True
        return False

    trained = oom(when)
    sink = ev.ListSink()
    result = run(make_config(model_dir, tmp_path, oom_retry=True), sink)
    assert result.status == "finished" and result.final_step == 6
    notes = [m.text for m in sink.of(ev.Message) if "out of memory" in m.text]
    assert len(notes) == 1 and "out of memory at step 5" in notes[0] and notes[0].endswith("from checkpoint-2"), notes
    assert [s.resumed_from_step for s in sink.of(ev.RunStarted)] == [0, 2]
    assert trained == [4] * 4 + [2] * 8, "steps 3-6 trained again in micro-batches of 2"
    assert steps_in(result.run_dir) == [1, 2, 3, 4, 5, 6], "no step recorded twice"
    assert [c.step for c in list_checkpoints(result.run_dir, thorough=True)] == [2, 4, 6]
    assert all(c.complete for c in list_checkpoints(result.run_dir, thorough=True)), "checkpoint-4 was written anew"
