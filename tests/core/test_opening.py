"""What the window shows when a model opens, computed in core: the device description, the overview, the text of
remote code it asks consent for; and the commands shown after a GGUF export."""

from pathlib import Path
from types import SimpleNamespace

import psutil

from workbench.core.config import RunConfig
from workbench.core.device_info import describe_device
from workbench.core.gguf_export.planning import next_commands
from workbench.core.opening import consent_preview, open_model


def test_a_cpu_run_is_described_with_the_ram_available():
    device = describe_device("cpu")
    assert device.kind == "cpu"
    assert 0 < device.available_bytes <= psutil.virtual_memory().total
    assert device.text == f"CPU, {device.available_bytes / 2**30:.1f} GiB RAM available"


def test_a_gpu_the_machine_lacks_is_described_as_the_cpu_it_has():
    import torch

    if torch.cuda.is_available():
        assert describe_device("cuda").kind == "cuda"
    else:
        assert describe_device("cuda").kind == describe_device("auto").kind == "cpu"


def test_opening_a_model_gives_its_tree_and_the_device(tiny_model_dir):
    config = RunConfig.from_dict({"model": {"source": str(tiny_model_dir("llama"))}, "training": {"device": "cpu"}})
    opened = open_model(config)
    names = [node.name for node in opened["overview"].tree.root.walk()]
    assert opened["device_kind"] == "cpu" and opened["device_text"].startswith("CPU, ")
    assert opened["available"] > 0
    assert opened["overview"].hf_config.model_type == "llama"
    assert "model.layers.1.self_attn.q_proj" in names


def test_the_consent_preview_shows_the_code_to_trust_and_cuts_long_files(tmp_path):
    short, long = tmp_path / "modeling_x.py", tmp_path / "configuration_x.py"
    short.write_text("import os\n")
    long.write_text("x" * 80)
    text = consent_preview([str(short), str(long), str(tmp_path / "missing.py")], "trust_remote_code", limit=45)
    assert f"# ===== {short}\nimport os\n" in text
    assert f"# ===== {long}\n{'x' * 45}\n… (35 more characters)" in text
    assert f"# ===== {tmp_path / 'missing.py'}\n(cannot read: No such file or directory)" in text
    assert consent_preview([str(short)], "allow_pickle") == ""  # pickle files are not text to read


def test_after_an_ollama_export_the_commands_name_the_modelfile(tmp_path):
    out = tmp_path / "my-model"
    result = SimpleNamespace(modelfile=out / "Modelfile", output=out,
                             instructions=f"cd {out}\nollama create my-model -f Modelfile\nollama run my-model")
    assert next_commands(result) == f"ollama create my-model -f {out / 'Modelfile'}\nollama run my-model"
    llama_cpp = SimpleNamespace(modelfile=None, output=Path("x"), instructions="llama-cli -m x/model.gguf")
    assert next_commands(llama_cpp) == "llama-cli -m x/model.gguf"
