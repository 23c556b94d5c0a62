"""Model cards: a real 4-step run's adapter, its export and its merge each carry a README.md that a markdown parser
renders, whose YAML front matter parses, and that huggingface_hub reads as a model card; a user's README.md stays."""

import json

import pytest
import yaml
from huggingface_hub import ModelCard, metadata_load
from markdown_it import MarkdownIt

from test_training import make_config  # noqa: E402  (tests/core is on sys.path through pytest's rootdir)
from workbench.core import model_card
from workbench.core.export import export_adapter
from workbench.core.merge import merge_adapter
from workbench.core.runs import read_events
from workbench.core.training import run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A 4-step run with validation every 2 steps, and the base model's own card (with a license) in its folder."""
    tmp = tmp_path_factory.mktemp("card")
    base = tiny_model_dir("llama")
    (base / "README.md").write_text("---\nlicense: mit\nlibrary_name: transformers\n---\n# The tiny base\n")
    cfg = make_config(base, tmp, max_steps=4, eval_steps=2).copy_with(data={"validation_split": 0.25})
    return run(cfg), base


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def rendered(text: str) -> tuple[str, list]:
    md = MarkdownIt("commonmark").enable("table")
    return md.render(text), md.parse(text)


def test_the_run_adapter_card_renders_parses_and_reads_as_a_hub_card(trained):
    result, base = trained
    readme = result.adapter_dir / "README.md"
    text = readme.read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "peft" and meta["license"] == "mit"  # the license from the base's own card
    assert "peft" in meta["tags"] and "lora" in meta["tags"] and meta["pipeline_tag"] == "text-generation"
    assert "base_model" not in meta, "a local base folder has no Hub id to name"
    assert metadata_load(readme) == meta
    card = ModelCard.load(readme)
    assert card.data.library_name == "peft" and card.data.license == "mit"

    html, tokens = rendered(text)
    assert "<h2>Settings</h2>" in html and "<h2>Training</h2>" in html and "<h2>Evaluation</h2>" in html
    assert "<table>" in html and "PeftModel.from_pretrained" in html
    # The numbers in the card are the run's own.
    losses = [e.loss for e in read_events(result.run_dir) if e.kind == "step"]
    evals = [e for e in read_events(result.run_dir) if e.kind == "evaluation"]
    assert len(losses) == 4 and [e.step for e in evals] == [0, 2, 4]
    assert f"loss {losses[0]:.4f} at step 1 → {losses[-1]:.4f} at step 4" in text
    best = min(evals, key=lambda e: e.eval_loss)
    assert f"Best eval loss {best.eval_loss:.4f} at step {best.step}" in text
    assert "eval_runtime" not in text, "the Trainer's timings are not evaluation numbers"
    assert "| rank (r) | 8 |" in text and "| alpha | 16 |" in text
    assert "| target modules | 14 modules (down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj) |" in text
    # The curves: an image the card points at, a real PNG beside it.
    images = [c for t in tokens if t.type == "inline" for c in (t.children or []) if c.type == "image"]
    assert [i.attrs["src"] for i in images] == [model_card.CURVES_FILE]
    png = (result.adapter_dir / model_card.CURVES_FILE).read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (900, 550)


def test_export_and_merge_carry_their_own_cards(trained, tmp_path):
    result, base = trained
    exported = export_adapter(result.adapter_dir, tmp_path / "portable", portable=True)
    text = (exported / "README.md").read_text()
    assert front_matter(text)["library_name"] == "peft" and "Portable form" in text
    assert (exported / model_card.CURVES_FILE).read_bytes().startswith(PNG_MAGIC)

    merged = merge_adapter(base, result.adapter_dir, tmp_path / "merged").output
    text = (merged / "README.md").read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "transformers" and meta["license"] == "mit" and "merged" in meta["tags"]
    assert "# Merged LoRA model" in text and "The tiny base" not in text, "the base's card copy was replaced"
    assert ModelCard.load(merged / "README.md").data.library_name == "transformers"
    html, _ = rendered(text)
    assert "AutoModelForCausalLM.from_pretrained(&quot;path/to/this/folder&quot;)" in html


def test_a_readme_of_the_users_is_never_replaced(trained, tmp_path):
    result, _ = trained
    adapter = tmp_path / "adapter"
    export_adapter(result.adapter_dir, adapter)
    mine = "# My notes\n\nDo not touch.\n"
    (adapter / "README.md").write_text(mine)
    assert model_card.write_model_card(adapter, kind="adapter", adapter=adapter) is None
    assert (adapter / "README.md").read_text() == mine
    again = export_adapter(adapter, tmp_path / "again")  # an export copies the user's README as it is
    assert (again / "README.md").read_text() == mine


def test_builtin_and_hub_bases_name_the_hub_model_and_license(tmp_path):
    facts = model_card.gather_facts("adapter", base="builtin:smollm2-135m-instruct")
    assert (facts.base_model, facts.license) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-0.5B", "r": 4,
                                                             "lora_alpha": 8, "task_type": "CAUSAL_LM"}))
    assert model_card.write_model_card(adapter, kind="gguf-adapter", adapter=adapter,
                                       gguf_files=["adapter.gguf", "Modelfile"]) == adapter / "README.md"
    text = (adapter / "README.md").read_text()
    meta = metadata_load(adapter / "README.md")
    assert meta["base_model"] == "Qwen/Qwen2.5-0.5B" and meta["library_name"] == "gguf"
    assert "--lora adapter.gguf" in text and "ollama create my-model -f Modelfile" in text
    assert not (adapter / model_card.CURVES_FILE).exists(), "no run, no curves"
