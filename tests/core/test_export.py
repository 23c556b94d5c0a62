"""Adapters out and in (issue 4): streaming merge against PEFT, portable export, import checks, inspection, CLI.

Expected values come from PEFT, transformers and safetensors, or from dense linear algebra written out
here; never from the code under test. Adapters get random non-zero ``lora_B`` (``init_lora_weights=False``)
and DoRA magnitudes that differ from the weight norms, so every comparison can fail.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.core.adapter_report import effective_rank, inspect_adapter, lowrank_singular_values
from workbench.core.adapters import adapter_problems, load_adapter
from workbench.core.base_model import open_base_model
from workbench.core.control import RunControl
from workbench.core.errors import AdapterError, OutputError
from workbench.core.export import export_adapter
from workbench.core.merge import merge_adapter
from workbench.core.peft_format import ADAPTER_WEIGHTS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REPO = Path(__file__).resolve().parents[2]
IDS = torch.tensor([[1, 5, 7, 9, 20, 30, 41, 2, 77, 150]])
LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_ALL = ["c_attn", "c_proj", "c_fc"]


# ------------------------------------------------------------------------------------------- helpers


def load_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def make_adapter(base: Path, out: Path, **lora) -> Path:
    """A PEFT adapter on ``base`` with random non-zero A and B, and DoRA magnitudes and modules_to_save
    copies moved away from their starting values, saved to ``out``."""
    from peft import LoraConfig, get_peft_model

    model = load_model(base)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **lora))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_magnitude_vector" in name:  # PEFT starts DoRA at m = ||W + sBA||, where it changes nothing
                param.mul_(1 + 0.3 * torch.rand_like(param))
            elif "modules_to_save" in name:  # starts as a copy of the base layer
                param.add_(0.1 * torch.randn_like(param))
    peft_model.save_pretrained(out)
    return Path(out)


def peft_merge(base: Path, adapter: Path, out: Path) -> None:
    from peft import PeftModel

    PeftModel.from_pretrained(load_model(base), adapter).merge_and_unload().save_pretrained(out)


@torch.no_grad()
def adapter_logits(base: Path, adapter: Path) -> torch.Tensor:
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(base), adapter).eval()(IDS).logits


@torch.no_grad()
def model_logits(folder: Path) -> torch.Tensor:
    return load_model(folder)(IDS).logits


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def weights_changed_by(adapter: Path) -> set[str]:
    """Base tensors an adapter changes, from its file's key names: adapted layers and modules_to_save."""
    from safetensors import safe_open

    with safe_open(adapter / ADAPTER_WEIGHTS, "pt") as f:
        names = [k.removeprefix("base_model.model.") for k in f.keys()]
    changed = {n.removesuffix(marker) + ".weight" for n in names for marker in (".lora_A.weight", ".lora_embedding_A")
               if n.endswith(marker)}
    return changed | {n for n in names if "lora_" not in n and ".base_layer." not in n}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def bf16_ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many representable bf16 values lie between a and b (sign-magnitude bits → ordered integers)."""

    def ordered(t: torch.Tensor) -> torch.Tensor:
        bits = t.contiguous().view(torch.int16).to(torch.int32)
        magnitude = bits & 0x7FFF
        return torch.where(bits < 0, -magnitude, magnitude)

    return (ordered(a) - ordered(b)).abs()


@pytest.fixture(scope="module")
def llama_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A plain LoRA adapter on every linear layer of the tiny llama (2 blocks × 7 = 14 modules)."""
    return make_adapter(tiny_model_dir("llama"), tmp_path_factory.mktemp("adapter") / "adapter",
                        r=4, lora_alpha=8, target_modules=LLAMA_ALL)


# ------------------------------------------------------------------------------- merge against PEFT

