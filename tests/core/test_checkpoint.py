"""The one reader of a Hugging Face model folder's files (workbench/core/checkpoint.py): JSON objects, the shard
list, whole safetensors files, header offsets, the meta-device skeleton, and a short import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import tiny
from workbench.core import checkpoint
from workbench.core.errors import AdapterError, ModelSourceError

# ------------------------------------------------------------------------------------------------ JSON


@pytest.mark.parametrize("content, words", [
    (b'{"model_type": "llama",\n  hidden_size: 64}', "config.json is not valid JSON (line 2: Expecting property name"),
    (b"\xff\xfe\x00\x01", "config.json is not UTF-8 text"),
    (b"[1, 2]", "config.json does not hold a JSON object"),
])
def test_a_bad_json_file_is_named_with_what_is_wrong(content, words, tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(AdapterError) as err:
        checkpoint.read_json_object(path, AdapterError)
    assert err.value.message.startswith(f"cannot read {path}: {words}"), err.value.message
    assert "damaged or not JSON" in err.value.hint and "download it again" in err.value.hint


def test_a_missing_json_file_is_a_model_source_error_by_default(tmp_path):
    with pytest.raises(ModelSourceError, match=r"cannot read \S*nothing\.json: No such file or directory"):
        checkpoint.read_json_object(tmp_path / "nothing.json")
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert checkpoint.read_json_object(tmp_path / "ok.json") == {"a": 1}


# ---------------------------------------------------------------------------------------- weight files


def _shards(folder, names):
    for name in names:
        save_file({name.split("-")[1]: torch.zeros(2)}, folder / name)
    weight_map = {f"t{i}": name for i, name in enumerate(names)}
    (folder / checkpoint.INDEX_FILE).write_text(json.dumps({"weight_map": weight_map}))


def test_the_index_lists_the_shards_in_natural_order(tmp_path):
    names = [f"model-{i:d}-of-12.safetensors" for i in (10, 9, 11, 1)]  # unpadded numbers: 9 before 10
    _shards(tmp_path, names)
    files, indexed = checkpoint.weight_files(tmp_path)
    assert indexed and [f.name for f in files] == [f"model-{i}-of-12.safetensors" for i in (1, 9, 10, 11)]


def test_missing_shards_are_named_and_an_empty_index_is_refused(tmp_path):
    names = [f"model-{i}-of-5.safetensors" for i in range(1, 6)]
    _shards(tmp_path, names)
    for name in names[1:]:
        (tmp_path / name).unlink()
    with pytest.raises(ModelSourceError, match=r"is incomplete: model-2-of-5\.safetensors, model-3-of-5\.safetensors, "
                                               r"model-4-of-5\.safetensors … listed in model\.safetensors\.index\.json"):
        checkpoint.weight_files(tmp_path)
    (tmp_path / checkpoint.INDEX_FILE).write_text(json.dumps({"weight_map": {}}))
    with pytest.raises(ModelSourceError, match="lists no weights"):
        checkpoint.weight_files(tmp_path)


def test_without_an_index_the_weights_are_model_safetensors_only(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "other-name.safetensors")
    with pytest.raises(ModelSourceError, match=r"has no model\.safetensors or model\.safetensors\.index\.json"):
        checkpoint.weight_files(tmp_path)
    save_file({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    assert checkpoint.weight_files(tmp_path) == ([tmp_path / "model.safetensors"], False)


# ----------------------------------------------------------------------------------------- safetensors


@pytest.fixture
def whole(tmp_path):
    path = tmp_path / "whole.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({"a": torch.randn(7, 3, generator=g), "b": torch.randn(5, generator=g).to(torch.bfloat16),
               "c": torch.arange(4, dtype=torch.int64)}, path)
    return path


def test_header_offsets_point_at_the_bytes_safetensors_reads(whole):
    infos = checkpoint.read_safetensors_header(whole)
    assert [t.offset for t in infos] == sorted(t.offset for t in infos), "file order"
    data = whole.read_bytes()
    with safe_open(str(whole), framework="pt") as f:
        for t in infos:
            tensor = f.get_tensor(t.key)
            assert tuple(tensor.shape) == t.shape and t.file == whole
            assert data[t.offset:t.offset + t.nbytes] == tensor.contiguous().view(torch.uint8).numpy().tobytes(), t.key
    assert max(t.offset + t.nbytes for t in infos) == len(data)


def test_a_whole_file_has_no_problem_and_a_cut_one_says_how_short_it_is(whole, tmp_path):
    assert checkpoint.safetensors_problem(whole) is None
    data = whole.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-10])
    problem = checkpoint.safetensors_problem(cut)
    assert problem.truncated and str(problem) == f"the header describes {len(data):,} bytes but the file has {len(data) - 10:,}"
    with pytest.raises(ModelSourceError, match=r"cut\.safetensors is not a readable safetensors file \(truncated: "
                                               r"the header describes"):
        checkpoint.read_safetensors_header(cut)
    cut.write_bytes(data[:12])
    assert str(checkpoint.safetensors_problem(cut)) == "its header is missing or cut off"


def test_bytes_after_the_data_are_refused_as_the_loaders_refuse_them(whole, tmp_path):
    padded = tmp_path / "padded.safetensors"
    padded.write_bytes(whole.read_bytes() + b"\0" * 16)
    problem = checkpoint.safetensors_problem(padded)
    assert problem is not None and not problem.truncated and "the safetensors library refuses it" in str(problem)
    with pytest.raises(SafetensorError):  # what transformers would meet when loading it
        with safe_open(str(padded), framework="pt"):
            pass


def test_a_header_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes((12).to_bytes(8, "little") + b"{not json!}" + b" " + b"\0" * 8)
    assert str(checkpoint.safetensors_problem(path)) == "its header is not valid safetensors JSON"


# ------------------------------------------------------------------------------------------- skeleton


def test_the_skeleton_is_the_saved_class_or_the_task_head_on_the_meta_device():
    config = tiny.make_config("gpt2")
    config.architectures = ["GPT2LMHeadModel"]
    saved = checkpoint.build_skeleton(config, None)
    assert type(saved).__name__ == "GPT2LMHeadModel" and all(p.is_meta for p in saved.parameters())
    config.num_labels = 3
    head = checkpoint.build_skeleton(config, "sequence-classification")
    assert type(head).__name__ == "GPT2ForSequenceClassification"
    config.architectures = None
    assert type(checkpoint.build_skeleton(config, None)).__name__ == "GPT2LMHeadModel", "no class named: causal LM"


# ------------------------------------------------------------------------------------------- importing


def test_the_model_file_modules_import_without_the_ml_stack():
    """``workbench inspect`` and the window import these on their short paths; torch comes later, in a worker."""
    modules = ["models", "checkpoint", "builtin", "gguf_import", "demo", "cache", "compat", "peft_format"]
    code = (f"import sys\nfor m in {modules!r}:\n    __import__('workbench.core.' + m)\n"
            "print(sorted(n for n in ('torch', 'transformers', 'peft', 'datasets', 'gguf') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
