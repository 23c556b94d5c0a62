"""What a GGUF export would write, before it writes anything (the export dialog's look ahead), and the commands
to run with a finished export."""

from __future__ import annotations

from typing import Any

__all__ = ["plan_gguf", "next_commands"]


def plan_gguf(mode: str, adapter: str, base: str, type_name: str | None) -> dict[str, Any]:
    """``{"unsupported": reason or "", "size", "exact", "file_name", "gguf_origin"}`` for ``mode`` "gguf_adapter" or
    "ollama_adapter" (an adapter GGUF, with or without a Modelfile) or any merged mode; ``gguf_origin`` is the GGUF
    file the base was converted from ("" if none), the default GGUF base of an adapter export. The base's architecture is checked first (an unsupported one is not an error: the
    dialog disables the choice); any other problem (a DoRA adapter for a GGUF adapter, say) raises as the export
    itself would."""
    from ..base_model import open_base_model
    from ..errors import ModelSourceError
    from .arch import architecture_for
    from .merged import gguf_origin

    checkpoint = open_base_model(base)
    origin = gguf_origin(checkpoint.path)
    try:
        architecture_for(checkpoint.config, str(checkpoint.path))
    except ModelSourceError as exc:
        return {"unsupported": exc.message, "size": 0, "exact": False, "file_name": "", "gguf_origin": ""}
    if mode in ("gguf_adapter", "ollama_adapter"):
        from .adapter import plan_adapter

        plan = plan_adapter(adapter, checkpoint, type_name or "f32")
        label = plan.file.tensors[0].ggml_type if plan.file.tensors else "F32"  # as AdapterExport names it
        return {"unsupported": "", "size": plan.size, "exact": True, "file_name": f"adapter-{label}.gguf",
                "gguf_origin": str(origin or "")}
    from .merged import plan_merged

    merged = plan_merged(checkpoint, adapter, type_name or "q8_0")
    return {"unsupported": "", "size": merged.size, "exact": merged.gtype.writer == "python",
            "file_name": f"model-{merged.gtype.label}.gguf", "gguf_origin": str(origin or "")}


def next_commands(result: Any) -> str:
    """What to run with a finished export (a ``GgufResult``), as commands to copy: Ollama's with the Modelfile's
    full path (the result's instructions start with ``cd`` into the folder), llama.cpp's as the result gives them."""
    if result.modelfile is not None:
        line = next((x for x in result.instructions.splitlines() if x.startswith("ollama create ")), "")
        name = line.split()[2] if len(line.split()) > 2 else result.output.name
        return f"ollama create {name} -f {result.modelfile}\nollama run {name}"
    return result.instructions
