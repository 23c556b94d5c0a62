"""Short commands import only what they need: each runs in a fresh interpreter and must leave the heavy
modules it has no use for unimported (a list per command). Not a timing test: a module list is exact and
does not depend on the machine's load; bench/startup.py measures the seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.subprocess

HEAVY = ("torch", "transformers", "peft", "datasets", "pyarrow", "numpy", "bitsandbytes", "trl", "PySide6",
         "pyqtgraph", "transformers.generation", "torch._dynamo", "pydantic")
NO_ML = {"torch", "transformers", "peft", "datasets", "pyarrow", "numpy", "bitsandbytes", "trl", "PySide6", "pyqtgraph"}

RUNNER = """
import json, sys
from workbench.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "loaded": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def loaded_by(*argv: str, exit_code: int = 0) -> list[str]:
    return loaded_and_said(*argv, exit_code=exit_code)[0]


def loaded_and_said(*argv: str, exit_code: int = 0) -> tuple[list[str], str]:
    """The heavy modules the command loaded, and what it wrote to stderr."""
    out = subprocess.run([sys.executable, "-c", RUNNER, *argv], capture_output=True, text=True, timeout=300)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert (report["code"] or 0) == exit_code, (argv, out.stderr[-2000:])
    return report["loaded"], out.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    from workbench.core.config import RunConfig
    from workbench.core.training import run

    root = tmp_path_factory.mktemp("budget")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}?", "completion": f" A{i}."}) + "\n" for i in range(4)))
    model = tiny_model_dir("llama")
    config = RunConfig.from_dict({
        "model": {"source": str(model)}, "lora": {"r": 4, "alpha": 8, "preset": "attention"},
        "data": {"train_files": [str(data)], "max_length": 32},
        "training": {"max_steps": 1, "batch_size": 2, "logging_steps": 1},
        "output": {"runs_root": str(root / "runs")},
    })
    result = run(config, None, run_dir=root / "runs" / "done")
    assert result.status == "finished"
    return {"model": model, "root": root, "run": result.run_dir}


def test_help_and_bookkeeping_commands_import_no_ml_library(finished_run):
    run_dir, root = finished_run["run"], finished_run["root"]
    # Each command runs once and both lists are checked on what it loaded (the two checks used to start an
    # interpreter each for the same command).
    for argv in (["--help"], ["runs", "--root", str(root / "runs")], ["runs", "--status", str(run_dir)]):
        loaded = set(loaded_by(*argv))
        assert not loaded & NO_ML, argv
        # Nor the run-file schema (pydantic) where no run file is validated: building the parser, a run's status
        # word, the list of runs (read from the files as they are).
        assert "pydantic" not in loaded, argv
    # A control request to a finished run is refused (exit 2), after reading the run's status: the same path.
    loaded = set(loaded_by("control", str(run_dir), "checkpoint", exit_code=2))
    assert not loaded & NO_ML and "pydantic" not in loaded, loaded
    # A run file that is not there is refused before the engine is imported.
    assert not set(loaded_by("train", str(root / "missing.toml"), exit_code=2)) & NO_ML
    # A launch script validates the run file (pydantic) and still needs no ML library.
    loaded = set(loaded_by("launch-script", str(run_dir / "run.toml"), "--out", str(root / "launch.sh")))
    assert not loaded & NO_ML and "pydantic" in loaded, loaded


def test_a_run_refused_for_a_missing_data_file_or_a_full_run_folder_imports_no_ml_library(finished_run):
    """These faults need no model to be found: the run refuses them before torch, transformers or datasets are
    imported (seconds), with the messages the preflight and the run folder's creation give for them."""
    run_dir, root = finished_run["run"], finished_run["root"]
    missing = root / "missing.jsonl"
    loaded, said = loaded_and_said("train", str(run_dir / "run.toml"), "--set", f"data.train_files=[{str(missing)!r}]",
                                   exit_code=2)
    assert f"{missing}: file not found." in said and "Check the path in data.train_files." in said, said
    assert not set(loaded) & NO_ML, loaded
    # The finished run's folder is not empty: a new run cannot be trained into it.
    loaded, said = loaded_and_said("train", str(run_dir / "run.toml"), "--run-dir", str(run_dir), exit_code=2)
    assert f"the run folder {run_dir} is not empty" in said, said
    assert not set(loaded) & NO_ML, loaded


def test_export_and_adapter_report_read_the_adapter_without_peft_or_transformers(finished_run):
    run_dir, root = finished_run["run"], finished_run["root"]
    for argv in (["export", str(run_dir), "--out", str(root / "exported")], ["inspect-adapter", str(run_dir)]):
        loaded = set(loaded_by(*argv))
        assert "torch" in loaded, argv  # the tensors are read: the test would pass vacuously if nothing ran
        assert not loaded & {"peft", "transformers", "datasets", "bitsandbytes", "PySide6", "pyqtgraph"}, (argv, loaded)


def test_merge_does_not_import_peft(finished_run):
    root = finished_run["root"]
    loaded = set(loaded_by("merge", "--base", str(finished_run["model"]), "--adapter", str(finished_run["run"]),
                           "--out", str(root / "merged")))
    assert (root / "merged" / "config.json").is_file()
    assert not loaded & {"peft", "datasets", "bitsandbytes", "PySide6", "pyqtgraph"}, loaded


def test_inspect_from_the_remembered_tree_imports_no_transformers_and_on_a_cpu_build_no_torch(tmp_path, monkeypatch):
    """The first inspect of a config imports transformers but no PEFT, data or window library; the second reads
    its tree from the cache (core/tree_cache.py) and, where the installed torch has no GPU backend to report,
    answers the estimate's 'auto' device without importing torch at all."""
    from workbench.core.precision import torch_has_gpu_backend

    monkeypatch.setenv("LORA_WORKBENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8192, "intermediate_size": 28672,
        "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256}))
    first = set(loaded_by("inspect", str(tmp_path)))
    assert {"transformers", "torch._dynamo"} <= first  # the first time builds the tree: the check below can fail
    # Even building it, inspect imports no PEFT, data or window library (this was a test of its own, which ran
    # the same first inspect in another interpreter).
    assert not first & {"peft", "datasets", "pyarrow", "bitsandbytes", "trl", "PySide6", "pyqtgraph"}, first
    again = set(loaded_by("inspect", str(tmp_path)))
    assert not again & {"transformers", "transformers.generation", "torch._dynamo", "peft", "datasets", "PySide6"}, again
    if torch_has_gpu_backend() is False:
        assert not again & NO_ML, again
