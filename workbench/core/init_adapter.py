"""Training on from an existing adapter (``model.init_adapter``): the common two-stage recipe, SFT first, then DPO,
ORPO or KTO from the SFT run's adapter.

The adapter is loaded with PEFT as the trainable adapter instead of a fresh one, so its target modules, ranks,
alphas and scaling come from its ``adapter_config.json``: the ``[lora]`` section takes them over (what run.toml then
records), and a ``[lora]`` value set to something else than the adapter's is refused, naming the field — a rank of
16 asked for and an adapter of rank 8 cannot both be true. Values left at their defaults are simply taken over.

The preference reference: TRL (1.16) copies a PEFT model's adapter into a frozen adapter named ``ref`` and scores
the reference with it. Started from the SFT adapter, the reference is therefore the SFT model (base + SFT adapter,
frozen), which is what DPO's recipe asks for: the policy starts equal to its reference (DPO loss log 2, margin 0) and
is pulled away from the SFT model only as far as ``training.beta`` allows. It costs one adapter's parameters more,
never a second base model. (A fresh adapter's copy has B = 0, so there the reference is the plain base.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ConfigError, LoraSettings, RunConfig

if TYPE_CHECKING:
    from peft import PeftModel

__all__ = ["adapter_folder", "read_adapter_config", "with_adapter_settings", "load_trainable"]

FIELD = "model.init_adapter"
# [lora] field → the adapter_config.json key it must agree with
_SHAPE_FIELDS = {"r": "r", "alpha": "lora_alpha", "use_rslora": "use_rslora", "use_dora": "use_dora",
                 "dropout": "lora_dropout", "bias": "bias", "rank_pattern": "rank_pattern",
                 "alpha_pattern": "alpha_pattern", "target_modules": "target_modules"}
_TASK_TYPES = {"causal-lm": "CAUSAL_LM", "sequence-classification": "SEQ_CLS"}


def adapter_folder(path: str) -> Path:
    """The folder holding the adapter: ``path`` itself, or a run folder's ``adapter/``. Refuses anything else with
    what to give instead (safetensors only: a pickled ``adapter_model.bin`` is not loaded)."""
    folder = Path(path).expanduser()
    if (folder / "adapter" / "adapter_config.json").is_file() and not (folder / "adapter_config.json").is_file():
        folder = folder / "adapter"  # a run folder: its final adapter
    if not folder.is_dir():
        raise ConfigError([f"{FIELD} = {path!r}: no such folder"], None,
                          "give the adapter folder of a finished run, e.g. runs/<sft run>/adapter")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (folder / name).is_file():
            raise ConfigError([f"{FIELD} = {path!r}: {folder} has no {name}"], None,
                              "give a PEFT adapter folder saved as safetensors (a run's adapter/ folder is one)")
    return folder


def read_adapter_config(path: str) -> dict[str, Any]:
    folder = adapter_folder(path)
    try:
        data = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError([f"{FIELD}: {folder / 'adapter_config.json'} cannot be read ({exc})"], None,
                          "give a PEFT adapter folder saved by `workbench train` or PEFT's save_pretrained") from None
    if data.get("peft_type", "LORA") != "LORA":
        raise ConfigError([f"{FIELD}: the adapter is a {data.get('peft_type')} adapter, not LoRA"], None,
                          "give a LoRA adapter folder")
    return data


def _same(field: str, ours: Any, theirs: Any) -> bool:
    if field == "target_modules":
        return set(ours) == set(theirs if isinstance(theirs, list) else [theirs])
    if field in ("alpha", "dropout"):
        return float(ours) == float(theirs)
    return bool(ours == theirs)


def with_adapter_settings(config: RunConfig) -> RunConfig:
    """``config`` with its ``[lora]`` section taken from ``model.init_adapter``'s adapter_config.json; unchanged
    without one. Raises ``ConfigError`` naming every ``[lora]`` field that contradicts the adapter."""
    path = config.model.init_adapter
    if not path:
        return config
    adapter = read_adapter_config(path)
    task_type = adapter.get("task_type")
    wanted = _TASK_TYPES.get(config.model.task)
    if task_type and wanted and task_type != wanted:
        raise ConfigError([f"{FIELD}: the adapter was trained for {task_type}, this run's model.task is "
                           f"{config.model.task!r}"], None, "start from an adapter trained for the same task")
    defaults = LoraSettings()
    lora = config.lora
    theirs = {field: adapter.get(key) for field, key in _SHAPE_FIELDS.items()}
    theirs["rank_pattern"] = theirs["rank_pattern"] or {}
    theirs["alpha_pattern"] = theirs["alpha_pattern"] or {}
    theirs["target_modules"] = sorted(theirs["target_modules"] or []) if not isinstance(theirs["target_modules"], str) \
        else theirs["target_modules"]
    problems = []
    for field, value in theirs.items():
        if value is None:
            continue
        ours = getattr(lora, field)
        if ours != getattr(defaults, field) and not _same(field, ours, value):
            problems.append(f"lora.{field} = {ours!r}, but the adapter in {path} has {value!r}: the adapter decides "
                            "it")
    if lora.blocks is not None:
        problems.append(f"lora.blocks = {lora.blocks!r}: the adapter in {path} decides which modules are trained")
    if lora.init != defaults.init:
        problems.append(f"lora.init = {lora.init!r}: the adapter's own weights are where this run starts")
    if problems:
        raise ConfigError(problems, None, "remove these fields from [lora] (they are read from the adapter), or "
                                          "start from a fresh adapter by removing model.init_adapter")
    if isinstance(theirs["target_modules"], str):
        raise ConfigError([f"{FIELD}: the adapter names its modules with a regular expression "
                           f"({theirs['target_modules']!r}), which [lora] cannot hold"], None,
                          "start from an adapter saved by `workbench train`, which lists its modules by name")
    update = {field: value for field, value in theirs.items() if value is not None}
    modules_to_save = adapter.get("modules_to_save") or []
    if modules_to_save:
        update["modules_to_save"] = sorted(set(lora.modules_to_save) | set(modules_to_save))
    return config.copy_with(lora=update)


def load_trainable(model: Any, path: str) -> "PeftModel":
    """The base ``model`` wrapped by PEFT with the adapter at ``path`` loaded as its trainable ``default`` adapter."""
    from peft import PeftModel

    from .errors import TrainingError

    folder = adapter_folder(path)
    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=True, adapter_name="default")
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes or module names of another base model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"{FIELD}: the adapter in {folder} does not fit this base model ({first[:300]})",
                            "start from an adapter trained on the same base model as model.source") from None
