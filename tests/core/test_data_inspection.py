"""The Data tab's inspection without Qt: what it returns, and the tokenizer it keeps loaded between inspections
(loaded again when the model, the trust setting or the tokenizer's files change)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from workbench.core import models
from workbench.core.config import DataConfig
from workbench.core.data import detect, inspection, prepare, preview


@pytest.fixture
def loads(monkeypatch):
    """The (folder, trust) pairs a tokenizer was loaded for, in order; the cache starts and ends empty."""
    seen = []
    real = models.load_tokenizer

    def counting(source, *, trust_remote_code=False):
        seen.append((source.path.name, trust_remote_code))
        return real(source, trust_remote_code=trust_remote_code)

    monkeypatch.setattr(models, "load_tokenizer", counting)
    inspection._preview_tokenizer.cache_clear()
    yield seen
    inspection._preview_tokenizer.cache_clear()


@pytest.fixture
def data(tmp_path) -> DataConfig:
    path = tmp_path / "qa.jsonl"
    rows = [{"prompt": f"Question {i}: what is two plus two? ", "completion": "Answer: four."} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return DataConfig(train_files=[str(path)])


@pytest.fixture
def model(tiny_model_dir, tmp_path):
    """A private copy of the tiny model, so edits to its files stay in this test."""
    return shutil.copytree(tiny_model_dir("llama"), tmp_path / "model")


def test_without_a_model_only_the_detection_runs(loads, data):
    result = inspection.inspect_data(data, None, False, seed=0)
    assert result["info"] == detect(data)
    assert result["previews"] is None and result["stats"] is None
    assert loads == []


def test_with_a_model_the_preview_and_statistics_are_the_data_functions_own(loads, data, model):
    result = inspection.inspect_data(data, models.resolve_source(str(model)), False, seed=0)
    tokenizer = models.load_tokenizer(models.resolve_source(str(model)))
    assert result["info"] == detect(data)
    assert result["previews"] == preview(data, tokenizer, n=5) and len(result["previews"]) == 5
    assert result["stats"] == prepare(data, tokenizer, seed=0).stats


def test_the_tokenizer_is_loaded_once_per_model_trust_setting_and_state_of_its_files(loads, data, model, tmp_path):
    source = models.resolve_source(str(model))
    inspection.inspect_data(data, source, False, seed=0)
    inspection.inspect_data(DataConfig(train_files=data.train_files, max_length=64, format="prompt-completion"),
                            source, False, seed=0)
    assert loads == [("model", False)], "new data settings reuse the loaded tokenizer"
    inspection.inspect_data(data, source, True, seed=0)
    assert loads[-1] == ("model", True)

    other = models.resolve_source(str(shutil.copytree(model, tmp_path / "other")))
    count = len(loads)
    for _ in range(2):  # the last two stay loaded: going back and forth loads each once
        inspection.inspect_data(data, other, False, seed=0)
        inspection.inspect_data(data, source, True, seed=0)
    assert loads[count:] == [("other", False)]

    chat_template = model / "tokenizer_config.json"
    chat_template.write_text(chat_template.read_text() + "\n")  # edited in place: read again
    inspection.inspect_data(data, source, True, seed=0)
    assert loads[-1] == ("model", True) and len(loads) == count + 2
    weights = next(model.glob("*.safetensors"))  # not a tokenizer file: changes nothing
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    inspection.inspect_data(data, source, True, seed=0)
    assert len(loads) == count + 2


def test_the_files_stamp_covers_tokenizer_files_and_the_sources_own_gguf(tmp_path):
    folder = tmp_path / "gguf"
    folder.mkdir()
    for name in ("model.Q4.gguf", "other.Q8.gguf", "model.safetensors", "tokenizer.json", "added_tokens.json"):
        (folder / name).write_bytes(b"x" * len(name))
    (folder / "sub").mkdir()  # folders are not files a tokenizer reads
    source = models.ModelSource(str(folder / "model.Q4.gguf"), "gguf", folder, "gguf", gguf_file="model.Q4.gguf")
    stamp = inspection._tokenizer_files_stamp(source)
    assert [entry[0] for entry in stamp] == ["added_tokens.json", "model.Q4.gguf", "tokenizer.json"]
    assert all(size == len(name) for name, size, _ in stamp)
    gone = models.ModelSource("gone", "local", Path(tmp_path / "gone"), "none")
    assert inspection._tokenizer_files_stamp(gone) == ()
