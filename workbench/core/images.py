"""Image classification: images and their classes, read into rows the classification head trains on.

``data.train_files`` (and ``validation_files``) name, each,

* an **image folder** with one sub-folder per class (the common layout: ``digits/0/*.png``, ``digits/1/*.png``…),
  the sub-folder's name being the class; or
* a **table of image paths and labels** (JSONL, JSON, CSV, Parquet, read by ``core/data/readers.py``) with the
  roles ``image`` (a path, relative to the table's folder or absolute) and ``label``; ``data.columns`` maps them
  to other column names (``{image = "file", label = "digit"}``).

The label set, its checks and the metrics are those of text classification (``core/classification.py``). Images
are opened and turned into ``pixel_values`` by the model's own image processor (``preprocessor_config.json``),
which resizes them to what the model expects (sklearn's 8 × 8 digits upscaled to a ViT's 224 × 224, say), one
batch at a time as the Trainer asks for it, so a large folder is never held in memory decoded.

Models without their own head (LoRA on a vision backbone) also need their ``BatchNorm`` layers trained and saved
with the adapter (``batch_norm_modules``): their running statistics change while training, and an adapter
without them would give other outputs on a freshly loaded base.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .classification import (ClassificationData, LabelledRow, LabelSet, check_validation_labels, discover_labels,
                             split_validation)
from .config import DataConfig, ModelConfig
from .errors import DataError, ModelSourceError, first_line

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["IMAGE_SUFFIXES", "read_image_rows", "image_label_set", "load_image_processor", "prepare_images",
           "batch_norm_modules", "make_image_collator", "inspect_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_FOLDER_HINT = ("Give an image folder with one sub-folder per class (cats/…, dogs/…), or a JSONL/CSV file with an "
                "'image' path and a 'label' per row.")


def read_image_rows(cfg: DataConfig, files: list[str], setting: str) -> list[LabelledRow]:
    """One row per image: ``text`` holds the image's path, ``label`` its class name."""
    rows: list[LabelledRow] = []
    for name in files:
        path = Path(name).expanduser()
        if path.is_dir() and not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
            rows += _read_image_folder(path, setting)
        else:
            rows += _read_image_table(cfg, name, setting)
    return rows


def _read_image_folder(folder: Path, setting: str) -> list[LabelledRow]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
        raise DataError(f"{folder}: this image folder has no class sub-folders"
                        + (" (the images lie in the folder itself)" if loose else "") + ".",
                        f"Put each class's images in a sub-folder named after the class, or fix data.{setting}.")
    rows = []
    for sub in classes:
        for image in sorted(sub.iterdir()):
            if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES:
                rows.append(LabelledRow(str(image), None, sub.name, str(image)))
    if not rows:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class sub-folders.", _FOLDER_HINT)
    return rows


def _read_image_table(cfg: DataConfig, name: str, setting: str) -> list[LabelledRow]:
    from .classification import _checked_label, _class_name
    from .data.readers import _iter_records, _open_source

    src = _open_source(name, setting)
    image_col, label_col = cfg.columns.get("image", "image"), cfg.columns.get("label", "label")
    rows = []
    for record in _iter_records(src):
        where = f"{src.path}: {src.unit} {record.row}"
        try:
            if record.data is None or record.problem:
                raise DataError(f"{where}: {record.problem}", _FOLDER_HINT)
            value = record.data.get(image_col)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}: column '{image_col}' must hold the path of an image, found {value!r}.",
                                'Map the column with data.columns, e.g. columns = {image = "file"}.')
            image = Path(value).expanduser()
            image = image if image.is_absolute() else src.path.parent / image
            if not image.is_file():
                raise DataError(f"{where}: the image {image} does not exist.",
                                "Paths are relative to the folder of the table; fix the path or the row.")
            label = _class_name(_checked_label(record.data, label_col, "single-label", where), label_col, where)
            rows.append(LabelledRow(str(image), None, label, where))
        except DataError:
            if not cfg.skip_bad_rows:
                raise
    return rows