PARITY = {
    "llama-lora": ("llama", {}, dict(r=4, lora_alpha=8, target_modules=LLAMA_ALL)),
    "gpt2-conv1d-lora": ("gpt2", {}, dict(r=4, lora_alpha=16, target_modules=GPT2_ALL)),
    "gpt2-conv1d-dora": ("gpt2", {}, dict(r=4, lora_alpha=8, use_dora=True, target_modules=GPT2_ALL)),
    "qwen2-rslora-modules_to_save": ("qwen2", {}, dict(r=8, lora_alpha=4, use_rslora=True, modules_to_save=["lm_head"],
                                                        target_modules=["q_proj", "k_proj", "v_proj", "up_proj"])),
    "qwen2-rank-alpha-patterns": ("qwen2", {}, dict(r=4, lora_alpha=8, target_modules=LLAMA_ALL,
                                                     rank_pattern={"v_proj": 8, "layers.1.mlp.down_proj": 2},
                                                     alpha_pattern={"o_proj": 3, "gate_proj": 32})),
    "llama-sharded-dora-patterns-embedding": ("llama", {"max_shard_size": "100KB"}, dict(
        r=4, lora_alpha=8, use_dora=True, target_modules=[*LLAMA_ALL, "embed_tokens"],
        rank_pattern={"q_proj": 6}, alpha_pattern={"down_proj": 2})),
}


@pytest.mark.parametrize("case", PARITY)
def test_merge_equals_peft_merge_and_unload_tensor_by_tensor(case, tiny_model_dir, tmp_path):
    arch, save_kw, lora = PARITY[case]
    base = tiny_model_dir(arch, **save_kw)
    adapter = make_adapter(base, tmp_path / "adapter", **lora)
    peft_merge(base, adapter, tmp_path / "peft")

    merge_adapter(base, adapter, tmp_path / "ours")

    ours, theirs, original = tensors(tmp_path / "ours"), tensors(tmp_path / "peft"), tensors(base)
    assert ours.keys() == theirs.keys() == original.keys()
    assert {k for k in ours if not torch.equal(ours[k], original[k])} == weights_changed_by(adapter)
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype, key
        assert torch.equal(ours[key], theirs[key]), f"{key} differs from PEFT's merge"
    torch.testing.assert_close(model_logits(tmp_path / "ours"), adapter_logits(base, adapter), rtol=1e-5, atol=1e-5)


def test_sharded_merge_mirrors_the_shards_and_writes_an_index(tiny_model_dir, llama_adapter, tmp_path):
    base = tiny_model_dir("llama", max_shard_size="100KB")
    shards = sorted(p.name for p in base.glob("*.safetensors"))
    assert len(shards) >= 3

    merge_adapter(base, llama_adapter, tmp_path / "out")

    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == shards
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    from safetensors import safe_open

    for key, shard in index["weight_map"].items():
        with safe_open(tmp_path / "out" / shard, "pt") as f:
            assert key in f.keys()
    assert index["weight_map"].keys() == tensors(base).keys()
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors(tmp_path / "out").values())
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (base / name).read_bytes()


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_bf16_merge_is_within_one_rounding_step_of_peft(dora, tmp_path):
    import tiny

    base = tmp_path / "base-bf16"
    tiny.make_model("llama").to(torch.bfloat16).save_pretrained(base)
    adapter = make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, use_dora=dora, target_modules=LLAMA_ALL)
    peft_merge(base, adapter, tmp_path / "peft")

    merge_adapter(base, adapter, tmp_path / "ours")

    ours, theirs, original = tensors(tmp_path / "ours"), tensors(tmp_path / "peft"), tensors(base)
    assert {t.dtype for t in ours.values()} == {torch.bfloat16}
    assert sum(not torch.equal(ours[k], original[k]) for k in ours) == 14
    for key in ours:
        assert int(bf16_ulp_distance(ours[key], theirs[key]).max()) <= 1, key


def test_dtype_option_rounds_the_fp32_merge_once(tiny_model_dir, llama_adapter, tmp_path):
    base = tiny_model_dir("llama")
    peft_merge(base, llama_adapter, tmp_path / "peft")

    merge_adapter(base, llama_adapter, tmp_path / "ours", dtype="bf16")

    ours, theirs = tensors(tmp_path / "ours"), tensors(tmp_path / "peft")
    for key in ours:
        assert torch.equal(ours[key], theirs[key].to(torch.bfloat16)), key
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_model(tmp_path / "ours").dtype == torch.bfloat16


