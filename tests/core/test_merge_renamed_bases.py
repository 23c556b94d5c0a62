"""The streaming merge on bases whose checkpoint names are not the model's module names, against PEFT.

* A ViT image classifier: transformers 5 renames its modules on load (the checkpoint's ``encoder.layer.0.attention.
  attention.query`` is the model's ``layers.0.attention.q_proj``); the adapter names the model's modules.
* A bare encoder (``BertModel``, as sentence-transformers' MiniLM ships) trained as a sequence classifier: the
  adapter names ``bert.encoder…``, the checkpoint stores ``encoder…``, and the head exists only in the adapter
  (``modules_to_save``); the merged folder must load as ``AutoModelForSequenceClassification`` with that head.

Each adapter is built with PEFT with non-zero B matrices and a head unlike any initialisation, then merged by
``merge_adapter``; the merged folder, loaded by transformers alone, must give the logits of the unmerged
PeftModel and of PEFT's ``merge_and_unload`` (fp32 rounding). Also: LoRA on Conv2d (ResNet) in the adapter
report, and a clear refusal for a weight transformers builds by converting stored tensors (DINOv2's SwiGLU).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import tiny
from workbench.core.classification import LabelSet, write_label_file
from workbench.core.errors import AdapterError
from workbench.core.merge import merge_adapter

VIT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]
BERT_TARGETS = ["query", "key", "value", "dense"]


def _randomise_heads(peft_model, seed: int) -> None:
    """A trained head, in the sense that matters here: values no initialisation of the base would give."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


def _save_adapter(peft_model, folder: Path, labels: LabelSet) -> Path:
    peft_model.save_pretrained(folder)
    write_label_file(folder, labels)  # as a classification run saves it: merge_adapter writes the classes from it
    return folder


