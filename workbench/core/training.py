"""The training engine: one explicit entry point, ``run(config, sink, control)``.

It builds the PEFT model from the configuration and the layer selection and trains it with the HF
Trainer (mixed precision, accumulation, schedulers, checkpoints and resume all come from there). The
engine talks to the outside world only through

* ``sink`` — every event (run started, step, evaluation, checkpoint, sample, paused/resumed, finished,
  failed) goes there *and* to the run folder's ``metrics.jsonl`` (through ``runs.RunRecorder``);
* ``control`` — a ``RunControl`` whose flags are checked after every optimizer step: stop (saves the
  adapter and a checkpoint, then ends), pause (blocks between steps, model kept in memory), save a
  checkpoint now. The same flags are reachable from another process through the run folder's control file.

The final adapter is written in PEFT format to ``RUN_DIR/adapter`` (temporary folder, then rename).

Faults end a run as ``failed`` with a ``TrainingError`` / ``OutputError`` that says what to change, and never
leave damaged files behind (see "faults" below): a NaN or infinite loss stops at that step without saving
its weights; a step that runs out of memory fails with the retry settings, or retries them itself
(``training.oom_retry``); a full disk while saving keeps the previous checkpoint and says how much room is needed.
"""

from __future__ import annotations

import errno
import json
import math
import shlex
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from contextlib import nullcontext

from .config import RunConfig, TrainingConfig
from . import classification, images, lora_init, quantization
from .control import RunControl
from .distributed import Distributed
from .errors import OutputError, TrainingError, WorkbenchError, first_line
from .fsutil import exception_chain, format_size, free_bytes, is_disk_full, mount_point
from .model_card import write_model_card
from .trackers import check_trackers, tracker_sinks
from .events import (
    CheckpointSaved,
    Evaluation,
    Failed,
    Finished,
    Message,
    MultiSink,
    NullSink,
    Paused,
    Resumed,
    RunStarted,
    Sample,
    Sink,
    SinkLike,
    Step,
    as_sink,
)

__all__ = ["TrainResult", "run", "resume", "choose_device", "choose_precision"]


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    adapter_dir: Path | None
    status: str  # "finished" | "stopped" (failures raise)
    final_step: int
    summary: dict[str, Any]


# ------------------------------------------------------------------------------------------ entry points


def run(config: RunConfig, sink: SinkLike = None, control: RunControl | None = None, *, run_dir: str | Path | None = None) -> TrainResult:
    """Train a new run described by ``config``. Blocks until the run ends; call it from a worker thread.

    Raises ``WorkbenchError`` for bad input (after emitting ``Failed``); never leaves the run folder
    marked as running. Input that can be checked cheaply (model source, data files) is checked before
    the run folder is created, so a typo leaves no failed run behind. Under torchrun every rank calls
    this; rank 0 creates and writes the run folder.
    """
    from .runs import create_run

    if run_dir is not None:
        config = config.copy_with(output={"run_dir": str(run_dir)})
    dist = Distributed.setup(choose_device(config.training.device))
    dist.on_main(lambda: preflight(config, sink), share_result=False)
    folder = dist.on_main(lambda: create_run(config).path)
    return _train(Path(folder), config, as_sink(sink), control or RunControl(), None, dist)


def preflight(config: RunConfig, sink: SinkLike = None) -> None:
    """The checks that take a second or less: the model source resolves and is safe, the data files are
    readable and of a known format. Raises the same ``WorkbenchError`` training itself would. (A built-in
    model is converted here on first use, with ``Progress`` events to ``sink``.)"""
    from .data import detect
    from .models import check_weight_files, load_config, load_tokenizer, resolve_source

    mc = config.model
    choose_precision(config.training.precision, choose_device(config.training.device))  # fp16 on a CPU, bf16 on an old GPU
    source = resolve_source(mc.source, mc.revision, allow_pickle=mc.allow_pickle, download="config", sink=as_sink(sink))
    hf_config = None
    if source.kind != "gguf":  # reading a GGUF's metadata takes seconds; training reports its problems soon enough
        hf_config = load_config(source, trust_remote_code=mc.trust_remote_code)
        if source.kind == "local":  # a Hub model's weights may not be downloaded yet; a local one's must all be there
            check_weight_files(source)  # headers and sizes only
            if mc.task == "image-classification":
                images.load_image_processor(source, mc.trust_remote_code)
            else:
                load_tokenizer(source, trust_remote_code=mc.trust_remote_code)
    device = choose_device(config.training.device)
    quantization.check_run(config, hf_config, device)  # #17: quantized bases, LoRA inits
    lora_init.check_run(config, device)
    if mc.task in ("sequence-classification", "image-classification"):  # texts or images with a usable label set
        _label_set(config)
    else:
        detect(config.data)
    check_trackers(config.output.trackers)  # a missing tracker package: its pip command, before anything starts


def resume(run_dir: str | Path, sink: SinkLike = None, control: RunControl | None = None) -> TrainResult:
    """Continue a stopped, failed or crashed run from its newest complete checkpoint.

    Optimizer, scheduler, RNG state, data position and step counter continue where the checkpoint left
    them; the loss curve continues in the same ``metrics.jsonl``. The run's resume lock is held from the
    checks to the end of the training, so a second resume of the same run is refused at once.
    """
    from .runs import RUN_FILE, load_config, prepare_resume

    if not (Path(run_dir) / RUN_FILE).is_file():
        raise TrainingError(f"{run_dir} is not a run folder (no {RUN_FILE})", "pick a folder listed by `workbench runs`")
    dist = Distributed.setup(choose_device(load_config(run_dir).training.device))

    held: list = []  # rank 0's ResumePoint: it holds the run's resume lock until the training ends

    def prepare() -> _ResumeInfo:  # raises for running / finished runs and runs without a complete checkpoint
        point = prepare_resume(run_dir)
        held.append(point)
        return _ResumeInfo(point.folder.path, point.config, point.checkpoint.path, point.step, point.describe(),
                           point.at_target)

    try:
        info = dist.on_main(prepare)
        return _train(info.run_dir, info.config, as_sink(sink), control or RunControl(), info, dist)
    finally:
        for point in held:
            point.release()


@dataclass(frozen=True)
class _ResumeInfo:
    run_dir: Path
    config: RunConfig
    checkpoint: Path
    step: int
    description: str
    at_target: bool = False  # the checkpoint holds the last step: finish from it, train nothing (see resume)


