"""Outputs never replace anything and never land inside an input; NaN/inf adapters are refused by every user.

Every command with ``--out`` (export as trained and portable, GGUF merged / adapter / Ollama, merge) is run
through the real CLI against an existing file, an existing folder, and a folder inside each of its inputs (the
run's adapter, the run folder, the base model folder). Each must exit 2 with a message, and the whole work
folder — inputs included — must be byte-for-byte and time-for-time as it was.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from workbench import cli
from workbench.core.config import RunConfig
from workbench.core.exitcodes import EXIT_USER
from workbench.core.peft_format import ADAPTER_WEIGHTS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

COMMANDS = {
    "export": ["export", "{run}", "--out", "{out}"],
    "export --portable": ["export", "{run}", "--out", "{out}", "--portable"],
    "export --gguf": ["export", "{run}", "--out", "{out}", "--gguf", "--type", "f32"],
    "export --gguf-adapter": ["export", "{run}", "--out", "{out}", "--gguf-adapter"],
    "export --ollama": ["export", "{run}", "--out", "{out}", "--ollama"],
    "merge": ["merge", "--base", "{base}", "--adapter", "{run}", "--out", "{out}"],
}
TARGETS = {  # where --out points, and what the refusal says
    "an existing file": ("taken.txt", "already exists"),
    "an existing folder": ("taken", "already exists"),
    "inside the run's adapter": ("run/adapter/sub", "is inside the adapter"),
    "inside the base model": ("base/merged", "is inside the base model"),
}


@pytest.fixture(scope="module")
def work(tiny_model_dir, tmp_path_factory) -> Path:
    """A private base model (refusals that failed would write into it), a run folder naming it, and its adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("outputs")
    base = Path(shutil.copytree(tiny_model_dir("llama"), root / "base"))
    run = root / "run"
    run.mkdir()
    RunConfig.from_dict({"model": {"source": str(base)}, "data": {"train_files": ["x.jsonl"]}}).save(run / "run.toml")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(run / "adapter")
    (root / "taken.txt").write_text("mine")
    (root / "taken").mkdir()
    (root / "taken" / "keep.txt").write_text("mine")
    return root


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.is_dir()) for p in folder.rglob("*")}


def invoke(command: str, **paths: Path) -> list[str]:
    return [part.format(**{k: str(v) for k, v in paths.items()}) for part in COMMANDS[command]]


# A PEFT export does not read the base model: writing next to it is not writing inside an input.
CASES = [(c, t) for c in COMMANDS for t in TARGETS
         if not (t == "inside the base model" and c in ("export", "export --portable"))]


@pytest.mark.parametrize("command, target", CASES)
def test_out_onto_an_existing_path_or_inside_an_input_is_refused_and_nothing_changes(work, command, target, capsys):
    relative, expected = TARGETS[target]
    out = work / relative
    before = snapshot(work)
    code = cli.main(invoke(command, run=work / "run", base=work / "base", out=out))
    err = capsys.readouterr().err
    assert code == EXIT_USER, err
    assert expected in err and str(out) in err and "Traceback" not in err
    assert snapshot(work) == before, "inputs and the existing file or folder untouched, nothing new written"


# ---------------------------------------------------------------------------------------------- NaN / inf


@pytest.fixture(scope="module")
def poisoned(work, tmp_path_factory) -> Path:
    """A copy of the run whose adapter holds a NaN in one tensor and an infinity in another."""
    run = Path(shutil.copytree(work / "run", tmp_path_factory.mktemp("poisoned") / "run"))
    weights = run / "adapter" / ADAPTER_WEIGHTS
    tensors = load_file(weights)
    names = sorted(tensors)
    tensors[names[0]][0, 0] = float("nan")
    tensors[names[3]][1, 1] = float("inf")
    save_file(tensors, weights, metadata={"format": "pt"})
    return run


@pytest.mark.parametrize("command", [*COMMANDS, "inspect-adapter"])
def test_an_adapter_holding_nan_or_inf_is_refused_naming_the_tensors(work, poisoned, command, capsys, tmp_path):
    names = sorted(load_file(poisoned / "adapter" / ADAPTER_WEIGHTS))
    before = snapshot(poisoned.parent)
    if command == "inspect-adapter":
        args = ["inspect-adapter", str(poisoned), "--base", str(work / "base")]
    else:
        args = invoke(command, run=poisoned, base=work / "base", out=tmp_path / "out")
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code == EXIT_USER, err
    assert "NaN or infinite values in 2 tensor(s)" in err and "Traceback" not in err
    assert names[0] in err and names[3] in err
    assert "earlier checkpoint" in err
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    assert snapshot(poisoned.parent) == before