def image_label_set(model: ModelConfig, data: DataConfig) -> LabelSet:
    """The classes an image run trains (from the training images; ``model.labels`` fixes their order)."""
    from .data.readers import _require_train_files

    if model.problem_type != "single-label":
        raise DataError(f"model.problem_type = {model.problem_type!r} is not supported for image classification.",
                        'Set model.problem_type = "single-label": one class per image.')
    rows = read_image_rows(data, _require_train_files(data), "train_files")
    return discover_labels(rows, "single-label", model.labels)


def load_image_processor(source: Any, trust_remote_code: bool) -> Any:
    """The model's image processor, which resizes and normalises images the way the model was trained."""
    from transformers import AutoImageProcessor

    if not (Path(source.path) / "preprocessor_config.json").is_file():
        raise ModelSourceError(f"{source.spec} has no image processor (preprocessor_config.json), so its images "
                               "cannot be prepared.", "Choose a vision model folder saved with its image processor.")
    try:
        return AutoImageProcessor.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load the image processor of {source.spec}: {first_line(exc)}",
                               "Check preprocessor_config.json in the model folder.") from None


def prepare_images(model: ModelConfig, cfg: DataConfig, processor: Any, labels: LabelSet, *, num_channels: int = 3,
                   seed: int = 42) -> ClassificationData:
    """Training and validation images as datasets that open and process each batch when it is read."""
    from .data.readers import _require_train_files

    train = read_image_rows(cfg, _require_train_files(cfg), "train_files")
    validation = read_image_rows(cfg, cfg.validation_files, "validation_files")
    train, validation = split_validation(train, validation, cfg, seed)
    check_validation_labels(validation, labels)
    mode = "RGB" if num_channels == 3 else "L"
    _check_images_open(train + validation)
    return ClassificationData(_image_dataset(train, labels, processor, mode),
                              _image_dataset(validation, labels, processor, mode) if validation else None, labels, 0)


def _check_images_open(rows: list[LabelledRow]) -> None:
    """Every file is an image PIL can read (its header only: cheap), so a bad file stops the run before training."""
    from PIL import Image, UnidentifiedImageError

    for row in rows:
        try:
            with Image.open(row.text) as image:
                image.verify()
        except (OSError, UnidentifiedImageError, SyntaxError) as exc:
            raise DataError(f"{row.where}: not a readable image ({first_line(exc)}).",
                            "Remove or replace the file.") from None


def _image_dataset(rows: list[LabelledRow], labels: LabelSet, processor: Any, mode: str) -> "Dataset":
    from datasets import Dataset

    def transform(batch: dict[str, list]) -> dict[str, Any]:
        from PIL import Image

        images = []
        for path in batch["image"]:
            with Image.open(path) as image:
                images.append(image.convert(mode))
        return {"pixel_values": processor(images, return_tensors="pt")["pixel_values"], "labels": batch["labels"]}

    ds = Dataset.from_dict({"image": [r.text for r in rows], "labels": [labels.label2id[r.label] for r in rows]})
    return ds.with_transform(transform)


def make_image_collator() -> Any:
    """Stacks ``pixel_values`` and ``labels`` (transformers' ``DefaultDataCollator``)."""
    from transformers import DefaultDataCollator

    return DefaultDataCollator()


def batch_norm_modules(model: Any) -> list[str]:
    """Names of the model's batch-norm layers (see the module docstring: trained and saved with the adapter)."""
    import torch

    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]


def inspect_images(model: ModelConfig, data: DataConfig) -> dict[str, Any]:
    """What the Data tab shows for an image run (the same shape as ``classification.inspect_labels``), with
    ``samples`` holding the first image of each class, for thumbnails."""
    from .data.readers import _require_train_files

    rows = read_image_rows(data, _require_train_files(data), "train_files")
    labels = discover_labels(rows, "single-label", model.labels)
    validation = read_image_rows(data, data.validation_files, "validation_files")
    check_validation_labels(validation, labels)
    first: dict[str, LabelledRow] = {}
    for row in rows:
        first.setdefault(row.label, row)
    return {"labels": labels, "train_rows": len(rows), "validation_rows": len(validation), "columns": [],
            "samples": [(r.text, r.label, r.where) for r in first.values()], "images": True}