def _train(run_dir: Path, config: RunConfig, user_sink: Sink, control: RunControl, resume_point: "_ResumeInfo | None",
           dist: Distributed) -> TrainResult:
    from .runs import RunRecorder

    # Only rank 0 writes the run folder; the other ranks train silently.
    recorder = dist.on_main(lambda: RunRecorder(run_dir, control=control), share_result=False)
    with recorder if dist.is_main else nullcontext(NullSink()) as record_sink:
        trackers = tracker_sinks(config.output.trackers, run_dir) if dist.is_main else []
        sinks = MultiSink([record_sink, user_sink, *trackers])
        sink = _StampWorldSize(sinks, dist.world_size) if dist.is_main else NullSink()
        if resume_point is not None:
            sink.emit(Message(resume_point.description))
        try:
            if resume_point is not None and resume_point.at_target:
                return _finish_from_checkpoint(run_dir, sink, resume_point, dist)
            return _train_attempts(run_dir, config, sink, control, resume_point, dist)
        except WorkbenchError as exc:
            sink.emit(Failed(reason=exc.message, hint=exc.hint))
            raise
        except Exception as exc:
            reason, hint = _explain_failure(exc)
            sink.emit(Failed(reason=reason, hint=hint, traceback=traceback.format_exc()))
            raise


class _StampWorldSize:
    """Every event of a run carries the number of processes that train it."""

    def __init__(self, sink: Sink, world_size: int):
        self.sink, self.world_size = sink, world_size

    def emit(self, event: Any) -> None:
        self.sink.emit(event if event.world_size == self.world_size else replace(event, world_size=self.world_size))


# --------------------------------------------------------------------------------------------- set-up


def choose_device(requested: str) -> str:
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingError("training.device is 'cuda' but no CUDA GPU is available", "set training.device = 'auto' or 'cpu'")
    return requested


def choose_precision(requested: str, device: str) -> str:
    """bf16 where the GPU supports it, fp16 (with loss scaling) on older GPUs, fp32 on CPU — unless set."""
    import torch

    if requested != "auto":
        if device == "cpu" and requested == "fp16":
            raise TrainingError("training.precision fp16 needs a GPU", "use fp32 or bf16 on the CPU")
        if requested == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrainingError("this GPU does not support bf16", "set training.precision = 'fp16' or 'auto'")
        return requested
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _weight_dtype(config: RunConfig, precision: str, device: str):
    import torch

    from .models import training_weight_dtype

    return getattr(torch, training_weight_dtype(config.model.dtype, device, precision))


def _label_set(config: RunConfig) -> Any:
    """A classification run's ``LabelSet``, read from the training data (it shapes the head); None otherwise."""
    if config.model.task == "image-classification":
        return images.image_label_set(config.model, config.data)
    if config.model.task == "sequence-classification":
        return classification.label_set_for(config.model, config.data)
    return None


def _setup_model(config: RunConfig, device: str, precision: str, sink: Sink, labels: Any = None):
    """Base model + tokenizer + PEFT wrapper. Returns (peft_model, tokenizer, tree, selection, resolved lora).
    ``labels``: the ``classification.LabelSet`` of a sequence-classification run (it shapes the head)."""
    from peft import get_peft_model

    from .layers import build_tree, lora_config_from_selection, resolve_selection
    from .models import load_config, load_model, load_tokenizer, resolve_source

    mc = config.model
    source = resolve_source(mc.source, mc.revision, allow_pickle=mc.allow_pickle, download="all", sink=sink)
    hf_config = load_config(source, trust_remote_code=mc.trust_remote_code)
    if mc.task == "image-classification":  # the "tokenizer" of an image model is its image processor
        tokenizer = images.load_image_processor(source, mc.trust_remote_code)
        classification.apply_to_model_config(hf_config, labels)
    else:
        tokenizer = load_tokenizer(source, trust_remote_code=mc.trust_remote_code)
    if labels is not None and mc.task == "sequence-classification":
        classification.configure_model(hf_config, tokenizer, labels)
    dtype = _weight_dtype(config, precision, device)
    loading_info: dict[str, Any] | None = {} if labels is not None else None
    model = load_model(source, hf_config, task=mc.task, dtype=dtype, trust_remote_code=mc.trust_remote_code,
                       loading_info=loading_info, **quantization.load_kwargs(mc, device, dtype))
    model = quantization.prepare_for_training(model, config)  # no-op for unquantized bases
    # No KV cache while training: it is useless there, and transformers only derives the per-example masks
    # of packed rows (from restarting position_ids) when no cache is being built.
    model.config.use_cache = False
    tree = build_tree(model)
    lora_settings = config.lora
    if loading_info is not None:  # weights the base lacks were initialised at random: train and save them in full
        fresh = classification.freshly_initialised_modules(loading_info, tree.nodes)
        if mc.task == "image-classification":
            fresh += images.batch_norm_modules(model)
        lora_settings = lora_settings.model_copy(update={"modules_to_save": [*lora_settings.modules_to_save, *fresh]})
    selection = resolve_selection(tree, lora_settings, mc.task)
    for warning in [*config.warnings(), *selection.warnings]:
        sink.emit(Message(warning, level="warning"))
    if quantization.wants_gradient_checkpointing(config) and not quantization.is_quantized(mc):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
    peft_model = get_peft_model(model, lora_config_from_selection(selection, lora_settings, mc.task))
    if config.lora.init == "loftq":
        lora_init.run_loftq(peft_model, source.path, sink)
    return peft_model, tokenizer, tree, selection


def _training_arguments(config: RunConfig, run_dir: Path, device: str, precision: str, has_eval: bool, dist: Distributed):
    from transformers import TrainingArguments

    from .runs import RunFolder

    t = config.training
    eval_steps = t.eval_steps
    if has_eval:
        eval_strategy = "steps" if eval_steps else "epoch"
    else:
        eval_strategy = "no"
    return TrainingArguments(
        output_dir=str(RunFolder(run_dir).checkpoints_dir),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a share of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,  # 0 disables clipping (None would crash the Trainer: it compares it with 0)
        optim=t.optimizer,
        seed=t.seed,
        data_seed=t.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        # By default the Trainer leaves NaN/inf losses out of the logged average, which hides a diverged run
        # behind a finite loss; the callback must see them to stop the run.
        logging_nan_inf_filter=False,
        eval_strategy=eval_strategy,
        eval_on_start=has_eval,  # the curve starts from the base model's validation loss
        eval_steps=eval_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit or None,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        label_names=["labels"],
        ddp_backend="gloo" if dist.world_size > 1 and device == "cpu" else None,
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient each step
        **_best_metric_arguments(config, has_eval),
    )


def _best_metric_arguments(config: RunConfig, has_eval: bool) -> dict[str, Any]:
    """With [eval] in use, the Trainer tracks the best checkpoint by eval.best_metric (and its checkpoint rotation
    keeps that one); the task metrics reach it as eval_<name> (EventCallback.on_evaluate adds them)."""
    e = config.eval
    if not has_eval or not (e.scorers or e.early_stopping_patience or e.best_metric != "eval_loss"):
        return {}
    metric = e.best_metric if e.best_metric.startswith("eval_") else f"eval_{e.best_metric}"
    return {"metric_for_best_model": metric, "greater_is_better": e.best_metric not in ("eval_loss", "perplexity")}


# ------------------------------------------------------------------------------------------- training


