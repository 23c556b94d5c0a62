"""Adapters out: the PEFT adapter as trained, or a portable adapter that every runtime reads the same way.

PEFT's format has extras that serving runtimes read differently: vLLM and llama.cpp ignore
``rank_pattern`` / ``alpha_pattern`` (per-module rank and alpha), and llama.cpp ignores rsLoRA's
``alpha / sqrt(r)``. Such a runtime silently applies the wrong scale to some or all modules. The
portable export has none of these extras: one rank, ``lora_alpha == r`` (scale 1), and each module's
true scale multiplied into its ``lora_B``.

For the streaming merge of an adapter into its base model see ``core/merge.py``; for reading and
checking adapters, ``core/adapters.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from workbench.core.adapters import LoraAdapter, input_folders, is_weight_file, load_adapter
from workbench.core.errors import AdapterError
from workbench.core.paths import check_new_output
from workbench.core.fsutil import atomic_directory, disk_full_reported
from workbench.core.model_card import write_model_card
from workbench.core.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, KEY_PREFIX

__all__ = ["make_portable", "export_adapter"]


def make_portable(adapter: LoraAdapter) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The adapter rewritten with one rank and scale 1: ``(adapter_config, tensors)`` in PEFT's format.

    With R the largest rank, each module's ``ΔW = s · B @ A`` (``s`` its own alpha/r, or alpha/√r with
    rsLoRA) is written as ``A' = [A; 0]`` (R × in) and ``B' = [s·B, 0]`` (out × R): the zero rows and
    columns add nothing, so ``B' @ A' = s · B @ A``, and with ``lora_alpha = r = R`` every runtime scales
    by exactly 1. ``s·B`` is computed in fp32 and rounded once to the adapter's dtype.

    DoRA is refused: its merged weight ``m / ||W + s·B·A||_row · (W + s·B·A)`` depends on the base
    weights, so it is no low-rank ΔW a runtime can add, and a runtime reading only ``lora_A`` and
    ``lora_B`` would silently drop the learned magnitude.
    """
    if adapter.use_dora:
        raise AdapterError(
            f"{adapter.path} is a DoRA adapter, which has no portable form: DoRA rescales every output row of the "
            "merged weight by a learned magnitude divided by the row's norm, which depends on the base weights, so "
            "it cannot be written as the plain low-rank update that runtimes add; they would drop the magnitude",
            "merge it into the base model instead (`workbench merge`), or export it without --portable",
        )
    rank = max(m.rank for m in adapter.modules.values())
    tensors: dict[str, torch.Tensor] = {}
    for name, m in adapter.modules.items():
        a = torch.zeros(rank, m.in_features, dtype=m.lora_A.dtype)
        a[: m.rank] = m.lora_A
        b = torch.zeros(m.out_features, rank, dtype=m.lora_B.dtype)
        b[:, : m.rank] = (m.lora_B.float() * m.scale).to(m.lora_B.dtype)
        a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if m.embedding else ("lora_A.weight", "lora_B.weight")
        tensors[f"{KEY_PREFIX}{name}.{a_key}"] = a
        tensors[f"{KEY_PREFIX}{name}.{b_key}"] = b
    for rep in adapter.replacements.values():
        tensors[rep.adapter_key] = rep.tensor.contiguous()
    config = {**adapter.config, "r": rank, "lora_alpha": rank, "rank_pattern": {}, "alpha_pattern": {},
              "use_rslora": False, "use_dora": False}
    return config, tensors


def export_adapter(source: str | Path, out: str | Path, *, portable: bool = False) -> Path:
    """Write the adapter of a run folder (or of any PEFT LoRA adapter folder) to the new folder ``out``.

    Without ``portable`` the adapter files are copied as trained; with it they are rewritten by
    ``make_portable``. Other small files of the adapter folder (README, tokenizer) come along. The
    adapter is read and checked first, and ``out`` appears only when complete and flushed to disk (it is
    written as ``.tmp-<name>.partial`` and renamed; an interrupted export leaves only that folder, which
    the next export to the same place removes). A full disk raises ``OutputError`` (which folder, that
    nothing was written, the free space) after removing what was written.
    """
    out = check_new_output(out)
    adapter = load_adapter(source)
    check_new_output(out, inputs=input_folders(adapter=adapter))  # RUN/adapter/sub would be read back as part of it
    portable_form = make_portable(adapter) if portable else None
    # A full disk is the user's to fix; atomic_directory has removed what was written.
    with disk_full_reported(out, _folder_bytes(adapter.path)), atomic_directory(out) as tmp:
        _write_export(adapter, tmp, portable_form)
        write_model_card(tmp, kind="adapter", adapter=adapter.path, portable=portable)
    return out


def _write_export(adapter: LoraAdapter, tmp: Path, portable_form: tuple[dict[str, Any], dict[str, torch.Tensor]] | None) -> None:
    for f in sorted(adapter.path.iterdir()):
        if f.is_file() and not f.name.startswith(".") and not is_weight_file(f.name) and f.name != ADAPTER_CONFIG:
            shutil.copy2(f, tmp / f.name)
    if portable_form is None:
        shutil.copy2(adapter.path / ADAPTER_CONFIG, tmp / ADAPTER_CONFIG)
        shutil.copy2(adapter.path / ADAPTER_WEIGHTS, tmp / ADAPTER_WEIGHTS)
    else:
        from safetensors.torch import save_file

        config, tensors = portable_form
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(tensors, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
