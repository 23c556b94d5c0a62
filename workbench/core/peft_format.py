"""PEFT's adapter format on disk: the file names and the tensor-key prefix, in one place.

The values are PEFT's (``peft.utils.constants`` names the files; the prefix is where ``PeftModel`` puts the
base model, ``base_model.model.``) and ``tests/core/test_compat_models.py`` checks them against an installed
PEFT. They are written out here rather than imported because reading, exporting and merging an adapter must
not import PEFT (seconds of import time) just to know what its files are called.
"""

from __future__ import annotations

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "KEY_PREFIX"]

ADAPTER_CONFIG = "adapter_config.json"  # peft.utils.constants.CONFIG_NAME
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft.utils.constants.SAFETENSORS_WEIGHTS_NAME
KEY_PREFIX = "base_model.model."  # every tensor of a saved LoRA adapter: base_model.model.<module>.lora_A.weight