def _train_attempts(run_dir: Path, config: RunConfig, sink: Sink, control: RunControl, resume_point: "_ResumeInfo | None",
                    dist: Distributed) -> TrainResult:
    """``_train_inner``, tried again with a smaller micro-batch after a step ran out of memory, if allowed.

    Each retry halves ``batch_size`` and doubles ``gradient_accumulation`` (the effective batch, and with it
    the optimisation, stays the same), records that in run.toml so a later resume trains the same way, and
    continues from the newest complete checkpoint, or from the start, in the same run folder. (The Trainer's
    own ``auto_find_batch_size`` halves the batch without touching the accumulation, and always restarts.)
    """
    from .runs import RUN_FILE, choose_checkpoint, load_config, rewind_metrics

    while True:
        _reset_peak_memory()
        try:
            return _train_inner(run_dir, config, sink, control, resume_point, dist)
        except _OutOfMemory as exc:
            step, detail = exc.step, exc.detail
        # Out of the except block, the traceback that held the trainer, the model and the step's activations
        # is gone: only now can their memory be given back.
        _free_device_memory()
        t = config.training
        retry = _smaller_batch(t)
        # Under torchrun the other processes are blocked in a collective and cannot follow a retry.
        if not t.oom_retry or retry is None or dist.world_size > 1:
            raise _oom_error(config, run_dir, step, detail, retry, dist.world_size)
        smaller, accumulation = retry
        config = load_config(run_dir).copy_with(training={"batch_size": smaller, "gradient_accumulation": accumulation})
        config.save(run_dir / RUN_FILE)
        # The same choice as a resume: the newest checkpoint that passes every check, the CRC one included.
        checkpoint = choose_checkpoint(run_dir).checkpoint
        # As a resume does, drop the events of the steps that will be trained again (from the start: every
        # event of a step, the "before" evaluation and samples included), so no step appears twice.
        rewind_metrics(run_dir, checkpoint.step if checkpoint else None)
        resume_point = _ResumeInfo(run_dir, config, checkpoint.path, checkpoint.step, "") if checkpoint else None
        sink.emit(Message(
            f"out of memory at step {step} with batch size {t.batch_size} × accumulation {t.gradient_accumulation} "
            f"({detail}); retrying with batch size {smaller} × accumulation {accumulation} (same effective batch "
            f"{t.batch_size * t.gradient_accumulation}) from {checkpoint.path.name if checkpoint else 'the start'}",
            level="warning"))


def _train_inner(run_dir: Path, config: RunConfig, sink: Sink, control: RunControl, resume_point: "_ResumeInfo | None",
                 dist: Distributed) -> TrainResult:
    import torch
    from transformers import PrinterCallback, set_seed

    from .data import make_collator, prepare

    device = choose_device(config.training.device)
    precision = choose_precision(config.training.precision, device)
    at = resume_point.step if resume_point else 0
    _stop_if_requested(control, "starting", at)
    set_seed(config.training.seed)
    # A classification run reads its label set first: it decides the shape of the head the model is built with.
    labels = _label_set(config)
    peft_model, tokenizer, tree, selection = _setup_model(config, device, precision, sink, labels)
    _stop_if_requested(control, "loading the model", at)
    data: Any
    if labels is not None and config.model.task == "image-classification":
        data = images.prepare_images(config.model, config.data, tokenizer, labels, seed=config.training.seed,
                                     num_channels=getattr(peft_model.config, "num_channels", 3))
        for line in classification.data_messages(data):
            sink.emit(Message(line))
    elif labels is not None:
        data = classification.prepare_classification(config.model, config.data, tokenizer, labels, seed=config.training.seed)
        for line in classification.data_messages(data):
            sink.emit(Message(line))
    else:
        # rank 0 tokenises into the datasets cache, the others then read it
        data = dist.main_first(lambda: prepare(config.data, tokenizer, seed=config.training.seed, sink=sink,
                                               model_type=tree.model_type))
    _stop_if_requested(control, "preparing the data", at)
    if len(data.train) == 0:
        raise TrainingError("the training data has no usable rows", "check data.train_files and the column mapping")

    # run.toml keeps the exact modules the selection resolved to, so a re-run builds the same adapter
    # even if a later version changes what a preset means.
    resolved = config.copy_with(lora={"target_modules": selection.targets, "rank_pattern": selection.rank_overrides,
                                      "alpha_pattern": selection.alpha_overrides})
    if labels is not None:  # and the classes in id order, so a resume or a re-run builds the same head
        resolved = resolved.copy_with(model=classification.resolved_model_fields(labels),
                                      lora={"modules_to_save": [m for m in selection.modules_to_save
                                                                if not set(m.split(".")) & set(classification.HEAD_MODULES)]})
    if resume_point is None and dist.is_main:
        resolved.save(run_dir / "run.toml")
    if config.model.task == "image-classification":
        collator = images.make_image_collator()
    elif labels is not None:
        collator = classification.make_classification_collator(tokenizer)
    else:
        collator = make_collator(tokenizer, packing=data.packed, model_type=tree.model_type)
    if config.lora.init == "eva" and resume_point is None:  # a resumed run loads its trained A and B instead
        lora_init.run_eva(peft_model, data.train, collator, config.training.batch_size, sink, config.training.seed)
    if dist.is_main:
        lora_init.save_initial(peft_model, run_dir, config.lora.init)  # PiSSA/OLoRA: for the conversion at the end

    args = _training_arguments(config, run_dir, device, precision, data.validation is not None and len(data.validation) > 0, dist)
    callback = _event_callback(config, sink, control, dist, tokenizer, device, precision, run_dir,
                              trainable=peft_model.get_nb_trainable_parameters()[0], total=tree.total_params,
                              train_examples=len(data.train), validation_examples=len(data.validation or []),
                              resumed_from=resume_point.step if resume_point else 0, resolved=resolved)
    if config.eval.scorers and dist.is_main and args.eval_strategy != "no":
        callback.eval_refs = _task_references(config, tokenizer, sink)
    if config.eval.retention and dist.is_main:
        callback.retention = _retention_probe(config, peft_model, tokenizer, sink, args.eval_strategy != "no")
    metrics = classification.ClassificationMetrics(labels) if labels is not None else None
    trainer = _make_trainer_class()(
        model=peft_model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation if args.eval_strategy != "no" else None,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[callback],
        optimizers=(lora_init.make_optimizer(peft_model, config), None),  # LoRA+ when asked for, else the Trainer's
        compute_metrics=metrics,
    )
    trainer.remove_callback(PrinterCallback)  # our events replace its prints to stdout
    oom = None
    try:
        trainer.train(resume_from_checkpoint=str(resume_point.checkpoint) if resume_point else None)
    except Exception as exc:
        if not _is_out_of_memory(exc):
            full = _checkpoint_disk_full(exc, run_dir, trainer.state.global_step, _trainable_bytes(peft_model))
            full = full or _write_refused(exc, run_dir, f"checkpoint-{trainer.state.global_step}")
            if full is None:
                raise
            raise full from exc
        oom = first_line(exc)
    if oom is not None:
        # Raised outside the except block: a chained traceback would keep the failed step's tensors alive.
        raise _OutOfMemory(oom, trainer.state.global_step + 1)

    if callback.failure is not None:  # diverged: the weights in memory are NaN, so no adapter is saved
        raise callback.failure
    if args.metric_for_best_model and trainer.state.best_model_checkpoint and dist.is_main:
        best = Path(trainer.state.best_model_checkpoint)
        sink.emit(Message(f"best checkpoint by {config.eval.best_metric}: {best.name} "
                          f"({config.eval.best_metric} {trainer.state.best_metric:.4g}), kept in {best.parent}"))
    step = trainer.state.global_step
    if metrics is not None and metrics.confusion is not None:
        sink.emit(Message(metrics.confusion_text()))
    stopped = callback.stopped and step < trainer.state.max_steps
    adapter_dir = run_dir / "adapter"
    if dist.is_main:
        try:
            _save_adapter(peft_model, run_dir, labels, **lora_init.conversion_source(run_dir, config.lora.init))
        except Exception as exc:
            full = _adapter_disk_full(exc, run_dir, step, _trainable_bytes(peft_model))
            full = full or _write_refused(exc, run_dir, f"the adapter of step {step}")
            if full is None:
                raise
            raise full from exc
    summary = {
        "steps": step,
        "train_loss": callback.last_loss,
        "best_eval_loss": callback.best_eval_loss,
        "tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
        "train_seconds": round(time.time() - callback.started, 2),
        "trainable_params": callback.trainable,
    }
    status = "stopped" if stopped else "finished"
    if dist.is_main:  # README.md beside the adapter: settings, data, curves, how to load it
        write_model_card(adapter_dir, kind="adapter", adapter=adapter_dir, sink=sink)
    sink.emit(Finished(status=status, adapter_path=str(adapter_dir), step=step, summary=summary))
    del trainer
    if device == "cuda":
        torch.cuda.empty_cache()
    return TrainResult(run_dir, adapter_dir, status, step, summary)


