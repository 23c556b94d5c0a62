"""The Data tab's inspections keep the model's tokenizer loaded between changes of the data settings, and
load it again when the model, the trust setting or the tokenizer's files change."""

import os
import shutil

import pytest

from workbench.core import models
from workbench.core.config import DataConfig
from workbench.core.data import inspection
from workbench.gui.widgets import data_panel


@pytest.fixture
def loads(monkeypatch):
    """The sources the preview loaded a tokenizer for, in order; the cache starts empty."""
    seen = []
    real = models.load_tokenizer

    def counting(source, *, trust_remote_code=False):
        seen.append((source.path, trust_remote_code))
        return real(source, trust_remote_code=trust_remote_code)

    monkeypatch.setattr(models, "load_tokenizer", counting)
    inspection._preview_tokenizer.cache_clear()
    yield seen
    inspection._preview_tokenizer.cache_clear()


def test_the_preview_loads_a_tokenizer_once_per_model(loads, facts_file, tiny_model_dir, tmp_path):
    folder = tiny_model_dir("llama")
    source = models.resolve_source(str(folder))
    data = DataConfig(train_files=[str(facts_file)])
    first = data_panel.inspect_data(data, source, False, seed=0)
    data_panel.inspect_data(DataConfig(train_files=[str(facts_file)], max_length=16), source, False, seed=0)
    assert loads == [(source.path, False)], "a change of the data settings reuses the loaded tokenizer"
    assert first["previews"] and first["stats"] is not None

    data_panel.inspect_data(data, source, True, seed=0)
    assert loads[-1] == (source.path, True), "another trust setting loads afresh"

    copy = shutil.copytree(folder, tmp_path / "other-model")
    other = models.resolve_source(str(copy))
    data_panel.inspect_data(data, other, False, seed=0)
    assert loads[-1] == (other.path, False), "another model loads its own tokenizer"

    # A tokenizer file edited in place (a fixed chat template, say) is read again.
    config = copy / "tokenizer_config.json"
    config.write_text(config.read_text() + "\n")
    count = len(loads)
    data_panel.inspect_data(data, other, False, seed=0)
    assert len(loads) == count + 1

    # So is one outside the usual few (added_tokens.json, vocab.txt, a remote-code tokenizer's .py...);
    # a weight file is not a tokenizer's and changes nothing.
    (copy / "added_tokens.json").write_text("{}")
    data_panel.inspect_data(data, other, False, seed=0)
    assert len(loads) == count + 2
    weights = next(copy.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    data_panel.inspect_data(data, other, False, seed=0)
    assert len(loads) == count + 2
