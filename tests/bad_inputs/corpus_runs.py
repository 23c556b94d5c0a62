"""Corpus cases for run folders at resume: a run.toml changed since the run trained, a checkpoint whose state file
the safe loader refuses, no complete checkpoint although checkpoints were on, a checkpoint past a lowered target.

Loaded by the last line of ``corpus.py``. Each run folder is written here the way the engine leaves one (run.toml,
metrics.jsonl with its ``run_started`` event, status.json of a failed run, a checkpoint with real ``torch.save``
state files), so the refusals are the engine's own, made before anything in the folder changes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from bad_inputs.corpus import Built, Ctx, case


class _RunsCode:
    """Pickled by reference into a state file: the safe loader must refuse it without importing it."""

    def __reduce__(self):
        return (print, ("a pickled call ran",))


def _run_folder(ctx: Ctx, name: str, *, trained_with: dict | None = None, checkpoint: int | None = 4,
                steps: int = 5, **sections: dict) -> Path:
    """A failed run folder: run.toml (``sections`` merged in), events of ``steps`` steps and a checkpoint."""
    from workbench.core.config import RunConfig

    folder = ctx.path(name)
    folder.mkdir()
    run_file = ctx.runfile(f"{name}/run.toml", training={"max_steps": 8, "save_steps": 4}, **sections)
    config = RunConfig.from_toml(run_file).to_dict()
    for section, values in (trained_with or {}).items():
        config[section] = {**config.get(section, {}), **values}
    now = time.time()
    events = [{"kind": "run_started", "time": now, "run_dir": str(folder), "config": config, "device": "cpu",
               "device_name": "cpu", "precision": "fp32", "trainable_params": 10, "total_params": 100,
               "total_steps": 8}]
    events += [{"kind": "step", "time": now, "step": n, "total_steps": 8, "epoch": n / 8, "loss": 2.0,
                "learning_rate": 1e-3} for n in range(1, steps + 1)]
    events.append({"kind": "failed", "time": now, "reason": "the process was stopped", "step": steps})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (folder / "status.json").write_text(json.dumps({"state": "failed", "pid": 1, "hostname": "elsewhere",
                                                    "started_at": now, "step": steps, "total_steps": 8}))
    if checkpoint is not None:
        path = folder / "checkpoints" / f"checkpoint-{checkpoint}"
        path.mkdir(parents=True)
        (path / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
        save_file({"base_model.model.q.lora_A.weight": np.ones((8, 16), dtype=np.float32)},
                  str(path / "adapter_model.safetensors"))
        for state in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            torch.save({"state": {0: torch.zeros(4)}}, path / state)
        (path / "trainer_state.json").write_text(json.dumps({"global_step": checkpoint, "max_steps": 8}))
    return folder


def _resume(folder: Path) -> Built:
    return Built(folder / "run.toml", ["resume", str(folder), "--quiet"], {"run_folder": folder})


@case("runs-resume-run-toml-names-another-model", "runfile",
      r"run\.toml now sets model\.source = \"\S*good-model\", but the run was trained with model\.source = "
      r"\"\S*other-model\"",
      r"set model\.source back to .* or start a new run", gui=False)
def _(ctx):
    folder = _run_folder(ctx, "changed-model", trained_with={"model": {"source": str(ctx.path("other-model"))}})
    return _resume(folder)


@case("runs-resume-run-toml-changes-the-rank", "runfile",
      r"run\.toml now sets lora\.r = 16, but the run was trained with lora\.r = 8", r"set lora\.r back to 8",
      gui=False)
def _(ctx):
    return _resume(_run_folder(ctx, "changed-rank", trained_with={"lora": {"r": 8}}, lora={"r": 16}))


@case("runs-resume-run-toml-turns-on-dora", "runfile",
      r"run\.toml now sets lora\.use_dora = true, but the run was trained with lora\.use_dora = false",
      r"set lora\.use_dora back to false", gui=False)
def _(ctx):
    return _resume(_run_folder(ctx, "changed-dora", trained_with={"lora": {"use_dora": False}},
                               lora={"use_dora": True}))


@case("runs-resume-rng-state-the-safe-loader-refuses", "runfile",
      r"checkpoint-4/rng_state\.pth does not load safely .*nothing was changed", r"could run code", gui=False)
def _(ctx):
    folder = _run_folder(ctx, "unsafe-state")
    torch.save({"python": _RunsCode()}, folder / "checkpoints" / "checkpoint-4" / "rng_state.pth")
    return _resume(folder)


@case("runs-resume-optimizer-state-the-safe-loader-refuses", "runfile",
      r"checkpoint-4/optimizer\.pt does not load safely", r"remove \S*checkpoint-4 to resume from an earlier",
      gui=False)
def _(ctx):
    folder = _run_folder(ctx, "unsafe-optimizer")
    torch.save({"state": _RunsCode()}, folder / "checkpoints" / "checkpoint-4" / "optimizer.pt")
    return _resume(folder)


@case("runs-resume-no-checkpoint-although-save-steps-is-set", "runfile",
      r"the run no-checkpoint has no complete checkpoint to resume from",
      r"training\.save_steps is 4, but the run stopped before it completed a checkpoint", gui=False)
def _(ctx):
    return _resume(_run_folder(ctx, "no-checkpoint", checkpoint=None, steps=3))


@case("runs-resume-checkpoint-past-a-lowered-max-steps", "runfile",
      r"checkpoint-4 is past the run's target: run\.toml sets training\.max_steps = 2",
      r"set training\.max_steps in \S*run\.toml to at least 4", gui=False)
def _(ctx):
    folder = _run_folder(ctx, "lowered-target")
    text = (folder / "run.toml").read_text().replace("max_steps = 8", "max_steps = 2")
    (folder / "run.toml").write_text(text)
    return _resume(folder)


# corpus.py builds ALL_CASES (the list the tests run) before its last line imports this module: add ours to it.
def _register() -> None:
    from bad_inputs import corpus

    known = {c.id for c in corpus.ALL_CASES}
    corpus.ALL_CASES.extend(c for c in corpus.CASES if c.id not in known)


_register()
