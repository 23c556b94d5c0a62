"""Run folders: where a run lives on disk, how to tell its status, read its metrics and resume it.

One folder per run, readable by any process on any machine that sees the disk::

    RUN_DIR/
      run.toml                        the full configuration (RunConfig.save), written once, atomically
      metrics.jsonl                   every event, one JSON object per line, append-only (events.JsonlSink)
      status.json                     small state record, replaced atomically (see ``status``)
      control.json                    commands from other processes (see ``control_file``)
      checkpoints/checkpoint-<step>/  HF Trainer checkpoints (the Trainer's output_dir is checkpoints/),
                                      written aside and renamed into place (see ``checkpoints``)
      .resume.lock                    locked by the process that resumes the run (see ``resume``)
      adapter/                        the final PEFT adapter: adapter_config.json + adapter_model.safetensors

Who writes what. ``create_run`` makes the folder and ``run.toml``; where the folder goes, for a relative
``output.runs_root`` too, is one rule (``layout.output_path``: from the current folder) for the engine, the window
and ``workbench launch-script``. While training, the engine's main process holds a ``RunRecorder``: it is the event
sink that appends to ``metrics.jsonl``, keeps ``status.json`` current (with a heartbeat from a background thread,
so the engine calls nothing extra) and, when given the run's ``RunControl``, applies the commands found in
``control.json`` to it. The engine wiring is::

    folder = create_run(config)                 # or: point = prepare_resume(run_dir); folder = point.folder
    with RunRecorder(folder, control=control) as recorder:
        training.run(config, MultiSink([recorder, console_sink]), control)

The package, one module per part of that story (each imports only those before it):

* ``layout``       the folder's names (``RunFolder``), where a new run goes, creating it, reading its run file;
* ``metrics``      reading ``metrics.jsonl`` whole or as it grows, tolerating torn lines;
* ``status``       the status.json record, the heartbeat's age on the file system's clock, judging whether a run
                   lives, summaries and listings, deleting a run;
* ``control_file`` control.json: ``send_control``, the engine's ``ControlFileWatcher``, ``FolderControl``;
* ``checkpoints``  which checkpoint folders are whole, and which one a run continues from;
* ``recorder``     ``RunRecorder``, the writer while the engine runs;
* ``resume``       ``prepare_resume``, its lock, and cutting ``metrics.jsonl`` back to the checkpoint.

Every public name is importable from ``workbench.core.runs`` itself.
"""

from __future__ import annotations

from .checkpoints import (
    Checkpoint,
    CheckpointChoice,
    checkpoint_folders,
    choose_checkpoint,
    discard_unfinished_checkpoints,
    latest_checkpoint,
    list_checkpoints,
    newest_complete,
    unsafe_state_file,
)
from .control_file import CONTROL_COMMANDS, CONTROL_POLL_INTERVAL_S, ControlFileWatcher, FolderControl, send_control
from .layout import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    CONTROL_FILE,
    METRICS_FILE,
    RUN_FILE,
    STATUS_FILE,
    RunFolder,
    claim_new_run_dir,
    check_run_dir_claimable,
    claim_run_dir,
    create_run,
    default_run_name,
    load_config,
    model_short_name,
    output_path,
    planned_run_dir,
)
from .metrics import MetricsTailer, read_events
from .recorder import HEARTBEAT_INTERVAL_S, RunRecorder
from .resume import RESUME_LOCK, ResumeLock, ResumePoint, prepare_resume, rewind_metrics
from .status import STALE_AFTER_S, RunStatus, RunSummary, delete_run, heartbeat_age, list_runs, run_status, summarize_run

__all__ = [
    "RUN_FILE",
    "METRICS_FILE",
    "STATUS_FILE",
    "CONTROL_FILE",
    "CHECKPOINTS_DIR",
    "ADAPTER_DIR",
    "CONTROL_COMMANDS",
    "HEARTBEAT_INTERVAL_S",
    "STALE_AFTER_S",
    "RunFolder",
    "RunStatus",
    "RunSummary",
    "Checkpoint",
    "ResumePoint",
    "RunRecorder",
    "MetricsTailer",
    "ControlFileWatcher",
    "FolderControl",
    "create_run",
    "load_config",
    "check_run_dir_claimable",
    "claim_run_dir",
    "default_run_name",
    "model_short_name",
    "output_path",
    "planned_run_dir",
    "run_status",
    "summarize_run",
    "list_runs",
    "read_events",
    "list_checkpoints",
    "latest_checkpoint",
    "newest_complete",
    "prepare_resume",
    "choose_checkpoint",
    "CheckpointChoice",
    "ResumeLock",
    "RESUME_LOCK",
    "rewind_metrics",
    "heartbeat_age",
    "send_control",
    "delete_run",
    "checkpoint_folders",
    "discard_unfinished_checkpoints",
    "CONTROL_POLL_INTERVAL_S",
    "claim_new_run_dir",
    "unsafe_state_file",
]
