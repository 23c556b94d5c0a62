"""The training engine: one explicit entry point, ``run(config, sink, control)``.

It builds the PEFT model from the configuration and the layer selection and trains it with the HF
Trainer (mixed precision, accumulation, schedulers, checkpoints and resume all come from there). The
engine talks to the outside world only through

* ``sink`` — every event (run started, step, evaluation, checkpoint, sample, paused/resumed, finished,
  failed) goes there *and* to the run folder's ``metrics.jsonl`` (through ``runs.RunRecorder``);
* ``control`` — a ``control.Control`` (a ``RunControl``) whose flags are checked after every optimizer step: stop (saves the
  adapter and a checkpoint, then ends), pause (blocks between steps, model kept in memory), save a
  checkpoint now. The same flags are reachable from another process through the run folder's control file.

The final adapter is written in PEFT format to ``RUN_DIR/adapter`` (temporary folder, then rename).

Faults end a run as ``failed`` with a ``TrainingError`` / ``OutputError`` that says what to change, and never
leave damaged files behind (``faults``): a NaN or infinite loss stops at that step without saving
its weights; a step that runs out of memory fails with the retry settings, or retries them itself
(``training.oom_retry``); a full disk while saving keeps the previous checkpoint and says how much room is needed.

The package, by module (``engine`` imports the others; only ``trainer`` and ``callback`` import transformers'
Trainer, and the engine imports them when a run starts, so ``import workbench.core.training`` stays quick):

* ``engine`` — the entry points and the course of a run: set-up, the Trainer's loop, the final adapter,
  the out-of-memory retries;
* ``setup`` — the PEFT model over the base, the Trainer's arguments, the evaluation references;
* ``faults`` — a diverged loss, an out-of-memory step, a full disk or a refused write, turned into errors that say
  what to change;
* ``trainer`` — ``AtomicCheckpointTrainer``, the HF Trainer whose checkpoints appear whole or not at all;
* ``callback`` — ``EventCallback``, which turns the Trainer's life into events and applies stop / pause /
  checkpoint requests between steps, and ``CallbackContext``, the facts of the run it reports on.

Where a run trains and in which precision is decided in ``core/precision.py``.
"""

from __future__ import annotations

from ..precision import choose_device, choose_precision
from .engine import TrainResult, preflight, resume, run

__all__ = ["TrainResult", "run", "resume", "preflight", "choose_device", "choose_precision"]
