"""Preference training (``training.method = "dpo" | "orpo" | "kto"``) through TRL's trainers.

TRL writes the losses (DPO, ORPO, KTO); this module only reads the rows, checks them, and builds TRL's trainer
as a subclass of the workbench's own (atomic checkpoints), with the same arguments, callbacks and run folder as
supervised training. The model is the PEFT model: with no ``ref_model`` TRL (1.16) copies the starting adapter into
a frozen adapter named ``ref`` and scores the reference with it — for a fresh adapter (B = 0) that is the base — so
no second copy of the model is loaded (ORPO needs no reference at all).

Rows (``data.columns`` maps the roles to other column names, as for the other formats):

``dpo``, ``orpo``  ``prompt``, ``chosen``, ``rejected``: text, or lists of chat messages (TRL's conversational
                   format; the chat template renders them).
``kto``            ``prompt``, ``completion``, ``label``: ``label`` true for a good completion, false for a bad one.

A preference run can start from an SFT run's adapter: ``model.init_adapter = "runs/<sft run>/adapter"`` trains that
adapter on, and the reference is then the SFT model (the SFT adapter, frozen), as DPO's recipe asks
(core/init_adapter.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import DataConfig
from .errors import DataError, TrainingError

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["ROLES", "PreferenceData", "require_trl", "read_preference_rows", "prepare_preference", "trainer_class",
           "trainer_arguments", "orpo_input_tokens"]

ROLES: dict[str, tuple[str, ...]] = {
    "dpo": ("prompt", "chosen", "rejected"),
    "orpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
}
TRL_REQUIREMENT = "trl>=1.16,<2"


@dataclass
class PreferenceData:
    """Rows for a TRL trainer, which tokenizes them itself. ``packed`` is False: preference pairs are never packed."""

    train: "Dataset"
    validation: "Dataset | None"
    packed: bool = False


def require_trl(method: str) -> None:
    try:
        import trl  # noqa: F401
    except ImportError:
        raise TrainingError(f"training.method = {method!r} needs the trl package, which is not installed.",
                            f"Install it with: pip install '{TRL_REQUIREMENT}'") from None


def read_preference_rows(cfg: DataConfig, files: list[str], setting: str, method: str) -> list[dict[str, Any]]:
    """Each row with the method's roles, checked: non-empty text or message lists; KTO labels true/false."""
    from .data.readers import checked_rows

    roles = ROLES[method]

    def build(data: dict[str, Any], where: str) -> dict[str, Any]:
        return {role: _checked(data, cfg.columns.get(role, role), role, where, method) for role in roles}

    return checked_rows(files, setting, cfg.skip_bad_rows, _hint(method), build)


def _hint(method: str) -> str:
    return (f"training.method = {method!r} reads rows with {', '.join(ROLES[method])}; map other column names with "
            'data.columns, e.g. columns = {chosen = "better", rejected = "worse"}.')


def _checked(data: dict[str, Any], column: str, role: str, where: str, method: str) -> Any:
    if column not in data:
        raise DataError(f"{where}: there is no column '{column}' (the {role} of a {method} row; columns: "
                        f"{', '.join(map(str, data)) or 'none'}).", _hint(method))
    value = data[column]
    if role == "label":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise DataError(f"{where}: the label {value!r} (column '{column}') must be true (a good completion) or "
                        "false (a bad one).", _hint(method))
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return value
    raise DataError(f"{where}: column '{column}' must hold text or a list of chat messages, found {value!r}"[:300] + ".",
                    _hint(method))


def prepare_preference(cfg: DataConfig, method: str, *, seed: int = 42) -> PreferenceData:
    from datasets import Dataset

    from .classification import split_validation
    from .data.readers import _require_train_files

    train = read_preference_rows(cfg, _require_train_files(cfg), "train_files", method)
    if not train:
        raise DataError("The training files have no usable rows.", _hint(method))
    validation = read_preference_rows(cfg, cfg.validation_files, "validation_files", method)
    train, validation = split_validation(train, validation, cfg, seed)
    return PreferenceData(Dataset.from_list(train), Dataset.from_list(validation) if validation else None)


def _trl_classes(method: str) -> tuple[type, type]:
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # TRL 1.x keeps ORPO among its experimental trainers

    return ORPOConfig, ORPOTrainer


def trainer_arguments(method: str, args: Any, beta: float, max_length: int) -> Any:
    """TRL's configuration for ``method`` with every TrainingArguments value of ``args`` (the same run settings as
    supervised training), plus the method's beta and length limit."""
    from transformers import TrainingArguments

    config_cls, _ = _trl_classes(method)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments)
              if f.init and hasattr(args, f.name)}
    values.update(beta=beta, max_length=max_length)
    values["label_names"] = None  # a preference batch has no "labels": TRL computes the loss from the pairs
    if method == "orpo":
        # ORPO's batches hold chosen_/rejected_ sequences and no "input_ids": the Trainer's own input-token count
        # finds no input, warns ("main_input_name") at every step and counts nothing. The ORPO trainer counts them
        # itself instead (orpo_input_tokens, in trainer_class), so the Trainer's count is turned off here.
        values["include_num_input_tokens_seen"] = "no"
    if method == "kto":
        # KTO's KL term pairs each example with a neighbour of its batch, precomputed in a fixed order: TRL refuses
        # a random sampler for it, so a KTO run reads its rows in file order
        values["train_sampling_strategy"] = "sequential"
    return config_cls(**values)


def trainer_class(method: str, atomic_trainer: type) -> type:
    """TRL's trainer for ``method`` with the workbench's atomic checkpoint saving in front of it in the MRO."""
    _, trl_trainer = _trl_classes(method)
    bases: tuple[type, ...] = (atomic_trainer, trl_trainer)
    if method == "orpo":
        bases = (_CountsPairInputTokens, *bases)
    return type(f"Atomic{trl_trainer.__name__}", bases, {})


def orpo_input_tokens(batch: dict[str, Any]) -> Any:
    """The input tokens of one ORPO batch (a 0-d tensor): the non-padding tokens of its chosen and of its rejected
    sequences (prompt and answer), both of which the model reads — what the Trainer's "non_padding" count of
    ``tokens_seen`` counts for a batch with ``input_ids`` (SFT, DPO). A side without an attention mask counts all
    of its positions."""
    import torch

    total = torch.zeros((), dtype=torch.int64)
    for side in ("chosen", "rejected"):
        mask = batch.get(f"{side}_attention_mask")
        count = mask.sum() if mask is not None else torch.tensor(batch[f"{side}_input_ids"].numel())
        total = total + count.to(device="cpu", dtype=torch.int64)
    return total


class _CountsPairInputTokens:
    """In front of the ORPO trainer: its training step (public Trainer API, "subclass and override") first adds the
    batch's input tokens to the Trainer state's ``num_input_tokens_seen``, summed over processes as the Trainer's own
    count does; the events report it as ``tokens_seen`` and checkpoints keep it for a resume."""

    state: Any
    accelerator: Any

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        tokens = orpo_input_tokens(inputs).to(self.accelerator.device)
        self.state.num_input_tokens_seen += int(self.accelerator.reduce(tokens, reduction="sum").item())
        return super().training_step(model, inputs, num_items_in_batch)  # type: ignore[misc]