def _stop_if_requested(control: RunControl, phase: str, resumed_at: int = 0) -> None:
    """A stop pressed while the model loads or the data is tokenised ends the run there, not a step later.
    A resumed run has trained steps before: it is still at its checkpoint, and says so."""
    if not control.stop_requested:
        return
    if resumed_at:
        raise TrainingError(f"stopped while {phase}, before the resumed run trained its next step",
                            f"no step was trained in this session; the run is still at step {resumed_at} "
                            "(its checkpoint is unchanged), and `workbench resume` continues it from there")
    raise TrainingError(f"stopped while {phase}, before the first training step", "nothing was trained")


def _finish_from_checkpoint(run_dir: Path, sink: Any, point: "_ResumeInfo", dist: Distributed) -> TrainResult:
    """Finish a run whose checkpoint holds its last step (it was killed while its final adapter was written):
    the final adapter is the checkpoint's adapter, copied into ``adapter/`` aside and renamed into place, and
    the run is marked finished. No model is loaded and no step is trained: training on from the last step
    would go past the run's target (the Trainer trains one more step when resumed at ``max_steps``)."""
    from .runs import RunFolder
    from .runs.status import StatusRecord

    adapter_dir = RunFolder(run_dir).adapter_dir
    dist.on_main(lambda: _copy_checkpoint_adapter(point.checkpoint, adapter_dir), share_result=False)
    record = StatusRecord.read(RunFolder(run_dir)) or StatusRecord()
    try:
        state = json.loads((point.checkpoint / "trainer_state.json").read_bytes())
    except (OSError, ValueError):
        state = {}
    summary = {"steps": point.step, "train_loss": record.last_loss, "best_eval_loss": record.best_eval_loss,
               "tokens_seen": int(state.get("num_input_tokens_seen") or 0), "train_seconds": 0.0,
               "trainable_params": None}
    sink.emit(Finished(status="finished", adapter_path=str(adapter_dir), step=point.step, summary=summary))
    return TrainResult(run_dir, adapter_dir, "finished", point.step, summary)


# What save_pretrained writes for an adapter: the checkpoint also holds optimizer, scheduler, RNG and tokenizer files.
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md", "labels.json")


def _copy_checkpoint_adapter(checkpoint: Path, final: Path) -> None:
    import shutil

    from .fsutil import atomic_directory

    with atomic_directory(final, overwrite=True) as tmp:
        for name in _ADAPTER_FILES:
            if (checkpoint / name).is_file():
                shutil.copyfile(checkpoint / name, tmp / name)


def _save_adapter(peft_model: Any, run_dir: Path, labels: Any = None, **save_kwargs: Any) -> Path:
    """PEFT format (adapter_config.json + adapter_model.safetensors), written aside and renamed into place.
    ``save_kwargs``: PEFT's conversion of PiSSA/OLoRA adapters to a plain LoRA on the original base.
    ``labels``: a classification run's label set, saved beside the adapter as labels.json."""
    from .fsutil import atomic_directory

    final = run_dir / "adapter"
    with atomic_directory(final, overwrite=True) as tmp:
        peft_model.save_pretrained(str(tmp), safe_serialization=True, **save_kwargs)
        if labels is not None:
            classification.write_label_file(tmp, labels)
    return final


def _explain_failure(exc: BaseException) -> tuple[str, str]:
    text = str(exc).split("\n")[0]
    if "out of memory" in text.lower():
        return (f"out of memory: {text}",
                "lower training.batch_size (and raise gradient_accumulation to keep the effective batch), "
                "shorten data.max_length, or turn on training.gradient_checkpointing")
    return f"{type(exc).__name__}: {text}", ""


# --------------------------------------------------------------------------------------------- faults
#
# Every fault ends the run as "failed" (a diverged or crashed-out run is not the user's "stopped", whose
# adapter is saved) with the newest complete checkpoint intact, so `workbench resume` can continue from it.


def _divergence_error(config: RunConfig, precision: str, run_dir: Path, step: int, loss: float | None,
                      grad_norm: float | None) -> TrainingError:
    """The failure of a run whose loss, gradient norm or weights became NaN or infinite at ``step``."""
    from .runs import latest_checkpoint

    if loss is not None and not math.isfinite(loss):
        what = f"the loss became {loss} at step {step}" + (f" (gradient norm {grad_norm:.4g})" if grad_norm is not None else "")
    elif grad_norm is not None and not math.isfinite(grad_norm):
        what = f"the gradient norm became {grad_norm} at step {step}" + (f" (loss {loss:.4g})" if loss is not None else "")
    else:
        what = f"the adapter weights became NaN or infinite at step {step}" + (f" (loss {loss:.4g})" if loss is not None else "")
    good = latest_checkpoint(run_dir)
    kept = f"the newest good checkpoint is {good.path.name}" if good else "the run has no checkpoint"
    t = config.training
    tips = [f"lower training.learning_rate (now {t.learning_rate:g}; try {t.learning_rate / 10:g})"]
    if precision == "fp16":
        tips.append("train in bf16 or fp32 instead of fp16 (training.precision), whose range overflows easily")
    if t.max_grad_norm > 0:
        tips.append(f"clip gradients harder (training.max_grad_norm, now {t.max_grad_norm:g}; try {t.max_grad_norm / 2:g})")
    else:
        tips.append("turn gradient clipping on (training.max_grad_norm = 1.0)")
    resume_hint = (f"; `workbench resume {shlex.quote(str(run_dir))}` continues from {good.path.name} with unchanged settings"
                   if good else "")
    return TrainingError(f"{what}: training diverged. Nothing was saved from these weights; {kept}",
                         "in a new run, " + "; or ".join(tips) + resume_hint)


