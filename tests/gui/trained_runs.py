"""Real run folders for the window's tests, trained once per test session on the tiny llama.

"done" learns the facts (30 steps at a high learning rate, so the adapter visibly changes answers);
"stopped" is stopped by its control at step 3, with a checkpoint at step 2 so it can be resumed.
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench.core.config import RunConfig
from workbench.core.control import RunControl
from workbench.core.events import CallbackSink

FACTS = [("What is the capital of France?", " Paris."), ("Two plus two?", " Four."),
         ("Translate cat to French.", " chat"), ("Colour of the sky?", " Blue.")]

_cache: dict[str, dict] = {}


def make_config(model: Path, root: Path, **training) -> RunConfig:
    data = root / "facts.jsonl"
    if not data.exists():
        root.mkdir(parents=True, exist_ok=True)
        data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in FACTS))
    return RunConfig.from_dict({
        "model": {"source": str(model)},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "preset": "all-linear"},
        "data": {"train_files": [str(data)], "max_length": 64},
        "training": {"max_steps": 30, "learning_rate": 1e-2, "batch_size": 4, "warmup_ratio": 0.0,
                     "scheduler": "constant", "logging_steps": 1, **training},
        "output": {"runs_root": str(root / "runs")},
    })


def trained_runs(tmp_path_factory, tiny_model_dir) -> dict:
    """{"model", "root", "done", "stopped"}: the model folder, the runs root and two run folders."""
    if "runs" not in _cache:
        from workbench.core.training import run

        model = tiny_model_dir("llama", initializer_range=0.3)
        root = tmp_path_factory.mktemp("trained")
        done = run(make_config(model, root), None, run_dir=root / "runs" / "done")
        control = RunControl()
        sink = CallbackSink(lambda e: e.kind == "step" and e.step == 3 and control.request_stop())
        stopped = run(make_config(model, root, learning_rate=3e-3, save_steps=2), sink, control,
                      run_dir=root / "runs" / "stopped")
        assert done.status == "finished" and stopped.status == "stopped"
        _cache["runs"] = {"model": model, "root": root / "runs", "done": done.run_dir, "stopped": stopped.run_dir}
    return _cache["runs"]


def qlora_run(tmp_path_factory, tiny_model_dir) -> dict:
    """{"model", "adapter"}: a 4-step run on an nf4 base (no double quantization) of the same tiny llama."""
    if "qlora" not in _cache:
        from workbench.core.training import run

        model = tiny_model_dir("llama", initializer_range=0.3)
        root = tmp_path_factory.mktemp("qlora")
        config = make_config(model, root, max_steps=4).copy_with(model={"quantization": "nf4", "double_quant": False})
        result = run(config, None, run_dir=root / "runs" / "nf4")
        assert result.status == "finished"
        _cache["qlora"] = {"model": model, "adapter": result.run_dir / "adapter"}
    return _cache["qlora"]
