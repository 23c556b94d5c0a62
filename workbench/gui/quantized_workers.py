"""Background jobs for quantized bases and the GGUF exports that need more than ``workers.ExportWorker`` gives.

* ``CompareQuantizedWorker``: the playground's comparison of an adapter on the unquantized base and on a
  quantized one (``core.quantized_eval``); it loads two models, so it runs off the GUI thread and stops between
  prompts when cancelled.
* ``GgufAdapterWorker``: a GGUF adapter export for a chosen GGUF base file, optionally with an Ollama Modelfile
  (``FROM`` the base, ``ADAPTER`` the new file); progress and results as ``ExportWorker`` reports them.

Like every worker here they get their inputs up front, return plain data and never touch a widget.
"""

from __future__ import annotations

from PySide6.QtCore import Signal

from . import workers
from .process_switches import lower_compute_threads_priority


class CompareQuantizedWorker(workers.Worker):
    stage = Signal(str)  # which slow step has started (loading each model)
    what = "The comparison on a quantized base"

    def __init__(self, base: str, adapter: str, prompts: list[str], quantization: str, double_quant: bool):
        super().__init__()
        self._args = (base, adapter, list(prompts))
        self._quantization, self._double_quant = quantization, double_quant

    def work(self):
        from workbench.core.quantized_eval import compare_on_quantized_base

        lower_compute_threads_priority()
        base, adapter, prompts = self._args
        return compare_on_quantized_base(base, adapter, prompts, quantization=self._quantization,
                                         double_quant=self._double_quant, should_stop=self.should_stop,
                                         on_stage=lambda text: self.post("stage", text))


class GgufAdapterWorker(workers.ExportWorker):
    """Mode "gguf_adapter" (the adapter alone, checked against ``base_gguf`` when given) or "ollama_adapter"
    (the adapter and a Modelfile that names ``base_gguf``)."""

    def __init__(self, mode: str, adapter: str, out: str, base: str, base_gguf: str = "", control=None,
                 gguf_type: str | None = None):
        super().__init__(mode, adapter, out, base=base, control=control, gguf_type=gguf_type)
        self._base_gguf = base_gguf

    def work(self):
        from workbench.core.gguf_export import prepare_adapter_export
        from workbench.core.gguf_export.planning import next_commands

        lower_compute_threads_priority()
        job = prepare_adapter_export(self._adapter, self._base, self._out, type_name=self._gguf_type or "f32",
                                     base_gguf=self._base_gguf or None, ollama=self._mode == "ollama_adapter")
        result = job.run(sink=self, control=self._control)
        return {"mode": self._mode, "output": result.output, "file": result.gguf, "stopped": result.stopped,
                "bytes": result.bytes_written, "notes": tuple(self._notes),
                "commands": next_commands(result) if not result.stopped else ""}