def _abandon(control: Any) -> Any:
    """A diverged run ends at this step and writes nothing: no checkpoint, no evaluation of broken weights."""
    control.should_training_stop = True
    control.should_save = False
    control.should_evaluate = False
    return control


class _OutOfMemory(Exception):
    """A training step ran out of memory. Internal: ``_train_attempts`` retries, or raises a ``TrainingError``."""

    def __init__(self, detail: str, step: int):
        super().__init__(detail)
        self.detail, self.step = detail, step


def _is_out_of_memory(exc: BaseException) -> bool:
    """CUDA / MPS / XPU / CPU allocator failures (torch.cuda.OutOfMemoryError is torch.OutOfMemoryError)."""
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(exc, torch.OutOfMemoryError) or should_reduce_batch_size(exc)


def _free_device_memory() -> None:
    from accelerate.utils.memory import clear_device_cache

    clear_device_cache(garbage_collection=True)  # gc first: the cached blocks are only free once nothing holds them


def _reset_peak_memory() -> None:
    """Start each attempt's memory peak afresh: the window trains many runs in one process, and CUDA's peak
    counters otherwise keep the largest run's (or an out-of-memory attempt's) peak for every later step."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def _smaller_batch(t: TrainingConfig) -> tuple[int, int] | None:
    """(micro-batch, accumulation) to try after running out of memory: half the micro-batch, or for an odd size
    its largest divisor below half, with the accumulation raised so batch × accumulation stays exactly the same.
    None at a micro-batch of 1."""
    smaller = next((d for d in range(t.batch_size // 2, 0, -1) if t.batch_size % d == 0), None)
    return None if smaller is None else (smaller, t.gradient_accumulation * t.batch_size // smaller)


def _oom_error(config: RunConfig, run_dir: Path, step: int, detail: str, retry: tuple[int, int] | None,
               world_size: int) -> TrainingError:
    from .runs import RUN_FILE, latest_checkpoint

    t = config.training
    reason = (f"out of memory at step {step} with training.batch_size = {t.batch_size} "
              f"(gradient_accumulation {t.gradient_accumulation}): {detail}")
    other = "training.gradient_checkpointing = true and a shorter data.max_length save memory too"
    if retry is None:
        return TrainingError(reason, f"the micro-batch is already 1; {other}, and so do fewer adapted layers or a smaller model")
    smaller, accumulation = retry
    overrides = ["--set", f"training.batch_size={smaller}", "--set", f"training.gradient_accumulation={accumulation}"]
    command = ["workbench", "train", str(run_dir / RUN_FILE), *overrides]
    if config.output.run_dir:  # that run file names this (now used) folder: the retry needs another one
        command += ["--run-dir", f"{run_dir}-bs{smaller}"]
    hint = (f"retry with per-device batch size {smaller} and gradient accumulation {accumulation}, the same effective batch "
            f"of {t.batch_size * t.gradient_accumulation}: `{shlex.join(command)}`")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        hint += (f"; or, to continue this run from {checkpoint.path.name}, set those two values in {run_dir / RUN_FILE} "
                 f"and run `workbench resume {shlex.quote(str(run_dir))}`")
    if world_size > 1:
        hint += "; training.oom_retry cannot retry a multi-process (torchrun) run by itself"
    else:
        hint += "; or set training.oom_retry = true to retry like this automatically"
    return TrainingError(reason, f"{hint}. Besides, {other}.")


# torch.save's C++ writer drops the OS error: a full disk shows up as one of these.
_TORCH_WRITE_FAILURES = ("file write failed", "unexpected pos", "iostream error")


def _is_disk_full(exc: BaseException, folder: Path, needed: int) -> bool:
    if is_disk_full(exc):  # ENOSPC / EDQUOT, or their text (safetensors keeps only that)
        return True
    if any(isinstance(e, RuntimeError) and any(s in str(e) for s in _TORCH_WRITE_FAILURES) for e in exception_chain(exc)):
        return free_bytes(folder) < needed  # believe it when there is indeed too little room left
    return False


def _checkpoint_disk_full(exc: BaseException, run_dir: Path, step: int, adapter_bytes: int) -> OutputError | None:
    """The error for a checkpoint that could not be written for lack of space, or None for another failure.

    The checkpoint was being written into its temporary folder (``_make_trainer_class``), which is gone by now,
    so the previous checkpoints are untouched; what else is unfinished is removed here, to give space back."""
    from .runs import RunFolder, _newest_complete, discard_unfinished_checkpoints, list_checkpoints

    folder = RunFolder(run_dir)
    target = folder.checkpoints_dir / f"checkpoint-{step}"
    checkpoints = list_checkpoints(folder)
    previous = _newest_complete(checkpoints)
    # The previous checkpoint is the best estimate; without one: the adapter plus AdamW's two moments.
    needed = _folder_bytes(previous.path) if previous else 3 * adapter_bytes
    if not _is_disk_full(exc, target, needed):
        return None
    discard_unfinished_checkpoints(folder, checkpoints)  # gives their space back
    free, mount = free_bytes(target), mount_point(target)
    reason = (f"the disk is full: checkpoint-{step} could not be written to {folder.checkpoints_dir} "
              f"(file system {mount}: {format_size(free)} free now; a checkpoint needs about {format_size(needed)})")
    then = (f"`workbench resume {shlex.quote(str(run_dir))}` continues from {previous.path.name}" if previous
            else "start the run again (it has no complete checkpoint to resume from)")
    return OutputError(reason, f"{_room(needed, free, mount)} (a lower training.save_total_limit keeps fewer checkpoints), "
                               f"then {then}. The unfinished checkpoint-{step} was removed.")


def _adapter_disk_full(exc: BaseException, run_dir: Path, step: int, adapter_bytes: int) -> OutputError | None:
    """The error for a final adapter that could not be written for lack of space, or None for another failure.
    The adapter is written aside and renamed into place, so an adapter saved earlier is still whole."""
    from .runs import RunFolder, latest_checkpoint

    target = RunFolder(run_dir).adapter_dir
    checkpoint = latest_checkpoint(run_dir)
    weights = checkpoint.path / "adapter_model.safetensors" if checkpoint else None
    needed = weights.stat().st_size if weights is not None and weights.is_file() else adapter_bytes
    if not _is_disk_full(exc, run_dir, needed):
        return None
    free, mount = free_bytes(run_dir), mount_point(run_dir)
    reason = (f"the disk is full: the adapter of step {step} could not be written to {target} "
              f"(file system {mount}: {format_size(free)} free now; the adapter needs about {format_size(needed)})")
    then = (f"`workbench resume {shlex.quote(str(run_dir))}` continues from {checkpoint.path.name} and saves the adapter"
            if checkpoint else "train again: without a checkpoint (training.save_steps) these weights are lost")
    kept = f" The adapter saved earlier in {target} is unchanged." if target.is_dir() else ""
    return OutputError(reason, f"{_room(needed, free, mount)}, then {then}.{kept}")


# The file system refusing a write (not for lack of space: that is _checkpoint_disk_full / _adapter_disk_full).
_WRITE_REFUSALS = {errno.EACCES: "no permission", errno.EPERM: "not permitted", errno.EROFS: "read-only file system",
                   errno.ENOTDIR: "a file is in the way of a folder", errno.EEXIST: "something is in the way",
                   errno.EIO: "input/output error", errno.ENOENT: "a folder was removed"}


def _write_refused(exc: BaseException, run_dir: Path, what: str) -> OutputError | None:
    """The error for a write into the run folder that the file system refused in the middle of a run (its
    permissions changed, it became read-only, a folder was removed), or None for another failure. The
    checkpoint being written was in its temporary folder, so earlier checkpoints are intact."""
    from .runs import latest_checkpoint

    refused = next((e for e in exception_chain(exc) if isinstance(e, OSError) and e.errno in _WRITE_REFUSALS), None)
    if refused is None:
        return None
    path = refused.filename or run_dir
    if refused.filename2:
        path = f"{path} → {refused.filename2}"
    checkpoint = latest_checkpoint(run_dir)
    then = (f"`workbench resume {shlex.quote(str(run_dir))}` continues from {checkpoint.path.name}" if checkpoint
            else "start the run again (it has no complete checkpoint to resume from)")
    return OutputError(f"the file system refused to write {what}: {path}: {_WRITE_REFUSALS.get(refused.errno or 0, 'refused')} "
                       f"({refused.strerror or refused})",
                       f"make {run_dir} writable again for this user (check its permissions, its mount and the free "
                       f"space), then {then}")


def _room(needed: int, free: int, mount: Path) -> str:
    if needed > free:
        return f"free at least {format_size(needed - free)} on {mount}"
    return f"keep at least {format_size(needed)} free on {mount} (other files may have taken the space)"


def _trainable_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _device_memory(device: str) -> int | None:
    """The attempt's peak memory so far (``_reset_peak_memory``). On a GPU what PyTorch's allocator held from the
    device at its peak (live tensors plus its cache: what decides an out-of-memory error; 0.2-2.5 GiB above
    the tensors alone at 0.1-8B parameters on an H100); the CUDA context (~0.75 GiB) comes on top. Elsewhere
    the process's resident memory."""
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_reserved())
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # psutil is a declared dependency; without it memory is simply not reported
        return None


