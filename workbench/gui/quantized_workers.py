"""Background jobs for quantized bases and the GGUF exports that need more than ``workers.ExportWorker`` gives.

* ``CompareQuantizedWorker``: the playground's comparison of an adapter on the unquantized base and on a
  quantized one (``core.quantized_eval``); it loads two models, so it runs off the GUI thread and stops between
  prompts when cancelled.
* ``GgufAdapterWorker``: a GGUF adapter export for a chosen GGUF base file, optionally with an Ollama Modelfile
  (``FROM`` the base, ``ADAPTER`` the new file); progress and results as ``ExportWorker`` reports them.

Like every worker here they get their inputs up front, return plain data and never touch a widget.
"""

from __future__ import annotations

from . import workers


def plan_gguf_export(mode: str, adapter: str, base: str, type_name: str | None) -> dict:
    """The export dialog's look ahead (``workers.plan_gguf``), for the adapter-with-Modelfile choice too, plus
    ``gguf_origin``: the GGUF file the base was converted from, if any (the default Base GGUF)."""
    from pathlib import Path

    from workbench.core.gguf_export.merged import gguf_origin

    adapter_alone = mode in ("gguf_adapter", "ollama_adapter")  # the same adapter file, with or without a Modelfile
    plan = workers.plan_gguf("gguf_adapter" if adapter_alone else mode, adapter, base, type_name)
    origin = gguf_origin(Path(base)) if Path(base).is_dir() else None
    return {**plan, "gguf_origin": str(origin) if origin else ""}


class CompareQuantizedWorker(workers.Worker):
    what = "The comparison on a quantized base"

    def __init__(self, base: str, adapter: str, prompts: list[str], quantization: str, double_quant: bool):
        super().__init__()
        self._args = (base, adapter, list(prompts))
        self._quantization, self._double_quant = quantization, double_quant

    def work(self):
        from workbench.core.quantized_eval import compare_on_quantized_base

        base, adapter, prompts = self._args
        return compare_on_quantized_base(base, adapter, prompts, quantization=self._quantization,
                                         double_quant=self._double_quant, should_stop=self.should_stop)


class GgufAdapterWorker(workers.ExportWorker):
    """Mode "gguf_adapter" (the adapter alone, checked against ``base_gguf`` when given) or "ollama_adapter"
    (the adapter and a Modelfile that names ``base_gguf``)."""

    def __init__(self, mode: str, adapter: str, out: str, base: str, base_gguf: str = "", control=None,
                 gguf_type: str | None = None):
        super().__init__(mode, adapter, out, base=base, control=control, gguf_type=gguf_type)
        self._base_gguf = base_gguf

    def work(self):
        from workbench.core.gguf_export import prepare_adapter_export

        job = prepare_adapter_export(self._adapter, self._base, self._out, type_name=self._gguf_type or "f32",
                                     base_gguf=self._base_gguf or None, ollama=self._mode == "ollama_adapter")
        result = job.run(sink=self, control=self._control)
        return {"mode": self._mode, "output": result.output, "file": result.gguf, "stopped": result.stopped,
                "bytes": result.bytes_written, "notes": tuple(self._notes),
                "commands": _next_commands(result) if not result.stopped else ""}


def _next_commands(result) -> str:
    """The commands to copy after a GGUF export: the same as for the other GGUF exports."""
    try:
        from workbench.core.gguf_export.planning import next_commands  # where the window's refactor moves it
    except ImportError:
        next_commands = workers._next_commands
    return next_commands(result)
