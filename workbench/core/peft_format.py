"""PEFT's adapter format on disk: the file names and the tensor-key prefix, in one place.

The values are PEFT's (``peft.utils.constants`` names the files; the prefix is where ``PeftModel`` puts the
base model, ``base_model.model.``) and ``tests/core/test_compat_models.py`` checks them against an installed
PEFT. They are written out here rather than imported because reading, exporting and merging an adapter must
not import PEFT (seconds of import time) just to know what its files are called.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "KEY_PREFIX", "LORA_VARIANT_FIELDS", "LORA_VARIANT_INITS", "pattern_key"]

ADAPTER_CONFIG = "adapter_config.json"  # peft.utils.constants.CONFIG_NAME
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft.utils.constants.SAFETENSORS_WEIGHTS_NAME
KEY_PREFIX = "base_model.model."  # every tensor of a saved LoRA adapter: base_model.model.<module>.lora_A.weight

# LoraConfig fields whose metadata marks them as a LoRA variant (``is_lora_variant``), DoRA left out because the
# merge and the export reproduce it; and the ``init_lora_weights`` values (prefixes) that PEFT's metadata names as
# variants (``lora_variants``). A truthy value in any of them means a layer the merge cannot reproduce.
# tests/core/test_peft_format.py derives both from the installed PEFT, so a release that adds a variant fails
# the suite instead of being merged wrongly.
LORA_VARIANT_FIELDS = ("velora_config", "alora_invocation_tokens", "monteclora_config", "use_bdlora", "arrow_config",
                       "kasa_config")
LORA_VARIANT_INITS = ("mica",)


def pattern_key(pattern_keys: Iterable[str], module_name: str) -> str:
    """The key of ``rank_pattern`` / ``alpha_pattern`` that applies to ``module_name``, as PEFT picks it.

    PEFT's rule (``peft.utils.other.get_pattern_key``): the first key that matches the end of the module name at a
    dot boundary, the key read as a regular expression; the name itself when none does. Written out here so that
    reading an adapter does not import PEFT; the test above compares it with PEFT's on many cases.
    """
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", module_name):
            return key
    return module_name