def _device_name(device: str) -> str:
    import platform

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine() or device


# The Trainer keeps every log entry in ``state.log_history`` (~450 bytes per logged step) and rewrites the whole
# list into every checkpoint's trainer_state.json; metrics.jsonl has all of it already. Only this many of the
# newest entries are kept. (Nothing in the Trainer reads log_history back: the best metric lives in
# ``state.best_metric`` / ``best_global_step``, the training loss in its own running total.)
LOG_HISTORY_KEEP = 200


def _make_trainer_class():
    """The HF Trainer with atomic checkpoints. Defined inside a function so that importing this module does not
    import transformers.

    The Trainer writes ``checkpoint-N`` file by file in place, so a killed or power-cut save leaves a
    half-written folder under the final name. Here each save goes to ``checkpoints/.tmp-checkpoint-N.partial/``
    instead: the Trainer's own ``_save_checkpoint`` runs unchanged with its output folder pointed there (through
    ``_get_output_dir``, which it asks for the folder to save into — narrower than changing ``args.output_dir``,
    which callbacks and the end of training read too), every rank writes its files, then the main process
    flushes the folder to disk and renames it to ``checkpoints/checkpoint-N``, and syncs ``checkpoints/``.
    Rotation (``save_total_limit``) runs after the rename, on the real folder, and deletes an old checkpoint by
    renaming it to ``.tmp-checkpoint-N.deleting`` first, so a killed rotation leaves no half-deleted folder
    under a checkpoint name either. ``on_save`` (the ``CheckpointSaved`` event) follows ``_save_checkpoint``
    in the Trainer, so it always names the published folder.
    """
    import shutil
    import warnings

    from transformers import Trainer
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from .fsutil import TMP_PREFIX, fsync_dir, publish_directory, remove_directory
    from .runs import checkpoint_folders

    class AtomicCheckpointTrainer(Trainer):
        _staging: str | None = None

        def _get_output_dir(self, trial):
            return self._staging if self._staging is not None else super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial):
            root = Path(super()._get_output_dir(trial))
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            staging = root / f"{TMP_PREFIX}{name}.partial"
            main = self.args.should_save
            if main and staging.exists():
                shutil.rmtree(staging)  # left by a save that was interrupted earlier
            self.accelerator.wait_for_everyone()  # no rank writes into the staging folder before it is clean
            self._staging = str(staging)
            try:
                super()._save_checkpoint(model, trial)  # its rotation sees only this checkpoint: a no-op
                self.accelerator.wait_for_everyone()  # every rank has written its files (RNG state per rank)
                if main:
                    self._publish(staging / name, root / name, staging)
                    self._rotate(root)
            except BaseException:
                if main:
                    shutil.rmtree(staging, ignore_errors=True)
                raise
            finally:
                self._staging = None
            self.accelerator.wait_for_everyone()  # the checkpoint is in place for every rank

        def _publish(self, written: Path, final: Path, staging: Path) -> None:
            if not written.is_dir():
                if final.is_dir():  # a transformers version that no longer asks _get_output_dir: saved in place
                    warnings.warn(f"{final} was written in place, not atomically (transformers changed its saving)",
                                  stacklevel=2)
                    return
                raise RuntimeError(f"the Trainer wrote no checkpoint into {staging}")
            # Overwrite: a checkpoint of the same step can only be one a resume has passed over (damaged).
            publish_directory(written, final, overwrite=True)
            staging.rmdir()
            fsync_dir(final.parent)
            best = self.state.best_model_checkpoint  # recorded while the checkpoint was still in staging
            if best and Path(best) == written:
                self.state.best_model_checkpoint = str(final)

        def _rotate(self, root: Path) -> None:
            limit = self.args.save_total_limit
            if not limit or limit <= 0:
                return
            # The same folders as every other reader of the run counts as checkpoints, oldest first by step
            # (folder times change with renames).
            checkpoints = [p for _, p in checkpoint_folders(root)]
            protected = {checkpoints[-1]} if checkpoints else set()
            if self.state.best_model_checkpoint:
                protected.add(Path(self.state.best_model_checkpoint))
            excess = len(checkpoints) - max(limit, len(protected))
            for old in checkpoints:
                if excess <= 0:
                    break
                if old not in protected:
                    try:
                        remove_directory(old)
                    except OSError:  # as the Trainer's own rotation: an old checkpoint left over fails nothing
                        pass
                    excess -= 1

    return AtomicCheckpointTrainer


