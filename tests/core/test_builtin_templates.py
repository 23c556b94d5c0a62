"""Built-in architecture templates (core/builtin_templates/): the first open of a common architecture's config on a
fresh machine gets, from a template shipped with Workbench, exactly the tree a meta-device build gives, for the
sources' own sizes and for sizes no source has; another transformers version or a damaged file means a fresh
build; the user's cache and templates come first, and a built-in template writes nothing to the cache."""

from __future__ import annotations

import importlib.metadata
import json
import marshal
import shutil
import sys
import types
from pathlib import Path

import pytest

from workbench.core import builtin_templates, layers, tree_cache
from workbench.core.builtin_template_sources import SOURCES
from workbench.core.builtin_templates.generate import learn_builtin, problems, write_templates
from workbench.core.models import open_overview
from workbench.core.tree_cache import module_code_bytes, open_overview_cached
from workbench.core.tree_template import node_facts, template_key, tree_from_template

SHIPPED = builtin_templates.DIRECTORY
SHIPPED_UNDER = {json.loads(p.read_text()).get("transformers") for p in SHIPPED.glob("*.json")}
LLAMA3_8B, LLAMA3_70B = SOURCES["meta-llama/Meta-Llama-3-8B"], SOURCES["meta-llama/Meta-Llama-3-70B"]
# Sizes no source has, each with its architecture's non-size fields as on the Hub.
MADE_UP = {
    "llama-3-made-up": {**LLAMA3_8B, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48,
                        "num_attention_heads": 40, "num_key_value_heads": 10},
    "qwen3-made-up": {**SOURCES["Qwen/Qwen3-0.6B"], "hidden_size": 1536, "intermediate_size": 4608,
                      "num_hidden_layers": 20, "num_attention_heads": 12, "num_key_value_heads": 4, "head_dim": 96},
    "mistral-v0.3-made-up": {**SOURCES["mistralai/Mistral-7B-v0.3"], "hidden_size": 2560, "intermediate_size": 9216,
                             "num_hidden_layers": 12, "num_attention_heads": 20, "num_key_value_heads": 5},
    "olmo2-made-up": {**SOURCES["allenai/OLMo-2-1124-7B"], "hidden_size": 3072, "intermediate_size": 8192,
                      "num_hidden_layers": 16, "num_attention_heads": 24, "num_key_value_heads": 24},
}


def _folder(root: Path, name: str, config: dict) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _assert_same(got, fresh) -> None:
    assert node_facts(got.tree) == node_facts(fresh.tree)
    assert list(got.tree.nodes) == list(fresh.tree.nodes)
    assert (got.architecture, got.dtype, got.source) == (fresh.architecture, fresh.dtype, fresh.source)
    text = fresh.hf_config.get_text_config()
    for field in ("hidden_size", "vocab_size", "num_attention_heads", "model_type", "_attn_implementation"):
        assert getattr(got.hf_config, field) == getattr(text, field), field


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """name → (folder, the fresh overview through transformers), built once for the module."""
    root = tmp_path_factory.mktemp("builtin-models")
    configs = {"llama-3-70b": LLAMA3_70B, "phi-4": SOURCES["microsoft/phi-4"], **MADE_UP}
    return {name: (folder, open_overview(str(folder)))
            for name, config in configs.items() for folder in [_folder(root, name, config)]}


@pytest.fixture(scope="module")
def learned() -> dict[str, dict]:
    """The sources these tests open, learned in-process as ``python -m workbench.core.builtin_templates`` does."""
    names = ("meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-70B", "Qwen/Qwen3-0.6B",
             "mistralai/Mistral-7B-v0.3", "allenai/OLMo-2-1124-7B", "microsoft/phi-4")
    templates, notes = learn_builtin({name: SOURCES[name] for name in names}, tasks=(("causal-lm", None),))
    classifiers, more = learn_builtin({"Qwen/Qwen3-0.6B": SOURCES["Qwen/Qwen3-0.6B"]},
                                      tasks=(("sequence-classification", None), ("sequence-classification", 2)))
    assert notes == more == []
    return {**templates, **classifiers}


@pytest.fixture(scope="module", autouse=True)
def builtin_dir(learned, tmp_path_factory):
    """What the runtime reads here: those templates, learned under the installed transformers. The shipped ones are
    keyed by the version they were learned under, which the machine running the tests need not have (pyproject
    allows any 5.x); where it has it, the test below checks that they are the same."""
    folder = tmp_path_factory.mktemp("builtin-templates")
    write_templates(learned, folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtin_templates, "DIRECTORY", folder)
        yield folder


