"""What ``workbench.core.peft_format`` writes out instead of importing PEFT, checked against the installed PEFT.

Reading, exporting and merging an adapter must not import PEFT (it pulls in transformers and bitsandbytes:
seconds on a short command). These tests keep the copies honest: a PEFT release that adds a LoRA variant or
changes how rank/alpha patterns match fails here, not in a user's merged model.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from workbench.core import peft_format


def test_variant_fields_and_inits_are_the_ones_pefts_metadata_marks():
    from peft import LoraConfig

    fields = {f.name: f.metadata for f in dataclasses.fields(LoraConfig)}
    variants = {name for name, meta in fields.items() if meta.get("is_lora_variant")} - {"use_dora"}
    assert set(peft_format.LORA_VARIANT_FIELDS) == variants
    assert set(peft_format.LORA_VARIANT_INITS) == set(fields["init_lora_weights"].get("lora_variants", ()))


PATTERN_CASES = [
    (["q_proj"], "model.layers.0.self_attn.q_proj"),
    (["q_proj"], "model.layers.0.self_attn.qq_proj"),  # not at a dot boundary: no match
    (["self_attn.q_proj", "q_proj"], "model.layers.3.self_attn.q_proj"),  # the first matching key wins
    (["q_proj", "self_attn.q_proj"], "model.layers.3.self_attn.q_proj"),
    (["layers.1.mlp.down_proj"], "model.layers.1.mlp.down_proj"),
    (["layers.1.mlp.down_proj"], "model.layers.11.mlp.down_proj"),
    (["model.layers.1.mlp.down_proj"], "model.layers.1.mlp.down_proj"),  # the whole name
    ([r"layers\.[0-4]\.mlp\.up_proj"], "model.layers.3.mlp.up_proj"),  # keys are regular expressions
    ([r"layers\.[0-4]\.mlp\.up_proj"], "model.layers.7.mlp.up_proj"),
    ([".*_proj"], "model.layers.0.mlp.gate_proj"),
    (["o_proj|v_proj"], "model.layers.2.self_attn.v_proj"),
    ([], "model.layers.0.self_attn.k_proj"),
    (["lm_head"], "lm_head"),
    (["head"], "lm_head"),
]


@pytest.mark.parametrize(("keys", "name"), PATTERN_CASES)
def test_pattern_key_picks_what_pefts_matcher_picks(keys, name):
    from peft.utils.other import get_pattern_key

    assert peft_format.pattern_key(keys, name) == get_pattern_key(keys, name)


@pytest.mark.subprocess
def test_reading_an_adapter_does_not_import_peft(tmp_path):
    """Parse a real PEFT-saved adapter (made in this process) in a fresh interpreter: PEFT must stay unimported."""
    import torch
    from peft import LoraConfig, get_peft_model

    import tiny

    model = tiny.make_model("llama")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], rank_pattern={"layers.1.self_attn.v_proj": 2})
    peft_model = get_peft_model(model, config)
    for p in peft_model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p)
    peft_model.save_pretrained(tmp_path)
    code = ("import sys, json\nfrom workbench.core.adapters import load_adapter\n"
            f"a = load_adapter({str(tmp_path)!r})\n"
            "print(json.dumps({'peft': 'peft' in sys.modules, 'ranks': {n: m.rank for n, m in a.modules.items()}}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["peft"] is False
    assert report["ranks"]["model.layers.1.self_attn.v_proj"] == 2 and report["ranks"]["model.layers.0.self_attn.q_proj"] == 4
