"""Writing what a run made: an adapter export, a streaming merge into a full model, a GGUF export; and the
look-ahead and inspection jobs of the Export and Inspect tabs, which run core functions as they are."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import Signal

from ..process_switches import lower_compute_threads_priority
from .jobs import Worker


def plan_gguf(mode: str, adapter: str, base: str, type_name: str | None) -> dict[str, Any]:
    """The export dialog's look ahead (``core.gguf_export.planning.plan_gguf``); run it in a ``FunctionWorker``."""
    from workbench.core.gguf_export.planning import plan_gguf as plan

    return plan(mode, adapter, base, type_name)


def inspect_adapter_job(adapter: str, base: str | None):
    """Per-module norms and effective ranks of any PEFT adapter folder (with ``||W||`` when a base is given)."""
    from workbench.core.adapter_report import inspect_adapter

    return inspect_adapter(adapter, base or None)


class ExportWorker(Worker):
    """Adapter export (PEFT copy or portable), a streaming merge into a full model, or a GGUF export (merged,
    adapter, or merged with an Ollama Modelfile: modes "gguf", "gguf_adapter", "ollama").

    Progress (``Progress`` events: bytes done / total, or tensors for llama.cpp's quantizer) is re-emitted as
    ``progress(done, total, detail)`` at most every 50 ms, so a merge of many small tensors cannot flood the
    event loop; ``stage(task)`` says when the kind of progress changes ("merge", "gguf", "quantize").
    """

    progress = Signal(float, float, str)  # bytes as floats: a C++ int stops at 2 GiB, a double is exact to 8 PiB
    stage = Signal(str)
    what = "The export"

    def __init__(self, mode: str, adapter: str, out: str, base: str = "", dtype: str | None = None, control=None,
                 gguf_type: str | None = None):
        super().__init__()
        self._mode, self._adapter, self._out, self._base, self._dtype = mode, adapter, out, base, dtype
        self._control = control
        self._gguf_type = gguf_type
        self._last = 0.0
        self._task = ""
        self._notes: list[str] = []

    def emit(self, event) -> None:  # merge / export sink, on the worker thread
        from workbench.core.events import Message, Progress

        if isinstance(event, Progress):
            if event.task != self._task:
                self._task = event.task
                self.post("stage", event.task)
            now = time.monotonic()
            if now - self._last >= 0.05 or event.done >= event.total:
                self._last = now
                self.post("progress", float(event.done), float(event.total), event.detail)
        elif isinstance(event, Message) and "nothing was written" not in event.text:
            self._notes.append(event.text)

    def work(self):
        if self._mode in ("gguf", "gguf_adapter", "ollama"):
            return self._gguf()
        if self._mode == "merge":
            from workbench.core.merge import merge_adapter

            lower_compute_threads_priority()
            result = merge_adapter(self._base, self._adapter, self._out, dtype=self._dtype, sink=self,
                                   control=self._control)
            return {"mode": "merge", "output": result.output, "stopped": result.stopped,
                    "bytes": result.bytes_written, "modules": result.merged_modules}
        from workbench.core.export import export_adapter

        out = export_adapter(self._adapter, self._out, portable=self._mode == "portable")
        return {"mode": self._mode, "output": out, "stopped": False}

    def _gguf(self) -> dict:
        from workbench.core.gguf_export import prepare_adapter_export, prepare_merged_export
        from workbench.core.gguf_export.planning import next_commands

        lower_compute_threads_priority()
        if self._mode == "gguf_adapter":
            job = prepare_adapter_export(self._adapter, self._base, self._out, type_name=self._gguf_type or "f32")
        else:
            job = prepare_merged_export(self._base, self._adapter, self._out, type_name=self._gguf_type or "q8_0",
                                        ollama=self._mode == "ollama")
        result = job.run(sink=self, control=self._control)
        return {"mode": self._mode, "output": result.output, "file": result.gguf, "stopped": result.stopped,
                "bytes": result.bytes_written, "notes": tuple(self._notes),
                "commands": next_commands(result) if not result.stopped else ""}