@pytest.mark.parametrize("name", ["llama-3-70b", "phi-4", *MADE_UP])
def test_the_first_open_on_a_fresh_machine_gets_the_fresh_tree_from_a_builtin_template(name, models, tmp_path):
    folder, fresh = models[name]
    cache = tmp_path / "cache"
    got, origin = open_overview_cached(str(folder), cache_dir=cache)
    assert origin == "builtin"
    _assert_same(got, fresh)
    assert _files(cache) == []  # nothing learned or remembered: the built-in template is not copied


def test_the_70b_is_the_published_llama_3_70b(models, tmp_path):
    got, _ = open_overview_cached(str(models["llama-3-70b"][0]), cache_dir=tmp_path)
    assert got.tree.total_params == 70_553_706_496 and got.tree.num_blocks == 80
    assert got.tree["model.layers.79.self_attn.k_proj"].shape == (1024, 8192)


def test_a_changed_coefficient_is_a_different_tree(models):
    """What the tests above compare can fail: one formula of the shipped template changed, one number is wrong."""
    folder, fresh = models["llama-3-made-up"]
    raw = json.loads((folder / "config.json").read_text())
    template = json.loads(builtin_templates.builtin_template_path(template_key(raw, "causal-lm", None, builtin=True))
                          .read_text())
    assert node_facts(tree_from_template(template, raw)) == node_facts(fresh.tree)
    at = next(i for i, cands in enumerate(template["formulas"]) if cands[0][0][1] == ["hidden_size"])
    template["formulas"][at] = [[[c + 1, f] for c, f in cand] for cand in template["formulas"][at]]
    assert node_facts(tree_from_template(template, raw)) != node_facts(fresh.tree)


def test_sizes_that_agree_in_every_other_field_share_one_template(learned):
    llama = learned[template_key(LLAMA3_70B, "causal-lm", None, builtin=True)]
    assert llama["sources"] == ["meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-70B"]
    assert llama["architecture"] == "LlamaForCausalLM" and len(learned) == 7
    assert {t["transformers"] for t in learned.values()} == {importlib.metadata.version("transformers")}


@pytest.mark.skipif(SHIPPED_UNDER != {importlib.metadata.version("transformers")},
                    reason=f"the shipped templates were learned under transformers {SHIPPED_UNDER}: another version "
                           "finds none of them (python -m workbench.core.builtin_templates learns them again)")
def test_the_shipped_files_are_what_their_sources_give(learned):
    assert problems(learned, SHIPPED, complete=False) == []


def test_the_check_names_missing_stale_and_extra_files(learned, tmp_path):
    assert write_templates(learned, tmp_path) == (7, 0)
    assert problems(learned, tmp_path) == [] and write_templates(learned, tmp_path) == (0, 0)
    first, second = sorted(learned)[:2]
    path = tmp_path / f"{first}.json"
    template = json.loads(path.read_text())
    template["formulas"][5][0][0][0] += 1
    path.write_text(json.dumps(template))
    (tmp_path / f"{second}.json").unlink()
    (tmp_path / "0000.json").write_text("{}")
    found = problems(learned, tmp_path)
    assert sorted(p.split(":")[0] for p in found) == ["extra", "missing", "stale"], found
    assert problems(learned, tmp_path, complete=False) == [p for p in found if not p.startswith("extra")]
    assert write_templates(learned, tmp_path) == (2, 1) and problems(learned, tmp_path) == []


def test_another_transformers_version_finds_no_builtin_template(models, tmp_path, monkeypatch):
    folder, fresh = models["llama-3-70b"]
    raw = json.loads((folder / "config.json").read_text())
    key = template_key(raw, "causal-lm", None, builtin=True)
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "5.0.0.other" if name == "transformers" else real_version(name))
    assert template_key(raw, "causal-lm", None, builtin=True) != key
    got, origin = open_overview_cached(str(folder), cache_dir=tmp_path / "cache")
    assert origin == "built"
    _assert_same(got, fresh)


