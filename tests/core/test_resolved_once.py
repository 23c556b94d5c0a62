"""A run's configuration is resolved once (issue #15): one ``resolve_source``, one config read, one tokenizer load,
one device choice per run, and ``run.toml`` written once — with the exact modules the selection resolved to.

The real functions run; each is wrapped by a counter wherever Workbench has bound it (the defining module and every
``workbench`` module that imported it by name), so a call through any path is counted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import workbench.core.models
import workbench.core.precision
import workbench.core.training.engine
import workbench.core.training.setup  # noqa: F401  (imported so that its bindings are wrapped too)
from workbench.core import events as ev
from workbench.core.config import RunConfig
from workbench.core.control import RunControl
from workbench.core.runs import RUN_FILE
from workbench.core.cache import CACHE_ENV
from workbench.core.training import resume, run
from test_builtin import write_tiny_gguf  # noqa: E402  (tests/core is on sys.path through pytest's rootdir)
from test_training import make_config  # noqa: E402


def count_calls(monkeypatch, module, name: str) -> list:
    real = getattr(module, name)
    calls: list = []

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    bound = [m for m in list(sys.modules.values())
             if getattr(m, "__name__", "").startswith("workbench") and getattr(m, name, None) is real]
    assert module in bound
    for m in bound:
        monkeypatch.setattr(m, name, counting)
    return calls


@pytest.fixture
def counted(monkeypatch):
    """Counters around the real functions, and the paths ``RunConfig.save`` wrote."""
    models, precision = workbench.core.models, workbench.core.precision
    counts = {name: count_calls(monkeypatch, models, name) for name in ("resolve_source", "load_config", "load_tokenizer")}
    counts["choose_device"] = count_calls(monkeypatch, precision, "choose_device")
    counts["choose_precision"] = count_calls(monkeypatch, precision, "choose_precision")
    saved: list[Path] = []
    real_save = RunConfig.save

    def save(self, path):
        saved.append(Path(path))
        return real_save(self, path)

    monkeypatch.setattr(RunConfig, "save", save)

    def reset():
        for calls in counts.values():
            calls.clear()
        saved.clear()

    return counts, saved, reset


class StopAfter:
    """A sink that asks the run to stop once it has logged ``step``."""

    def __init__(self, control: RunControl, step: int):
        self.control, self.step = control, step

    def emit(self, event):
        if isinstance(event, ev.Step) and event.step >= self.step:
            self.control.request_stop()


def test_a_run_resolves_its_model_and_device_once_and_writes_run_toml_once(tiny_model_dir, tmp_path, counted):
    counts, saved, reset = counted
    sink = ev.ListSink()
    result = run(make_config(tiny_model_dir("llama"), tmp_path, max_steps=2), sink)

    assert {name: len(calls) for name, calls in counts.items()} == {
        "resolve_source": 1, "load_config": 1, "load_tokenizer": 1, "choose_device": 1, "choose_precision": 1}
    assert [p.name for p in saved if p.name == RUN_FILE] == [RUN_FILE]
    # The one write holds the exact modules the preset resolved to, as the run trained them.
    on_disk = RunConfig.from_toml(result.run_dir / RUN_FILE)
    trained = sink.of(ev.RunStarted)[0].config["lora"]
    assert on_disk.lora.target_modules and on_disk.lora.target_modules == trained["target_modules"]
    assert all(name.split(".")[-1] in {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
               for name in on_disk.lora.target_modules)


def test_a_resume_resolves_once_and_leaves_run_toml_alone(tiny_model_dir, tmp_path, counted):
    counts, saved, reset = counted
    control = RunControl()
    first = run(make_config(tiny_model_dir("llama"), tmp_path, max_steps=6, save_steps=2), StopAfter(control, 2), control)
    assert first.status == "stopped"
    before = (first.run_dir / RUN_FILE).read_bytes()
    reset()

    resumed = resume(first.run_dir)

    assert resumed.status == "finished" and resumed.final_step == 6
    assert {name: len(calls) for name, calls in counts.items()} == {
        "resolve_source": 1, "load_config": 1, "load_tokenizer": 1, "choose_device": 1, "choose_precision": 1}
    assert [p for p in saved if p.name == RUN_FILE] == []
    assert (first.run_dir / RUN_FILE).read_bytes() == before


def test_a_run_from_a_gguf_file_resolves_once_and_writes_run_toml_once(tmp_path, counted, monkeypatch):
    """A GGUF file is converted into the cache by resolve_source; from there it is a model folder like any other."""
    counts, saved, reset = counted
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "model" / "tiny-llama.F32.gguf"
    gguf.parent.mkdir()
    write_tiny_gguf(gguf)
    result = run(make_config(gguf, tmp_path, max_steps=1), ev.ListSink())

    assert {name: len(calls) for name, calls in counts.items()} == {
        "resolve_source": 1, "load_config": 1, "load_tokenizer": 1, "choose_device": 1, "choose_precision": 1}
    assert [p.name for p in saved if p.name == RUN_FILE] == [RUN_FILE]
    assert RunConfig.from_toml(result.run_dir / RUN_FILE).lora.target_modules