@pytest.mark.parametrize("arch, targets, overrides", [
    ("gpt2", ["c_attn", "lm_head"], {}),
    ("llama", ["q_proj", "embed_tokens"], {"tie_word_embeddings": True}),
], ids=["lora-on-tied-lm_head", "lora-on-tied-embedding"])
def test_adapter_on_one_side_of_tied_embeddings_unties_them(arch, targets, overrides, tiny_model_dir, tmp_path):
    """The base + adapter model changes only one use of the shared tensor; so must the merged model.
    (PEFT's merge_and_unload adds the delta to the shared tensor and so changes both.)"""
    base = tiny_model_dir(arch, **overrides)
    assert "lm_head.weight" not in tensors(base)
    adapter = make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=targets)

    result = merge_adapter(base, adapter, tmp_path / "out")

    assert result.untied_embeddings
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is False
    assert "lm_head.weight" in tensors(tmp_path / "out")
    torch.testing.assert_close(model_logits(tmp_path / "out"), adapter_logits(base, adapter), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- interruption and refusal

_KILLED_CHILD = r"""
import sys
from workbench.core.merge import merge_adapter

shards = []

def pause_in_second_shard(event):
    if event.kind == "progress" and event.detail not in shards:
        shards.append(event.detail)
        if len(shards) == 2:  # the first shard is complete, the second one begun
            print("paused", flush=True)
            sys.stdin.read()  # until killed

merge_adapter(sys.argv[1], sys.argv[2], sys.argv[3], sink=pause_in_second_shard)
"""


@pytest.mark.subprocess
def test_killed_merge_leaves_only_a_named_temp_folder_that_the_next_merge_removes(tiny_model_dir, llama_adapter, tmp_path):
    base = tiny_model_dir("llama", max_shard_size="100KB")
    first_shard = sorted(p.name for p in base.glob("*.safetensors"))[0]
    dest = tmp_path / "dest"
    dest.mkdir()
    out = dest / "merged"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "child.log", "w") as log:
        child = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD, str(base), str(llama_adapter), str(out)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO)
        try:
            line = child.stdout.readline()
            assert line == "paused\n", (tmp_path / "child.log").read_text()
            assert (dest / ".tmp-merged.partial" / first_shard).is_file()
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
            child.stdin.close()

    assert sorted(p.name for p in dest.iterdir()) == [".tmp-merged.partial"]

    merge_adapter(base, llama_adapter, out)

    assert sorted(p.name for p in dest.iterdir()) == ["merged"]
    assert tensors(out).keys() == tensors(base).keys()


def test_stop_request_ends_the_merge_and_leaves_nothing(tiny_model_dir, llama_adapter, tmp_path):
    control = RunControl()

    def stop_after_first_tensor(event):
        if event.kind == "progress" and event.done > 0:
            control.request_stop()

    result = merge_adapter(tiny_model_dir("llama"), llama_adapter, tmp_path / "out", sink=stop_after_first_tensor,
                           control=control)

    assert result.stopped and result.output is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["wrong model", "missing module", "shape mismatch"])
def test_adapter_that_does_not_fit_is_refused_by_module_name_and_nothing_is_written(
        case, tiny_model_dir, llama_adapter, tmp_path):
    base, expected, bad = {
        "wrong model": (tiny_model_dir("gpt2"), "none of its 14 adapted modules exists", 14),
        "missing module": (tiny_model_dir("llama", num_hidden_layers=1), "model.layers.1.self_attn.q_proj: no such module", 7),
        "shape mismatch": (tiny_model_dir("llama", intermediate_size=128), "model.layers.0.mlp.gate_proj: shape mismatch", 6),
    }[case]

    with pytest.raises(AdapterError) as err:
        merge_adapter(base, llama_adapter, tmp_path / "merged")

    assert expected in err.value.message
    assert str(tiny_model_dir("llama")) in err.value.hint  # the model it was trained on
    assert list(tmp_path.iterdir()) == []
    problems = adapter_problems(load_adapter(llama_adapter), open_base_model(base))
    assert len(problems) == bad  # every misfit module is named, not just the first