def test_a_damaged_builtin_template_means_a_fresh_build(models, tmp_path, monkeypatch):
    folder, fresh = models["llama-3-70b"]
    shipped = tmp_path / "shipped"
    shutil.copytree(builtin_templates.DIRECTORY, shipped, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setattr(builtin_templates, "DIRECTORY", shipped)
    key = template_key(json.loads((folder / "config.json").read_text()), "causal-lm", None, builtin=True)
    for i, damage in enumerate(('{"format": 1, "formulas": [', '{"format": 1}', "[]", '{"format": 1, "formulas": "x"}',
                                '{"format": 1, "formulas": [], "structure": [], "memory": {}}')):
        (shipped / f"{key}.json").write_text(damage)
        got, origin = open_overview_cached(str(folder), cache_dir=tmp_path / f"cache-{i}")
        assert origin == "built", damage
        _assert_same(got, fresh)
    assert (shipped / f"{key}.json").read_text() == damage  # the runtime never writes a built-in template


def test_precedence_cache_then_user_template_then_builtin_then_built(models, tmp_path, monkeypatch):
    folder, _ = models["llama-3-70b"]
    cache = tmp_path / "cache"
    assert open_overview_cached(str(folder), cache_dir=cache)[1] == "builtin"
    assert open_overview_cached(str(folder), cache_dir=cache, use_templates=False)[1] == "built"  # remembers it
    assert open_overview_cached(str(folder), cache_dir=cache)[1] == "cache"  # the remembered tree beats a built-in
    # A template learned on this machine beats a built-in one: without built-ins the 8B is built and its template
    # learned; with them back, the 70B (not remembered in this cache) comes from the learned one.
    other = tmp_path / "other-cache"
    monkeypatch.setattr(builtin_templates, "DIRECTORY", tmp_path / "no-builtins")
    assert open_overview_cached(str(_folder(tmp_path, "8b", LLAMA3_8B)), cache_dir=other)[1] == "built"
    monkeypatch.undo()
    assert len(list((other / "templates").glob("*.json"))) == 1
    assert open_overview_cached(str(folder), cache_dir=other)[1] == "template"
    assert open_overview_cached(str(folder), cache_dir=tmp_path / "third", use_cache=False)[1] == "built"


def test_a_sequence_classifier_from_the_command_line_and_the_window(models, tmp_path):
    folder, _ = models["qwen3-made-up"]
    for num_labels in (None, 2):
        got, origin = open_overview_cached(str(folder), task="sequence-classification", num_labels=num_labels,
                                           cache_dir=tmp_path / "cache")
        fresh = open_overview(str(folder), task="sequence-classification", num_labels=num_labels)
        assert origin == "builtin"
        assert node_facts(got.tree) == node_facts(fresh.tree) and got.tree["score"].shape == (2, 1536)


def test_the_code_fingerprint_without_source_files(monkeypatch):
    """A frozen bundle may keep no .py files (PyInstaller: bytecode in its archive, ``__file__`` naming a path that
    does not exist): the fingerprint is then taken from the compiled code, and changes with it."""
    with_source = tree_cache._code_fingerprint()
    monkeypatch.setattr(layers, "__file__", "/nonexistent/workbench/core/layers.py")
    assert module_code_bytes(layers) == marshal.dumps(layers.__loader__.get_code(layers.__name__))
    without = tree_cache._code_fingerprint()
    assert without != with_source and len(without) == 64
    bare = types.ModuleType("workbench.core.not_a_file")
    bare.__file__ = "/nonexistent/not_a_file.py"
    assert module_code_bytes(bare).startswith(b"workbench.core.not_a_file ")


@pytest.mark.subprocess
@pytest.mark.skipif(SHIPPED_UNDER != {importlib.metadata.version("transformers")},
                    reason=f"the shipped templates were learned under transformers {SHIPPED_UNDER}")
def test_the_first_inspect_of_a_hub_config_imports_no_modeling_code_and_prints_what_no_cache_does(models, tmp_path):
    import os
    import subprocess

    env = {**os.environ, "LORA_WORKBENCH_CACHE": str(tmp_path / "cache")}
    code = ("import sys\nfrom workbench.cli import main\ncode = main(sys.argv[1:])\n"
            "print('MODULES', 'transformers' in sys.modules, 'torch._dynamo' in sys.modules, file=sys.stderr)\n"
            "raise SystemExit(code)")
    runs = []
    for extra in ([], ["--no-cache"]):
        done = subprocess.run([sys.executable, "-c", code, "inspect", str(models["llama-3-70b"][0]), "--json",
                               "--device", "cpu", *extra], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        runs.append((json.loads(done.stdout), done.stderr.split("MODULES")[-1].split()))
    (first, first_modules), (fresh, fresh_modules) = runs
    assert first_modules == ["False", "False"] and fresh_modules == ["True", "True"]
    assert first == fresh and first["total_params"] == 70_553_706_496
    assert _files(tmp_path / "cache") == []


@pytest.mark.skipif(SOURCES["builtin:smollm2-135m-instruct"]["transformers_version"]
                    != importlib.metadata.version("transformers"), reason="converted under another transformers")
def test_the_demo_model_as_converted_is_its_source(smollm2):
    """The demo's model is the first one a fresh install opens: its source must stay what the conversion writes."""
    assert json.loads((smollm2 / "config.json").read_text()) == SOURCES["builtin:smollm2-135m-instruct"]