def _task_references(config: RunConfig, tokenizer: Any, sink: Sink) -> list:
    from .evaluation import eval_references
    from .scorers import GENERATIVE_SCORERS

    refs = eval_references(config.data, tokenizer, seed=config.training.seed, limit=config.eval.max_examples)
    if not refs and any(name in GENERATIVE_SCORERS for name in config.eval.scorers):
        sink.emit(Message("eval.scorers: the validation rows have no prompt to answer (plain text), so only "
                          "perplexity can be computed", level="warning"))
    return refs


def _retention_probe(config: RunConfig, model: Any, tokenizer: Any, sink: Sink, evaluates: bool):
    from .retention import RetentionProbe, general_prompts, reference_texts

    if not evaluates:
        sink.emit(Message("eval.retention: the meter runs at each evaluation, and this run has no validation data; "
                          "add data.validation_files or data.validation_split", level="warning"))
        return None
    texts = reference_texts(config.eval.retention_file)
    probe = RetentionProbe.build(model, tokenizer, texts, general_prompts(), batch_size=config.eval.batch_size)
    sink.emit(Message(f"retention meter: {len(probe.texts)} reference texts, {len(probe.answers)} answers of the base "
                      f"model (base loss on the texts {probe.base_text_loss:.4f})"))
    return probe


