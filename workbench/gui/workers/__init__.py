"""Background jobs for the window: one ``Worker`` per long job, run on its own thread.

Workers never touch widgets: each gets plain inputs, does its job in ``work()`` on the job thread, and reports
through signals emitted on the GUI thread (``jobs`` says how, and why a plain thread and an outbox). The work
itself is core's (``core.opening``, ``core.training``, ``core.merge``, ``core.gguf_export``,
``core.playground``...); a worker only carries its inputs there and its reports back. Modules by concern:

* ``jobs`` — ``Worker``, ``Job``, ``JobRunner`` (the one way a job starts), ``FunctionWorker`` for a plain function;
* ``model`` — opening a model; ``training`` — a run in this process, new or resumed;
* ``export`` — export, merge and GGUF export, the GGUF look ahead and adapter inspection;
* ``playground`` — loading a base with an adapter, streaming the two answers;
* ``warm_up`` — the ML stack's import after the window shows.

The process-wide switches a job relies on (the garbage collector on the GUI thread, ...) are in
``gui.process_switches``; ``GarbageCollector`` is re-exported here for the window.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..process_switches import GarbageCollector, keep_garbage_collection_on_the_gui_thread
from .jobs import POLL_INTERVAL_MS, FunctionWorker, Job, JobCancelled, JobRunner, Worker, unexpected_error_text

# The workers of particular jobs are imported when first named (``workers.TrainWorker``): their modules import
# core.config (and pydantic), which the window's first paint does without (gui/startup.py).
_LAZY = {"ExportWorker": "export", "inspect_adapter_job": "export", "plan_gguf": "export",
         "OpenModelWorker": "model", "GenerateWorker": "playground", "load_playground": "playground",
         "ResumeWorker": "training", "TrainWorker": "training", "warm_up_imports": "warm_up"}

if TYPE_CHECKING:
    from .export import ExportWorker, inspect_adapter_job, plan_gguf
    from .model import OpenModelWorker
    from .playground import GenerateWorker, load_playground
    from .training import ResumeWorker, TrainWorker
    from .warm_up import warm_up_imports


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")



__all__ = ["Worker", "Job", "JobCancelled", "JobRunner", "FunctionWorker", "unexpected_error_text", "POLL_INTERVAL_MS",
           "OpenModelWorker", "TrainWorker", "ResumeWorker", "ExportWorker", "plan_gguf", "inspect_adapter_job",
           "GenerateWorker", "load_playground", "warm_up_imports", "GarbageCollector",
           "keep_garbage_collection_on_the_gui_thread"]
