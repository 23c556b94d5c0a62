"""Time to show the module tree of a 70B-parameter Llama configuration, and proof that no weight is read.

Writes a Llama-3-70B-shaped config.json next to decoy weight files, then times what the window and
`workbench inspect` do when a model is opened: read the config, build the meta-device skeleton, walk it
into the layer tree and count a selection. An audit hook records every file opened; the run fails if any
weight file is touched. Baseline for the ratio: instantiating the same skeleton with transformers' own
`init_empty_weights` helper from accelerate — the usual way to get a structure without memory.

    .venv/bin/python bench/inspect.py
"""

from __future__ import annotations

import os
import sys

# This file is named like the stdlib's `inspect` module, and Python puts the script's folder first on
# sys.path: drop it so that `import inspect` inside torch gets the real module (every bench script does this).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import json
import tempfile
import time
from pathlib import Path

LLAMA_70B = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8192, "intermediate_size": 28672,
    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "dtype": "bfloat16",
}


def main() -> int:
    t_import = time.perf_counter()
    import torch  # noqa: F401  (the window imports these in the background before a model is opened)
    import transformers  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401

    from workbench.core.config import LoraSettings
    from workbench.core.layers import count_selection, resolve_selection
    from workbench.core.models import open_overview

    import_s = time.perf_counter() - t_import

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(json.dumps(LLAMA_70B))
        for i in (1, 2):  # decoys: opening either one is a failure
            (folder / f"model-0000{i}-of-00002.safetensors").write_bytes(b"\0" * 64)
        opened: list[str] = []

        def audit(event: str, args: tuple) -> None:
            if event == "open" and args and isinstance(args[0], (str, bytes, Path)):
                opened.append(str(args[0]))

        sys.addaudithook(audit)
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            ov = open_overview(str(folder))
            sel = resolve_selection(ov.tree, LoraSettings(preset="all-linear", r=16))
            counts = count_selection(ov.tree, sel)
            runs.append(time.perf_counter() - t0)
        weight_reads = [p for p in opened if p.endswith((".safetensors", ".bin", ".gguf"))]

        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        t0 = time.perf_counter()
        with init_empty_weights():
            AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
        baseline = time.perf_counter() - t0

    best, first = min(runs), runs[0]
    print(f"model: Llama 70B config, {ov.tree.total_params / 1e9:.2f}B parameters, {ov.tree.num_blocks} blocks, "
          f"{len(ov.tree.nodes)} modules")
    print(f"selection all-linear r=16: {counts.modules} modules, {counts.trainable_params:,} trainable parameters")
    print(f"library imports (done in the background by the window): {import_s:.2f} s")
    print(f"open model → tree → counts: first {first:.3f} s, best of {len(runs)} {best:.3f} s (target < 2 s)")
    print(f"baseline accelerate.init_empty_weights skeleton only: {baseline:.3f} s; ratio ours/baseline {first / baseline:.2f}")
    print(f"weight files opened: {len(weight_reads)} (target 0)")
    ok = first < 2.0 and not weight_reads
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
