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

from ..process_switches import GarbageCollector, keep_garbage_collection_on_the_gui_thread
from .export import ExportWorker, inspect_adapter_job, plan_gguf
from .jobs import (POLL_INTERVAL_MS, FunctionWorker, Job, JobCancelled, JobRunner, Worker,
                   unexpected_error_text)
from .model import OpenModelWorker
from .playground import GenerateWorker, load_playground
from .training import ResumeWorker, TrainWorker
from .warm_up import warm_up_imports

__all__ = ["Worker", "Job", "JobCancelled", "JobRunner", "FunctionWorker", "unexpected_error_text", "POLL_INTERVAL_MS",
           "OpenModelWorker", "TrainWorker", "ResumeWorker", "ExportWorker", "plan_gguf", "inspect_adapter_job",
           "GenerateWorker", "load_playground", "warm_up_imports", "GarbageCollector",
           "keep_garbage_collection_on_the_gui_thread"]
