"""Safe by default: pickle weights and a model's own Python code are refused until the user allows them, the
refusal names the setting that allows them and what would be unpickled or run, and once allowed they load.
Even allowed, pickle goes through torch.load(weights_only=True): a checkpoint holding more than tensors is
still refused, and nothing in it runs."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from tiny import pickled_copy
from workbench.core.errors import ConsentRequired, ModelSourceError
from workbench.core.models import load_config, load_model, resolve_source


class _Canary:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _logits(model) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def pickled_model(tiny_model_dir, tmp_path) -> Path:
    """The tiny llama with its weights as pytorch_model.bin only (how older Hub models ship)."""
    return pickled_copy(tiny_model_dir("llama"), tmp_path / "pickled")


def test_pickle_weights_are_refused_until_allowed_then_load_exactly(pickled_model, tiny_model_dir):
    with pytest.raises(ConsentRequired) as refused:
        resolve_source(str(pickled_model))
    assert refused.value.setting == "allow_pickle"
    assert refused.value.files == [str(pickled_model / "pytorch_model.bin")]
    assert "allow_pickle = true" in refused.value.hint and "--allow-pickle" in refused.value.hint

    source = resolve_source(str(pickled_model), allow_pickle=True)
    assert source.weights == "pickle"
    model = load_model(source, load_config(source))
    reference_source = resolve_source(str(tiny_model_dir("llama")))
    reference = load_model(reference_source, load_config(reference_source))
    assert torch.equal(_logits(model), _logits(reference))


def test_allowed_pickle_that_holds_code_is_still_refused_and_never_runs(pickled_model, tmp_path):
    canary = tmp_path / "UNPICKLED"
    (pickled_model / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": _Canary(canary)}))
    source = resolve_source(str(pickled_model), allow_pickle=True)
    with pytest.raises(ModelSourceError, match="objects other than tensors") as refused:
        load_model(source, load_config(source))
    assert not isinstance(refused.value, ConsentRequired), "no setting allows this one"
    assert not canary.exists()


CONFIGURATION = '''
from pathlib import Path
from transformers import LlamaConfig

Path(MARKER).touch()  # the model's own code ran


class MyConfig(LlamaConfig):
    model_type = "my_custom_arch"
'''

MODELING = '''
from transformers import LlamaForCausalLM

from .configuration_my import MyConfig


class MyModel(LlamaForCausalLM):
    config_class = MyConfig
'''


@pytest.fixture
def remote_code_model(tiny_model_dir, tmp_path) -> Path:
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir("llama"), folder)
    (folder / "configuration_my.py").write_text(CONFIGURATION.replace("MARKER", repr(str(tmp_path / "RAN"))))
    (folder / "modeling_my.py").write_text(MODELING)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="my_custom_arch", architectures=["MyModel"],
                  auto_map={"AutoConfig": "configuration_my.MyConfig", "AutoModelForCausalLM": "modeling_my.MyModel"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_remote_code_is_refused_naming_the_files_then_runs_when_allowed(remote_code_model, tiny_model_dir, tmp_path):
    source = resolve_source(str(remote_code_model))
    with pytest.raises(ConsentRequired) as refused:
        load_config(source)
    assert refused.value.setting == "trust_remote_code"
    assert refused.value.files == [str(remote_code_model / "configuration_my.py"),
                                   str(remote_code_model / "modeling_my.py")]
    assert "configuration_my.py" in refused.value.message and "--trust-remote-code" in refused.value.hint
    assert not (tmp_path / "RAN").exists(), "nothing of the model's code ran"

    config = load_config(source, trust_remote_code=True)
    assert type(config).__name__ == "MyConfig"
    model = load_model(source, config, trust_remote_code=True)
    assert type(model).__name__ == "MyModel"
    reference_source = resolve_source(str(tiny_model_dir("llama")))
    reference = load_model(reference_source, load_config(reference_source))
    assert torch.equal(_logits(model), _logits(reference)), "the same weights through the model's own class"
    assert (tmp_path / "RAN").exists(), "its code ran once allowed"