class _Canary:
    """Unpickling this creates ``path``: proof that a file was unpickled."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_pickle_only_adapter_is_refused_without_being_opened(llama_adapter, tiny_model_dir, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes((llama_adapter / "adapter_config.json").read_bytes())
    canary = tmp_path / "unpickled"
    (folder / "adapter_model.bin").write_bytes(pickle.dumps(_Canary(canary)))

    for attempt in (lambda: load_adapter(folder),
                    lambda: export_adapter(folder, tmp_path / "export"),
                    lambda: merge_adapter(tiny_model_dir("llama"), folder, tmp_path / "merged")):
        with pytest.raises(AdapterError, match="pickle"):
            attempt()

    assert not canary.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pickled"]


@pytest.mark.parametrize("change, expected", [
    ({"peft_type": "LOHA"}, "is a LOHA adapter"),
    ({"lora_bias": True}, "uses lora_bias"),
    ({"velora_config": {"rank": 2}}, "uses velora_config"),
], ids=["other-method", "lora_bias", "other-variant"])
def test_adapters_that_cannot_be_reproduced_exactly_are_refused(change, expected, llama_adapter, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    config = json.loads((llama_adapter / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **change}))
    (folder / ADAPTER_WEIGHTS).write_bytes((llama_adapter / ADAPTER_WEIGHTS).read_bytes())

    with pytest.raises(AdapterError, match=expected):
        load_adapter(folder)


def test_existing_output_folder_is_refused_and_left_untouched(tiny_model_dir, llama_adapter, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)

    with pytest.raises(OutputError, match="already exists"):
        merge_adapter(tiny_model_dir("llama"), llama_adapter, out)
    with pytest.raises(OutputError, match="already exists"):
        export_adapter(llama_adapter, out, portable=True)

    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------- export


def test_portable_export_reproduces_mixed_ranks_alphas_and_rslora_with_one_rank_and_scale_one(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    base = tiny_model_dir("llama")
    adapter = make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, use_rslora=True,
                           target_modules=[*LLAMA_ALL, "embed_tokens"],
                           rank_pattern={"v_proj": 8, "down_proj": 2}, alpha_pattern={"o_proj": 3, "layers.1.mlp.up_proj": 20})

    out = export_adapter(adapter, tmp_path / "portable", portable=True)

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 8
    assert config["use_rslora"] is False and config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    weights = load_file(out / ADAPTER_WEIGHTS)
    assert weights.keys() == load_file(adapter / ADAPTER_WEIGHTS).keys()
    assert {t.shape[0] for k, t in weights.items() if k.endswith(("lora_A.weight", "lora_embedding_A"))} == {8}
    assert {t.shape[1] for k, t in weights.items() if k.endswith(("lora_B.weight", "lora_embedding_B"))} == {8}
    original = adapter_logits(base, adapter)
    assert not torch.allclose(original, model_logits(base), atol=1e-3)
    torch.testing.assert_close(adapter_logits(base, out), original, rtol=0, atol=1e-5)


def test_portable_export_refuses_dora_and_says_why(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir("llama"), tmp_path / "adapter", r=4, lora_alpha=8, use_dora=True,
                           target_modules=["q_proj"])

    with pytest.raises(AdapterError, match="DoRA") as err:
        export_adapter(adapter, tmp_path / "portable", portable=True)

    assert "magnitude" in err.value.message and "depends on the base weights" in err.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_export_copies_the_adapter_of_a_run_folder_as_trained(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    make_adapter(tiny_model_dir("llama"), run / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    (run / "run.toml").write_text("")
    (run / "metrics.jsonl").write_text("")

    out = export_adapter(run, tmp_path / "exported")

    files = sorted(p.name for p in (run / "adapter").iterdir())
    assert "adapter_model.safetensors" in files
    assert sorted(p.name for p in out.iterdir()) == files
    for name in files:
        if name != "README.md":  # PEFT's empty card template is replaced by a model card (test_model_card.py)
            assert (out / name).read_bytes() == (run / "adapter" / name).read_bytes()


# ----------------------------------------------------------------------------------------- inspection


@pytest.mark.parametrize("out_f, in_f, r", [(48, 32, 4), (5, 7, 8), (64, 64, 16)])
def test_lowrank_singular_values_equal_those_of_the_dense_update(out_f, in_f, r):
    g = torch.Generator().manual_seed(out_f + in_f + r)
    a, b = torch.randn(r, in_f, generator=g), torch.randn(out_f, r, generator=g)
    dense = torch.linalg.svdvals(0.5 * b.double() @ a.double())

    ours = lowrank_singular_values(a, b, 0.5)

    assert len(ours) == min(out_f, in_f, r)
    torch.testing.assert_close(ours, dense[: len(ours)], rtol=1e-9, atol=1e-9)
    assert bool((dense[len(ours):] < 1e-9).all())  # the dense SVD has nothing beyond rank r


def test_effective_rank_counts_singular_values_carrying_90_percent_of_the_energy():
    # energies 9, 1, 1 of 11: the first carries 82 %, the first two 91 %
    assert effective_rank(torch.tensor([3.0, 1.0, 1.0, 0.0])) == 2
    assert effective_rank(torch.tensor([1.0, 1.0, 1.0, 1.0])) == 4  # 75 % after three
    assert effective_rank(torch.tensor([5.0, 0.1])) == 1
    assert effective_rank(torch.zeros(4)) == 0


def test_inspection_reports_norms_spectra_and_a_blocks_by_kinds_heatmap(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    base = tiny_model_dir("llama")
    adapter = make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                           rank_pattern={"v_proj": 2})

    report = inspect_adapter(adapter, base)

    raw, weights = load_file(adapter / ADAPTER_WEIGHTS), tensors(base)
    assert len(report.modules) == 6
    for m in report.modules:
        a = raw[f"base_model.model.{m.name}.lora_A.weight"].double()
        b = raw[f"base_model.model.{m.name}.lora_B.weight"].double()
        dense = 8 / a.shape[0] * b @ a
        sv = torch.linalg.svdvals(dense)
        energy = torch.cumsum(sv**2, 0) / (sv**2).sum()
        assert m.rank == a.shape[0]
        assert m.delta_norm == pytest.approx(float(torch.linalg.matrix_norm(dense)), rel=1e-9)
        assert m.relative_norm == pytest.approx(m.delta_norm / float(weights[f"{m.name}.weight"].double().norm()), rel=1e-9)
        torch.testing.assert_close(torch.tensor(m.singular_values, dtype=torch.float64), sv[: m.rank])
        assert m.effective_rank == int((energy < 0.9).sum()) + 1
    heat = report.heatmap()
    assert heat.blocks == [0, 1]
    assert heat.kinds == ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]
    by_name = {m.name: m for m in report.modules}
    assert heat.values[1][2] == by_name["model.layers.1.mlp.down_proj"].relative_norm
    assert report.heatmap("effective_rank").values[0][1] == by_name["model.layers.0.self_attn.v_proj"].effective_rank


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_export_merge_and_inspect(tiny_model_dir, llama_adapter, tmp_path, capsys):
    from workbench.cli import main

    base = tiny_model_dir("llama")
    assert main(["export", str(llama_adapter), "--out", str(tmp_path / "portable"), "--portable"]) == 0
    assert json.loads((tmp_path / "portable" / "adapter_config.json").read_text())["lora_alpha"] == 4

    assert main(["merge", "--base", str(base), "--adapter", str(llama_adapter), "--out", str(tmp_path / "merged"),
                 "--dtype", "bf16"]) == 0
    assert {t.dtype for t in tensors(tmp_path / "merged").values()} == {torch.bfloat16}
    assert "merged 14 modules" in capsys.readouterr().out

    assert main(["inspect-adapter", str(llama_adapter), "--base", str(base), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["modules"]) == 14 and all(m["relative_norm"] > 0 for m in report["modules"])

    assert main(["inspect-adapter", str(llama_adapter)]) == 0
    table = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in table and "LoRA, 14 modules, rank 4" in table


def test_cli_errors_are_one_clear_message_without_traceback(tiny_model_dir, llama_adapter, tmp_path, capsys):
    from workbench.cli import main

    (tmp_path / "taken").mkdir()
    base, gpt2 = tiny_model_dir("llama"), tiny_model_dir("gpt2")
    capsys.readouterr()  # drop what building the models printed
    cases = [
        (["merge", "--base", str(base), "--adapter", str(llama_adapter), "--out", str(tmp_path / "taken")],
         "already exists"),
        (["merge", "--base", str(gpt2), "--adapter", str(llama_adapter), "--out", str(tmp_path / "x")],
         "does not belong to the base model"),
        (["export", str(tmp_path / "taken"), "--out", str(tmp_path / "y")], "no adapter in"),
        (["inspect-adapter", str(tmp_path / "missing")], "does not exist"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