def _stored_keys(folder: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


def _pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _assert_merges_like_peft(peft_model, merged_logits: torch.Tensor, run) -> None:
    """Streamed merge == unmerged PeftModel == PEFT's merge_and_unload, to fp32 rounding."""
    with torch.no_grad():
        unmerged = run(peft_model)
        peft_merged = run(copy.deepcopy(peft_model).merge_and_unload())
    torch.testing.assert_close(merged_logits, unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged_logits, peft_merged, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ ViT


def _bare_vit(folder: Path) -> Path:
    """A ViTModel without a head (how google/vit-base-patch16-224-in21k ships): names lack the ``vit.`` prefix too."""
    from transformers import ViTConfig, ViTModel

    kw = {k: v for k, v in tiny.VISION_CONFIGS["vit"].items() if k != "model_type"}
    torch.manual_seed(0)
    ViTModel(ViTConfig(**kw), add_pooling_layer=False).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("base_kind", ["classifier-3", "classifier-10", "bare"],
                         ids=["same-classes", "head-of-another-size", "bare-ViTModel"])
def test_vit_classifier_merges_as_peft_does(base_kind, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageClassification

    from workbench.core.adapter_report import inspect_adapter

    if base_kind == "bare":
        base = _bare_vit(tmp_path / "vit")
    else:
        base = tiny.save_vision_model("vit", tmp_path / "vit", num_labels=int(base_kind.split("-")[1]))
    labels = LabelSet("single-label", ("cat", "dog", "owl"))
    torch.manual_seed(1)
    model = AutoModelForImageClassification.from_pretrained(
        base, num_labels=3, id2label=labels.id2label, label2id=labels.label2id, ignore_mismatched_sizes=True)
    # init_lora_weights=False: B is random, so every adapted weight really changes
    config = LoraConfig(r=4, lora_alpha=8, target_modules=VIT_TARGETS, modules_to_save=["classifier"],
                        init_lora_weights=False)
    peft_model = get_peft_model(model, config).eval()
    _randomise_heads(peft_model, seed=2)
    adapter = _save_adapter(peft_model, tmp_path / "adapter", labels)
    assert any("q_proj" in k for k in json.loads((adapter / "adapter_config.json").read_text())["target_modules"])

    result = merge_adapter(base, adapter, tmp_path / "merged")
    assert result.merged_modules == 2 * len(VIT_TARGETS)
    # the output keeps the checkpoint's own names and layout (transformers renames them on load, as for the base)
    head = {"classifier.weight", "classifier.bias"}
    assert _stored_keys(result.output) == _stored_keys(base) | head
    merged = AutoModelForImageClassification.from_pretrained(result.output).eval()
    assert merged.config.id2label == labels.id2label
    pixels = _pixels()
    with torch.no_grad():
        merged_logits = merged(pixel_values=pixels).logits
    assert merged_logits.shape == (5, 3)
    _assert_merges_like_peft(peft_model, merged_logits, lambda m: m(pixel_values=pixels).logits)
    # and the merge changed what the base computes (the comparison above is not between two copies of the base)
    plain = AutoModelForImageClassification.from_pretrained(base).eval()
    with torch.no_grad():
        assert not torch.allclose(plain.vit(pixel_values=pixels).last_hidden_state,
                                  merged.vit(pixel_values=pixels).last_hidden_state, atol=1e-3)
    # the adapter report reads each adapted weight under its stored name
    q_proj = "vit.layers.0.attention.q_proj"
    stats = {m.name: m for m in inspect_adapter(adapter, base).modules}[q_proj]
    weight = peft_model.get_submodule(q_proj).base_layer.weight.detach().double()
    assert stats.weight_norm == pytest.approx(float(torch.linalg.vector_norm(weight)), rel=1e-6)


# ------------------------------------------------------------------------------------ bare BERT encoder


def _bare_bert(folder: Path) -> Path:
    from transformers import BertModel

    torch.manual_seed(0)
    BertModel(tiny.make_config("bert", initializer_range=0.2)).save_pretrained(folder)
    tiny.make_tokenizer().save_pretrained(folder)
    return folder


def _tokens(folder: Path):
    from transformers import AutoTokenizer

    texts = ["The quick brown fox jumps.", "Paris is the capital of France.", "what is two plus two?"]
    return AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")


def test_bare_encoder_classifier_merges_into_a_loadable_classifier(tmp_path):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    base = _bare_bert(tmp_path / "bert")
    assert json.loads((base / "config.json").read_text())["architectures"] == ["BertModel"]
    assert not any(k.startswith("bert.") for k in _stored_keys(base))
    labels = LabelSet("single-label", ("negative", "neutral", "positive"))
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=3, id2label=labels.id2label, label2id=labels.label2id)  # the head is created here
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=BERT_TARGETS,
                        init_lora_weights=False)  # SEQ_CLS: PEFT trains and saves the classifier in full
    peft_model = get_peft_model(model, config).eval()
    _randomise_heads(peft_model, seed=3)
    adapter = _save_adapter(peft_model, tmp_path / "adapter", labels)

    result = merge_adapter(base, adapter, tmp_path / "merged")
    assert result.merged_modules > 0 and result.replaced_tensors == 2  # classifier weight and bias
    written = json.loads((result.output / "config.json").read_text())
    assert written["architectures"] == ["BertForSequenceClassification"]
    assert {"classifier.weight", "classifier.bias"} <= _stored_keys(result.output)
    merged = AutoModelForSequenceClassification.from_pretrained(result.output).eval()
    assert merged.config.id2label == labels.id2label and merged.config.num_labels == 3
    tokens = _tokens(result.output)
    with torch.no_grad():
        merged_logits = merged(**tokens).logits
    _assert_merges_like_peft(peft_model, merged_logits, lambda m: m(**tokens).logits)


def test_bare_encoder_merge_from_the_command_line(tmp_path, capsys):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from workbench.cli import main

    base = _bare_bert(tmp_path / "bert")
    labels = LabelSet("single-label", ("no", "yes"))
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2, id2label=labels.id2label,
                                                               label2id=labels.label2id)
    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query", "value"],
                                                  init_lora_weights=False)).eval()
    adapter = _save_adapter(peft_model, tmp_path / "adapter", labels)
    out = tmp_path / "merged"
    assert main(["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(out)]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokens = _tokens(out)
    with torch.no_grad():
        torch.testing.assert_close(merged(**tokens).logits, peft_model(**tokens).logits, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- converted weights: refused


def test_a_weight_transformers_converts_on_load_is_refused_by_name(tmp_path):
    """DINOv2 with SwiGLU stores gate and up projections fused (``mlp.weights_in``); transformers chunks the tensor
    on load, so LoRA on ``gate_proj`` has no stored tensor to merge into: refused, naming the way out."""
    from peft import LoraConfig, get_peft_model
    from transformers import Dinov2Config, Dinov2ForImageClassification

    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                          image_size=16, patch_size=4, use_swiglu_ffn=True, num_labels=2)
    Dinov2ForImageClassification(config).save_pretrained(tmp_path / "dino")
    model = Dinov2ForImageClassification.from_pretrained(tmp_path / "dino")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["gate_proj", "q_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    with pytest.raises(AdapterError) as info:
        merge_adapter(tmp_path / "dino", adapter, tmp_path / "merged")
    message = str(info.value)
    assert "gate_proj" in message and "weights_in" in message and "merge_and_unload" in message
    assert "q_proj:" not in message  # renamed only, it fits: the one problem is the converted weight
    assert not (tmp_path / "merged").exists()


# -------------------------------------------------------------------------------- Conv2d adapter report


def test_adapter_report_of_a_conv2d_adapter_matches_peft_delta(tmp_path, capsys):
    """LoRA on a ResNet's convolutions (7 × 7 stem, 3 × 3 blocks, 1 × 1 shortcut): the report's ||ΔW||_F and
    singular values are those of PEFT's own update, flattened to (out × in·kh·kw), ||W||_F is the stored kernel's,
    and ``workbench inspect-adapter`` prints them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageClassification

    from workbench.core.adapter_report import inspect_adapter

    base = tiny.save_vision_model("resnet", tmp_path / "resnet", num_labels=3)
    model = AutoModelForImageClassification.from_pretrained(base)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert {model.get_submodule(n).kernel_size for n in convs} == {(7, 7), (3, 3), (1, 1)}
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=6, target_modules=convs, init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)

    report = inspect_adapter(adapter, base)
    assert [m.name for m in report.modules] == convs  # in the model's order
    for stats in report.modules:
        layer = peft_model.get_submodule(stats.name)
        delta = layer.get_delta_weight("default").detach()
        assert delta.ndim == 4
        expected = torch.linalg.svdvals(delta.flatten(1).double())[: stats.rank]
        torch.testing.assert_close(torch.tensor(stats.singular_values, dtype=torch.float64), expected,
                                   rtol=1e-6, atol=1e-8)
        assert stats.delta_norm == pytest.approx(float(torch.linalg.vector_norm(delta.double())), rel=1e-6)
        weight = layer.base_layer.weight.detach().double()
        assert stats.weight_norm == pytest.approx(float(torch.linalg.vector_norm(weight)), rel=1e-6)
        assert stats.relative_norm is not None and stats.relative_norm > 0

    from workbench.cli import main

    assert main(["inspect-adapter", str(adapter), "--base", str(base), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in printed["modules"]] == convs
    assert [m["delta_norm"] for m in printed["modules"]] == pytest.approx([m.delta_norm for m in report.modules])
