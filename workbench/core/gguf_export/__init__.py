"""GGUF and Ollama export (issue #18): a merged model or a LoRA adapter as files llama.cpp, Ollama, LM Studio
and llamafile run, with the tokenizer, the chat template and the generation settings.

Modules, from the entry points down:

* ``export``: ``export_gguf`` / ``export_gguf_adapter`` (and ``prepare_*`` for a dialog that shows the size
  first), the atomic output folder, the disk-space check, the Modelfile;
* ``merged`` / ``adapter``: what goes into each file, tensor by tensor, decided before writing;
* ``arch``: Hugging Face architectures → GGUF names, hyper-parameters and layouts;
* ``vocab``: the tokenizer in GGUF form; ``templates`` / ``ollama``: the chat template for Ollama;
* ``types``: which types exist and who writes them; ``writer``: the streaming GGUF writer;
  ``quantize``: llama.cpp's quantizer in a child process, for the k-quant mixes.

The names below are loaded on first use, so importing this package (as the quantizer's child process does)
does not import torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_gguf", "export_gguf_adapter", "prepare_merged_export", "prepare_adapter_export", "GgufResult",
           "GGUF_TYPES", "ADAPTER_TYPES", "DEFAULT_TYPE", "available_types", "supported_architectures"]

_WHERE = {"export_gguf": "export", "export_gguf_adapter": "export", "prepare_merged_export": "export",
          "prepare_adapter_export": "export", "GgufResult": "export", "GGUF_TYPES": "types", "ADAPTER_TYPES": "types",
          "DEFAULT_TYPE": "types", "available_types": "types", "supported_architectures": "arch"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
