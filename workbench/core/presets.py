"""The layer presets, by name and in words: read by the config schema, the window and every command's --help.

Their own module, importing nothing, so that building the command line (``workbench --help``, ``runs``,
``control``) does not import pydantic and build the run-file schema only to print these words.
"""

from __future__ import annotations

# Layer presets understood by core.layers; the schema (core/config.py) validates them.
PRESETS: dict[str, str] = {
    "attention-qv": "attention q and v projections (the LoRA paper's choice; fused qkv where q and v are fused)",
    "attention": "every attention projection (q, k, v, output)",
    "mlp": "every MLP / feed-forward projection",
    "all-linear": "every linear layer in the transformer blocks (attention and MLP), not the output head",
    "conv": "every 2-D convolution (vision models such as ResNet and ConvNeXt); the rank is the number of filters of "
            "the adapter's own convolution, which has the layer's kernel and is followed by a 1×1 convolution",
}
DEFAULT_PRESET = "all-linear"
