"""Image classification on tiny ViT and ResNet models from configs, trained on an image folder of 8 × 8 digits
(scikit-learn's bundled set when installed, else numpy patterns): LoRA on Conv2d counts what PEFT counts, the
classifier learns, and the saved adapter (head and batch-norm statistics included) reloads with PEFT alone."""

import json
from pathlib import Path

import pytest
import torch

from workbench.core import events as ev
from workbench.core.classification import LABELS_FILE
from workbench.core.config import LoraSettings, RunConfig
from workbench.core.errors import DataError
from workbench.core.training import run

STEPS = 30


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    import tiny

    return tiny.save_digit_images(tmp_path_factory.mktemp("digits"), per_class=12, classes=4)


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    import tiny

    cache: dict = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = tiny.save_vision_model(arch, tmp_path_factory.mktemp(arch))
        return cache[arch]

    return get


def make_config(base: Path, tmp_path: Path, train: Path, validation: Path | None = None, preset: str = "attention",
                **lora) -> RunConfig:
    data = {"train_files": [str(train)]}
    if validation is not None:
        data["validation_files"] = [str(validation)]
    return RunConfig.from_dict({
        "model": {"source": str(base), "task": "image-classification"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "preset": preset, **lora},
        "data": data,
        "training": {"max_steps": STEPS, "learning_rate": 1e-2, "batch_size": 8, "warmup_ratio": 0.0,
                     "scheduler": "constant", "device": "cpu", "eval_steps": STEPS},
        "output": {"runs_root": str(tmp_path / "runs")},
    })


@pytest.mark.parametrize("arch, preset", [("resnet", "conv"), ("vit", "attention")])
def test_trainable_count_matches_peft(arch, preset, vision_dir):
    from peft import get_peft_model
    from transformers import AutoModelForImageClassification

    from workbench.core.layers import build_tree, count_selection, lora_config_from_selection, resolve_selection

    model = AutoModelForImageClassification.from_pretrained(vision_dir(arch))
    tree = build_tree(model)
    settings = LoraSettings(r=4, preset=preset)
    selection = resolve_selection(tree, settings, "image-classification")
    if arch == "resnet":
        assert selection.targets and all(tree.nodes[n].type == "Conv2d" for n in selection.targets)
    counts = count_selection(tree, selection)
    peft_model = get_peft_model(model, lora_config_from_selection(selection, settings, "image-classification"))
    assert counts.trainable_params == peft_model.get_nb_trainable_parameters()[0]


def test_all_linear_leaves_convolutions_alone(vision_dir):
    from transformers import AutoModelForImageClassification

    from workbench.core.layers import build_tree

    tree = build_tree(AutoModelForImageClassification.from_pretrained(vision_dir("resnet")))
    assert not tree.preset("all-linear")
    assert tree.preset("conv") == [n.name for n in tree.adaptable() if n.type == "Conv2d"]


@pytest.mark.parametrize("arch, preset", [("resnet", "conv"), ("vit", "attention")])
def test_image_classifier_learns_and_reloads_with_peft(arch, preset, vision_dir, digits, tmp_path):
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    base = vision_dir(arch)
    sink = ev.ListSink()
    result = run(make_config(base, tmp_path, digits, validation=digits, preset=preset), sink)
    before, final = sink.of(ev.Evaluation)[0], sink.of(ev.Evaluation)[-1]
    assert (before.step, final.step) == (0, STEPS)
    assert final.eval_loss < 0.5 * before.eval_loss, (before, final)
    assert final.metrics["eval_accuracy"] >= 0.75 > before.metrics["eval_accuracy"] + 0.2, (before, final)

    labels = json.loads((result.adapter_dir / LABELS_FILE).read_text())
    assert labels["id2label"] == {"0": "0", "1": "1", "2": "2", "3": "3"}
    id2label = {int(i): n for i, n in labels["id2label"].items()}
    torch.manual_seed(99)  # a head initialised differently from training's: only saved weights count
    model = AutoModelForImageClassification.from_pretrained(base, num_labels=4, id2label=id2label,
                                                            label2id=labels["label2id"], ignore_mismatched_sizes=True)
    model = PeftModel.from_pretrained(model, result.adapter_dir).eval()
    paths = sorted(digits.glob("*/*.png"))
    processor = AutoImageProcessor.from_pretrained(base)
    pixels = processor([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    truth = torch.tensor([labels["label2id"][p.parent.name] for p in paths])
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    assert torch.nn.functional.cross_entropy(logits, truth).item() == pytest.approx(final.eval_loss, rel=1e-4)
    # the streaming merge (LoRA on Conv2d, the head and batch-norm statistics; for ViT through the names transformers
    # renames on load, q_proj for the checkpoint's attention.query) loads as one classifier with the same outputs
    from workbench.core.merge import merge_adapter

    merged_dir = merge_adapter(base, result.adapter_dir, tmp_path / "merged").output
    streamed = AutoModelForImageClassification.from_pretrained(merged_dir).eval()
    assert streamed.config.id2label == id2label
    with torch.no_grad():
        streamed_logits = streamed(pixel_values=pixels).logits
    torch.testing.assert_close(streamed_logits, logits, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        peft_merged = model.merge_and_unload()(pixel_values=pixels).logits
    torch.testing.assert_close(peft_merged, logits, rtol=1e-4, atol=1e-5)


def test_folder_without_class_subfolders_is_refused(vision_dir, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    from PIL import Image

    Image.new("L", (8, 8)).save(flat / "a.png")
    with pytest.raises(DataError, match="no class sub-folders .the images lie in the folder itself"):
        run(make_config(vision_dir("vit"), tmp_path, flat), ev.ListSink())


def test_image_table_with_relative_paths(vision_dir, digits, tmp_path):
    from workbench.core.config import DataConfig
    from workbench.core.images import read_image_rows

    table = digits / "list.jsonl"
    table.write_text("".join(json.dumps({"file": f"{c}/000.png", "digit": c}) + "\n" for c in range(4)))
    rows = read_image_rows(DataConfig(columns={"image": "file", "label": "digit"}), [str(table)], "train_files")
    assert [(Path(r.text).relative_to(digits).as_posix(), r.label) for r in rows] == [
        (f"{c}/000.png", str(c)) for c in range(4)]
    table.write_text(json.dumps({"file": "9/missing.png", "digit": 9}) + "\n")
    with pytest.raises(DataError, match="line 1: the image .*missing.png does not exist"):
        read_image_rows(DataConfig(columns={"image": "file", "label": "digit"}), [str(table)], "train_files")
    table.unlink()
