"""The one reader of a Hugging Face model folder's files (workbench/core/checkpoint.py): JSON objects, the shard
list, whole safetensors files, header offsets, the meta-device skeleton, and a short import."""

from __future__ import annotations

import json
import re
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


@pytest.mark.subprocess
def test_the_model_file_modules_import_without_the_ml_stack():
    """``workbench inspect`` and the window import these on their short paths; torch comes later, in a worker."""
    modules = ["models", "checkpoint", "builtin", "gguf_import", "demo", "cache", "compat", "peft_format"]
    code = (f"import sys\nfor m in {modules!r}:\n    __import__('workbench.core.' + m)\n"
            "print(sorted(n for n in ('torch', 'transformers', 'peft', 'datasets', 'gguf') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------- the input-path policy (issue #14)


@pytest.mark.parametrize("field, value, found, wanted", [
    ("model_type", ["llama"], "a list", "a string"),
    ("hidden_size", "64", "a string", "a whole number"),
    ("architectures", {"0": "LlamaForCausalLM"}, "an object", "a list"),
    ("num_hidden_layers", True, "true or false", "a whole number"),
    ("tie_word_embeddings", 1, "a whole number", "true or false"),
])
def test_a_config_field_of_the_wrong_json_type_is_named_with_both_types(tmp_path, field, value, found, wanted):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", field: value}))
    with pytest.raises(ModelSourceError) as err:
        checkpoint.read_json_object(path, fields=checkpoint.CONFIG_JSON_FIELDS)
    assert f'has "{field}": {json.dumps(value)}, which is {found}; it must be {wanted}' in err.value.message


def test_null_config_fields_are_allowed_as_transformers_allows_them(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "rope_scaling": None, "architectures": None, "vocab_size": 10}))
    assert checkpoint.read_json_object(path, fields=checkpoint.CONFIG_JSON_FIELDS)["rope_scaling"] is None


@pytest.mark.parametrize("name", ["config.json", "adapter_config.json", "model.safetensors.index.json"])
def test_deeply_nested_json_is_a_message_not_a_recursion_error(tmp_path, name):
    path = tmp_path / name
    path.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(AdapterError, match=re.escape(name) + " is nested too deeply"):
        checkpoint.read_json_object(path, AdapterError)


@pytest.mark.timeout(30)  # the guard against a hang: a FIFO without a writer never opens
def test_special_files_are_refused_without_being_opened(tmp_path):
    import os
    import socket

    from workbench.core.paths import not_regular_problem

    os.mkfifo(tmp_path / "config.json")
    with pytest.raises(ModelSourceError, match=r"config\.json \S*config\.json is a FIFO \(named pipe\), not a regular file"):
        checkpoint.read_json_object(tmp_path / "config.json")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "file").write_text("x")
    assert not_regular_problem(tmp_path / "sock") == "is a socket, not a regular file"
    assert not_regular_problem("/dev/null") == "is a device, not a regular file"
    assert not_regular_problem(tmp_path / "loop") == "cannot be read: Too many levels of symbolic links"
    assert [not_regular_problem(p) for p in (tmp_path / "file", tmp_path, tmp_path / "gone", tmp_path / "file" / "x")] \
        == [None] * 4  # a file, a folder, nothing, something under a file: the caller's to judge


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_a_shard_index_naming_a_file_outside_the_folder_is_refused(tmp_path, where):
    folder, elsewhere = tmp_path / "model", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    save_file({"w": torch.zeros(2)}, elsewhere / "x.safetensors")
    name = {"parent": "../elsewhere/x.safetensors", "absolute": str(elsewhere / "x.safetensors"),
            "symlink": "model-1-of-1.safetensors"}[where]
    if where == "symlink":
        (folder / name).symlink_to(elsewhere / "x.safetensors")
    (folder / checkpoint.INDEX_FILE).write_text(json.dumps({"weight_map": {"w": name}}))
    with pytest.raises(ModelSourceError, match=rf"the shard '{re.escape(name)}' points outside {re.escape(str(folder))}"):
        checkpoint.weight_files(folder)
    (folder / "inner").mkdir()  # a shard in a sub-folder, even through '..' that comes back, is inside
    save_file({"w": torch.zeros(2)}, folder / "inner" / "x.safetensors")
    (folder / checkpoint.INDEX_FILE).write_text(json.dumps({"weight_map": {"w": "inner/../inner/x.safetensors"}}))
    assert checkpoint.weight_files(folder)[0] == [folder / "inner/../inner/x.safetensors"]


def test_weight_shapes_that_disagree_with_config_are_blamed_on_config(tmp_path):
    from transformers import AutoConfig

    folder = tiny.save_model("llama", tmp_path / "m")
    config = AutoConfig.from_pretrained(folder)
    assert checkpoint.weight_shape_mismatches(folder, config) == []
    config.vocab_size += 20
    found = checkpoint.weight_shape_mismatches(folder, config)
    assert {m.key for m in found} == {"lm_head.weight", "model.embed_tokens.weight"}
    stored = config.vocab_size - 20
    assert found[0].stored == (stored, 64) and found[0].expected == (stored + 20, 64)
    assert ("vocab_size", stored + 20) in found[0].fields
    assert found[0].describe() == (f"{found[0].key} is [{stored}, 64] in the weight files, but config.json says "
                                   f"vocab_size = {stored + 20}, so the model expects [{stored + 20}, 64]")


def test_shards_of_the_hugging_face_cache_may_link_into_their_repositorys_blobs(tmp_path):
    """The Hub cache stores every file as a link from snapshots/<revision>/ into the repository's blobs/: that is
    inside the download, not an escape (and a link into another repository's blobs still is one)."""
    repo = tmp_path / "models--org--name"
    snapshot, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    save_file({"w": torch.zeros(2)}, blobs / "f00d")
    (snapshot / "model-1-of-1.safetensors").symlink_to(blobs / "f00d")
    (snapshot / checkpoint.INDEX_FILE).write_text(json.dumps({"weight_map": {"w": "model-1-of-1.safetensors"}}))
    assert checkpoint.weight_files(snapshot)[0] == [snapshot / "model-1-of-1.safetensors"]
    other = tmp_path / "models--org--other" / "blobs"
    other.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, other / "beef")
    (snapshot / "model-1-of-1.safetensors").unlink()
    (snapshot / "model-1-of-1.safetensors").symlink_to(other / "beef")
    with pytest.raises(ModelSourceError, match="points outside"):
        checkpoint.weight_files(snapshot)