def _make_callback_class():
    """Defined inside a function so that importing this module does not import transformers."""
    from transformers import TrainerCallback

    class EventCallback(TrainerCallback):
        """Turns the Trainer's life into events, and applies stop / pause / checkpoint requests between steps."""

        def __init__(self, config: RunConfig, sink: Sink, control: RunControl, dist: Distributed, tokenizer: Any, device: str, precision: str,
                     run_dir: Path, *, trainable: int, total: int, train_examples: int, validation_examples: int,
                     resumed_from: int, resolved: RunConfig):
            self.config, self.sink, self.run_control, self.dist, self.tokenizer = config, sink, control, dist, tokenizer
            self.device, self.precision, self.run_dir = device, precision, run_dir
            self.trainable, self.total = trainable, total
            self.train_examples, self.validation_examples = train_examples, validation_examples
            self.resumed_from, self.resolved = resumed_from, resolved
            self.started = time.time()
            self.last_loss: float | None = None
            self.best_eval_loss: float | None = None
            self.failure: WorkbenchError | None = None
            self.stopped = False  # a stop request was acted on (every rank agrees)
            self._diverged_at: int | None = None  # the step whose loss, gradients or weights became NaN / inf
            self._trainable_params: list | None = None
            self._last_log_time = self.started
            self._last_tokens = 0
            self._first_step_of_session: int | None = None
            self.eval_refs: list = []  # (prompt, answer) pairs for the task metrics (core/evaluation.py)
            self.retention: Any = None  # core/retention.RetentionProbe when eval.retention is on
            self._retention_warned = False
            self._eval_seconds = 0.0  # spent evaluating: left out of tokens/s and the ETA
            self._best_task_value: float | None = None
            self._evals_without_gain = 0

        # -- lifecycle ---------------------------------------------------------------------------------
        def on_train_begin(self, args, state, control, model=None, **kw):
            world = self.dist.world_size
            self._last_tokens = int(state.num_input_tokens_seen or 0)
            self.sink.emit(RunStarted(
                run_dir=str(self.run_dir), config=self.resolved.to_dict(), device=self.device,
                device_name=_device_name(self.device), precision=self.precision, trainable_params=self.trainable,
                total_params=self.total, total_steps=int(state.max_steps),  # world_size: stamped by the sink
                global_batch=args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
                resumed_from_step=self.resumed_from, train_examples=self.train_examples,
                validation_examples=self.validation_examples,
            ))
            if self.resumed_from == 0 and self._sampling():
                self._samples(model, state.global_step)  # "before" samples to compare against

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if len(state.log_history) > LOG_HISTORY_KEEP:  # see LOG_HISTORY_KEEP
                del state.log_history[:-LOG_HISTORY_KEEP]
            if "loss" in logs:
                loss = float(logs["loss"])
                now = time.time()
                tokens = int(state.num_input_tokens_seen or 0)
                dt = max(now - self._last_log_time, 1e-9)
                tps = (tokens - self._last_tokens) / dt if tokens > self._last_tokens else None
                self._last_log_time, self._last_tokens = now, tokens
                if self._first_step_of_session is None:
                    self._first_step_of_session = state.global_step - 1
                done = state.global_step - self._first_step_of_session
                elapsed = now - self.started
                training_time = elapsed - self._eval_seconds
                eta = training_time / done * (state.max_steps - state.global_step) if done > 0 else None
                self.last_loss = loss
                self.sink.emit(Step(
                    step=state.global_step, total_steps=int(state.max_steps), epoch=float(state.epoch or 0.0),
                    loss=loss, learning_rate=float(logs.get("learning_rate", 0.0)),
                    grad_norm=_finite_or_none(logs.get("grad_norm")), tokens_per_second=tps, tokens_seen=tokens,
                    memory_bytes=_device_memory(self.device), elapsed_s=round(elapsed, 3), eta_s=eta,
                ))
                self._check_divergence(state.global_step, loss, _float_or_none(logs.get("grad_norm")))
            if self.failure is not None:
                return _abandon(control)
            return self._apply_requests(state, control)

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            metrics = metrics or {}
            if "eval_loss" in metrics:
                loss = float(metrics["eval_loss"])
                if math.isfinite(loss) and (self.best_eval_loss is None or loss < self.best_eval_loss):
                    self.best_eval_loss = loss
                extra = {k: float(v) for k, v in metrics.items() if k != "eval_loss" and isinstance(v, (int, float))}
                spent = float(metrics.get("eval_runtime") or 0.0)
                if self.config.eval.scorers and self.dist.is_main:
                    from .evaluation import score_task

                    scores = score_task(kw.get("model"), self.tokenizer, self.eval_refs, self.config.eval, loss)
                    extra.update(scores.metrics)
                    # The Trainer picks the best checkpoint from this same dict (eval.best_metric).
                    metrics.update({f"eval_{k}": v for k, v in scores.metrics.items()})
                    spent += scores.seconds
                if self.retention is not None and kw.get("model") is not None:
                    started = time.monotonic()
                    extra.update(self.retention.measure(kw["model"]))
                    spent += time.monotonic() - started
                    self._warn_about_retention(state.global_step, extra)
                self._eval_seconds += spent
                self._last_log_time += spent  # the next step's tokens/s counts training time only
                self.sink.emit(Evaluation(step=state.global_step, eval_loss=loss, metrics=extra))
                self._early_stopping(state, control, loss, extra)

        def _warn_about_retention(self, step: int, extra: dict[str, float]) -> None:
            floor = self.config.eval.retention_warn_below
            agreement, ratio = extra.get("retention_agreement", math.nan), extra.get("retention_ppl_ratio", 1.0)
            if self._retention_warned or not (agreement < floor or ratio > 1 / floor):
                return
            self._retention_warned = True
            self.sink.emit(Message(
                f"retention at step {step}: the model agrees with the base model's own answers on {agreement:.0%} of "
                f"their tokens and its perplexity on general text is {ratio:.2f}× the base's — it is forgetting what "
                "it knew. Mitigations: fewer target modules or a lower rank (`workbench sweep` shows the trade-off), "
                "general data mixed into data.train_files, or stopping earlier (eval.early_stopping_patience).",
                level="warning"))

        def _early_stopping(self, state, control, loss: float, extra: dict[str, float]) -> None:
            patience = self.config.eval.early_stopping_patience
            if not patience or state.global_step == 0:  # the evaluation before the first step is the baseline
                if state.global_step == 0:
                    self._best_task_value = self._metric_value(loss, extra)
                return
            value = self._metric_value(loss, extra)
            if value is None:
                return
            if self._best_task_value is None or value > self._best_task_value:
                self._best_task_value, self._evals_without_gain = value, 0
                return
            self._evals_without_gain += 1
            if self._evals_without_gain >= patience:
                name = self.config.eval.best_metric
                self.sink.emit(Message(f"early stopping at step {state.global_step}: {name} has not improved for "
                                       f"{patience} evaluation(s)"))
                control.should_training_stop = True

        def _metric_value(self, loss: float, extra: dict[str, float]) -> float | None:
            """eval.best_metric, signed so that higher is better."""
            name = self.config.eval.best_metric
            value = loss if name == "eval_loss" else extra.get(name)
            if value is None or not math.isfinite(value):
                return None
            return -value if name in ("eval_loss", "perplexity") else value

        def on_save(self, args, state, control, **kw):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.sink.emit(CheckpointSaved(step=state.global_step, path=str(path)))

        # -- control between steps ---------------------------------------------------------------------
        # Requests are applied once per step, after the step's Step event when the step is logged (on_log
        # follows on_step_end within the same step), so the event order reads step → paused → resumed →
        # next step, and a stop asked for in reaction to a Step event takes effect at once. The Trainer then
        # saves the requested checkpoint before it leaves the loop.
        def on_step_end(self, args, state, control, model=None, **kw):
            if self._diverged_at is None and not self._weights_finite(model):
                # This step's update made the adapter NaN or infinite. Stop here, before the Trainer saves or
                # evaluates (it does both after this callback); log the step even between logging steps, so
                # that on_log can put its loss and gradient norm into the error.
                self._diverged_at = state.global_step
                self.failure = _divergence_error(self.config, self.precision, self.run_dir, state.global_step, None, None)
                control.should_log = True
            if self.failure is not None:
                return _abandon(control)
            if self._sampling() and state.global_step % self.config.training.sample_steps == 0:
                self._samples(model, state.global_step)
            if control.should_log:  # set by DefaultFlowCallback, which runs first: on_log will apply them
                return control
            return self._apply_requests(state, control)

        def on_epoch_end(self, args, state, control, **kw):
            return _abandon(control) if self.failure is not None else control

        # -- divergence ----------------------------------------------------------------------------------
        # Every rank sees the same weights (gradients are all-reduced) and the same logged loss (averaged over
        # ranks), so every rank reaches the same verdict at the same step.
        def _weights_finite(self, model) -> bool:
            import torch

            if model is None:
                return True
            if self._trainable_params is None:
                self._trainable_params = [p for p in model.parameters() if p.requires_grad]
            if not self._trainable_params:
                return True
            with torch.no_grad():  # one reduction and one device sync per step: the max |w| is NaN or inf iff a weight is
                return bool(torch.isfinite(torch.nn.utils.get_total_norm(self._trainable_params, norm_type=math.inf)))

        def _check_divergence(self, step: int, loss: float, grad_norm: float | None) -> None:
            if self.failure is not None and step != self._diverged_at:
                return  # already failed at an earlier step
            # Under fp16 loss scaling an infinite gradient norm is routine: the GradScaler skips that update and
            # lowers the scale. Elsewhere the update it feeds poisons the weights.
            bad_grad = grad_norm is not None and not math.isfinite(grad_norm) and self.precision != "fp16"
            if step == self._diverged_at or not math.isfinite(loss) or bad_grad:
                self._diverged_at = step
                self.failure = _divergence_error(self.config, self.precision, self.run_dir, step, loss, grad_norm)

        def _apply_requests(self, state, control):
            rc, dist = self.run_control, self.dist
            req = dist.requests(rc)  # one snapshot, agreed by every rank under torchrun
            if req.pause and not req.stop:
                self.sink.emit(Paused(step=state.global_step))
                paused_at = time.time()
                while req.pause and not req.stop:
                    req = dist.await_resume(rc)  # model stays in memory; wake on resume or stop
                self.started += time.time() - paused_at  # keep ETA and tokens/s honest
                self._last_log_time += time.time() - paused_at
                if not req.stop:
                    self.sink.emit(Resumed(step=state.global_step))
            if req.checkpoint:
                control.should_save = True
            if req.stop:
                control.should_training_stop = True
                control.should_save = True  # a stopped run can be resumed from here
                self.stopped = True
            return control

        # -- samples -----------------------------------------------------------------------------------
        def _sampling(self) -> bool:
            t = self.config.training
            return bool(t.sample_steps and t.sample_prompts and self.config.model.task == "causal-lm" and self.dist.is_main)

        def _samples(self, model, step: int) -> None:
            import torch

            from .evaluation import render_user_prompt

            if model is None:
                return
            was_training = model.training
            model.eval()
            try:
                for prompt in self.config.training.sample_prompts:
                    text = render_user_prompt(self.tokenizer, prompt)
                    enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
                    with torch.no_grad():
                        out = model.generate(**enc, max_new_tokens=self.config.training.sample_max_new_tokens,
                                             do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
                    completion = self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                    self.sink.emit(Sample(step=step, prompt=prompt, completion=completion))
            finally:
                if was_training:
                    model.train()

    return EventCallback


def _event_callback(*args: Any, **kwargs: Any):
    return _make_callback_class()(*args, **kwargs)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None
