"""The entry points (``run``, ``preflight``, ``resume``) and the course of one run: set-up, the Trainer's loop,
the final adapter, and the out-of-memory retries around them. See the package docstring for the whole picture.
"""

from __future__ import annotations

import json
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import base_eval, classification, images, init_adapter, lora_init, precision, preference, quantization
from ..config import RunConfig
from ..control import Control, RunControl
from ..distributed import Distributed, launched_rank
from ..errors import TrainingError, WorkbenchError, first_line
from ..events import Failed, Finished, Message, MultiSink, NullSink, Sink, SinkLike, as_sink
from ..fsutil import atomic_directory
from ..model_card import write_model_card
from ..precision import Compute
from ..runs import (
    RUN_FILE,
    RunFolder,
    RunRecorder,
    check_run_dir_claimable,
    choose_checkpoint,
    create_run,
    prepare_resume,
    rewind_metrics,
)
from ..runs import load_config as load_run_config
from ..runs.status import StatusRecord
from ..trackers import check_trackers, tracker_sinks
from . import faults, setup


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    adapter_dir: Path | None
    status: str  # "finished" | "stopped" (failures raise)
    final_step: int
    summary: dict[str, Any]


def run(config: RunConfig, sink: SinkLike = None, control: Control | None = None, *, run_dir: str | Path | None = None) -> TrainResult:
    """Train a new run described by ``config``. Blocks until the run ends; call it from a worker thread.

    Raises ``WorkbenchError`` for bad input (after emitting ``Failed``); never leaves the run folder
    marked as running. Input that can be checked cheaply (model source, data files) is checked before
    the run folder is created, so a typo leaves no failed run behind. Under torchrun every rank calls
    this; rank 0 creates and writes the run folder.
    """
    if run_dir is not None:
        config = config.copy_with(output={"run_dir": str(run_dir)})
    if launched_rank() == 0:  # the rank that runs the preflight; a refusal there ends the others (torchrun)
        check_before_loading(config)
    compute = precision.resolve_compute(config)  # once per run: everything below is handed this one
    dist = Distributed.setup(compute.device)
    try:
        config = init_adapter.with_adapter_settings(config)  # [lora] from model.init_adapter's adapter, if one is set
        files = dist.on_main(lambda: preflight(config, sink, compute=compute), share_result=False)
        if files is not None and files.selection is not None:  # rank 0: the exact modules, in run.toml at once
            config = setup.with_selection(config, files.selection)  # (other ranks resolve them on the loaded model)
        folder = dist.on_main(lambda: create_run(config).path)
        return _train(Path(folder), config, as_sink(sink), control or RunControl(), None, dist, compute, files)
    finally:
        dist.close()


def check_before_loading(config: RunConfig) -> None:
    """The checks that need no model and no ML library (torch, transformers, datasets: seconds to import), in the
    preflight's order: the ``[lora]`` section agrees with ``model.init_adapter``'s adapter, a local model folder is
    one, the data files are there and readable, the run folder can be made. A run does them first, so a typo is
    refused in a fraction of a second; each raises the error ``preflight`` or ``create_run`` would raise later for
    the same fault."""
    from ..data.readers import open_data_files
    from ..models import check_source

    init_adapter.with_adapter_settings(config)
    check_source(config.model.source, allow_pickle=config.model.allow_pickle)
    if config.model.task != "image-classification":  # there a data "file" may be a folder of class folders
        open_data_files(config.data)
    check_run_dir_claimable(config)


def preflight(config: RunConfig, sink: SinkLike = None, *, compute: Compute | None = None) -> setup.ModelFiles:
    """The checks that take a second or less: the model source resolves and is safe, the data files are
    readable and of a known format. Raises the same ``WorkbenchError`` training itself would. (A built-in
    model is converted here on first use, with ``Progress`` events to ``sink``.)

    Returns what it resolved and loaded of the model, which ``run`` hands on to the set-up instead of loading
    it again. ``compute``: the run's device and precision when already resolved (else resolved here)."""
    from ..data import detect
    from ..models import check_weight_files, resolve_source

    config = init_adapter.with_adapter_settings(config)  # a contradicting [lora] is refused before anything loads
    mc = config.model
    compute = compute or precision.resolve_compute(config)  # fp16 on a CPU, bf16 on an old GPU: refused here
    source = resolve_source(mc.source, mc.revision, allow_pickle=mc.allow_pickle, download="config", sink=as_sink(sink))
    # A GGUF file's source is its conversion in the cache (made by resolve_source): a model folder like any other.
    hf_config = setup.load_base_config(config, source)
    files = setup.ModelFiles(source, hf_config, selection=setup.planned_selection(config, hf_config))
    if source.kind == "local":  # a Hub model's weights may not be downloaded yet; a local one's must all be there
        # headers and sizes only; the config read above is the one it would read, except for a model with its
        # own code (which it leaves to the training) or a classification head (which changes the shapes)
        plain = not mc.trust_remote_code and mc.task == "causal-lm"
        check_weight_files(source, hf_config if plain else None)
    if source.kind != "hub":  # a Hub model's tokenizer files come with its download, at the set-up
        files = replace(files, tokenizer=setup.load_processing(config, source))  # an image model: its processor
    quantization.check_run(config, files.hf_config, compute.device)  # #17: quantized bases, LoRA inits
    lora_init.check_run(config, compute.device)
    if mc.task in ("sequence-classification", "image-classification"):  # texts or images with a usable label set
        setup.label_set(config)
    elif config.training.method != "sft":  # trl installed, and rows with the method's roles
        preference.require_trl(config.training.method)
        preference.prepare_preference(config.data, config.training.method, seed=config.training.seed)
    else:
        detect(config.data)
    check_trackers(config.output.trackers)  # a missing tracker package: its pip command, before anything starts
    return files


def resume(run_dir: str | Path, sink: SinkLike = None, control: Control | None = None) -> TrainResult:
    """Continue a stopped, failed or crashed run from its newest complete checkpoint.

    Optimizer, scheduler, RNG state, data position and step counter continue where the checkpoint left
    them; the loss curve continues in the same ``metrics.jsonl``. The run's resume lock is held from the
    checks to the end of the training, so a second resume of the same run is refused at once.
    """
    if not (Path(run_dir) / RUN_FILE).is_file():
        raise TrainingError(f"{run_dir} is not a run folder (no {RUN_FILE})", "pick a folder listed by `workbench runs`")
    compute = precision.resolve_compute(load_run_config(run_dir))  # once per run, as in run()
    dist = Distributed.setup(compute.device)

    held: list = []  # rank 0's ResumePoint: it holds the run's resume lock until the training ends

    def prepare() -> _ResumeInfo:  # raises for running / finished runs and runs without a complete checkpoint
        point = prepare_resume(run_dir)
        held.append(point)
        return _ResumeInfo(point.folder.path, point.config, point.checkpoint.path, point.step, point.describe(),
                           point.at_target)

    try:
        info = dist.on_main(prepare)
        return _train(info.run_dir, info.config, as_sink(sink), control or RunControl(), info, dist, compute)
    finally:
        for point in held:
            point.release()
        dist.close()


@dataclass(frozen=True)
class _ResumeInfo:
    run_dir: Path
    config: RunConfig
    checkpoint: Path
    step: int
    description: str
    at_target: bool = False  # the checkpoint holds the last step: finish from it, train nothing (see resume)


def _train(run_dir: Path, config: RunConfig, user_sink: Sink, control: Control, resume_point: "_ResumeInfo | None",
           dist: Distributed, compute: Compute, files: setup.ModelFiles | None = None) -> TrainResult:
    # Only rank 0 writes the run folder; the other ranks train silently.
    recorder = dist.on_main(lambda: RunRecorder(run_dir, control=control), share_result=False)
    with recorder if recorder is not None else nullcontext(NullSink()) as record_sink:
        trackers = tracker_sinks(config.output.trackers, run_dir) if dist.is_main else []
        sinks = MultiSink([record_sink, user_sink, *trackers])
        sink = _StampWorldSize(sinks, dist.world_size) if dist.is_main else NullSink()
        if resume_point is not None:
            sink.emit(Message(resume_point.description))
        try:
            if resume_point is not None and resume_point.at_target:
                return _finish_from_checkpoint(run_dir, sink, resume_point, dist)
            return _train_attempts(run_dir, config, sink, control, resume_point, dist, compute, files)
        except WorkbenchError as exc:
            sink.emit(Failed(reason=exc.message, hint=exc.hint))
            raise
        except Exception as exc:
            reason, hint = faults.explain_failure(exc)
            sink.emit(Failed(reason=reason, hint=hint, traceback=traceback.format_exc()))
            raise


class _StampWorldSize:
    """Every event of a run carries the number of processes that train it."""

    def __init__(self, sink: Sink, world_size: int):
        self.sink, self.world_size = sink, world_size

    def emit(self, event: Any) -> None:
        self.sink.emit(event if event.world_size == self.world_size else replace(event, world_size=self.world_size))


def _train_attempts(run_dir: Path, config: RunConfig, sink: Sink, control: Control, resume_point: "_ResumeInfo | None",
                    dist: Distributed, compute: Compute, files: setup.ModelFiles | None) -> TrainResult:
    """``_train_inner``, tried again with a smaller micro-batch after a step ran out of memory, if allowed.

    Each retry halves ``batch_size`` and doubles ``gradient_accumulation`` (the effective batch, and with it
    the optimisation, stays the same), records that in run.toml so a later resume trains the same way, and
    continues from the newest complete checkpoint, or from the start, in the same run folder. (The Trainer's
    own ``auto_find_batch_size`` halves the batch without touching the accumulation, and always restarts.)
    """
    while True:
        faults.reset_peak_memory()
        try:
            return _train_inner(run_dir, config, sink, control, resume_point, dist, compute, files)
        except faults.OutOfMemory as exc:
            step, detail = exc.step, exc.detail
        # Out of the except block, the traceback that held the trainer, the model and the step's activations
        # is gone: only now can their memory be given back.
        faults.free_device_memory()
        # The next attempt keeps the resolved source and the tokenizer; the config object went into the model
        # that failed (and was changed there), so it is read afresh.
        files = None if files is None else replace(files, hf_config=None)
        t = config.training
        retry = faults.smaller_batch(t)
        # Under torchrun the other processes are blocked in a collective and cannot follow a retry.
        if not t.oom_retry or retry is None or dist.world_size > 1:
            raise faults.oom_error(config, run_dir, step, detail, retry, dist.world_size)
        smaller, accumulation = retry
        config = load_run_config(run_dir).copy_with(training={"batch_size": smaller, "gradient_accumulation": accumulation})
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


def _train_inner(run_dir: Path, config: RunConfig, sink: Sink, control: Control, resume_point: "_ResumeInfo | None",
                 dist: Distributed, compute: Compute, files: setup.ModelFiles | None) -> TrainResult:
    import torch
    from transformers import PrinterCallback, set_seed

    from ..data import make_collator, prepare
    from .callback import CallbackContext, EventCallback  # these two import transformers' Trainer: only now
    from .trainer import AtomicCheckpointTrainer

    at = resume_point.step if resume_point else 0
    _stop_if_requested(control, "starting", at)
    set_seed(config.training.seed)
    # A classification run reads its label set first: it decides the shape of the head the model is built with.
    labels = setup.label_set(config)
    peft_model, tokenizer, tree, selection = setup.setup_model(config, compute, sink, files, labels)
    _stop_if_requested(control, "loading the model", at)
    data: Any
    if labels is not None and config.model.task == "image-classification":
        data = images.prepare_images(config.model, config.data, tokenizer, labels, seed=config.training.seed,
                                     num_channels=getattr(peft_model.config, "num_channels", 3))
    elif labels is not None:
        data = classification.prepare_classification(config.model, config.data, tokenizer, labels,
                                                     seed=config.training.seed)
    elif config.training.method != "sft":  # TRL tokenizes the pairs itself
        preference.require_trl(config.training.method)
        data = preference.prepare_preference(config.data, config.training.method, seed=config.training.seed)
    else:
        # rank 0 tokenises into the datasets cache, the others then read it
        data = dist.main_first(lambda: prepare(config.data, tokenizer, seed=config.training.seed, sink=sink,
                                               model_type=tree.model_type))
    if labels is not None:
        for line in classification.data_messages(data):
            sink.emit(Message(line))
    _stop_if_requested(control, "preparing the data", at)
    if len(data.train) == 0:
        raise TrainingError("the training data has no usable rows", "check data.train_files and the column mapping")

    resolved = setup.with_selection(config, selection)
    if labels is not None:  # and the classes in id order, so a resume or a re-run builds the same head
        resolved = resolved.copy_with(model=classification.resolved_model_fields(labels),
                                      lora={"modules_to_save": [m for m in selection.modules_to_save
                                                                if not set(m.split(".")) & set(classification.HEAD_MODULES)]})
    # run.toml is written once, by create_run, with the selection already resolved on the meta skeleton
    # (preflight). Only when that could not be done (a GGUF source, a skeleton that did not build) or came
    # out otherwise does the loaded model's selection replace it here.
    if resume_point is None and dist.is_main and (resolved.lora != config.lora or resolved.model != config.model):
        resolved.save(run_dir / RUN_FILE)
    collator: Any
    if config.training.method != "sft":
        collator = None  # TRL's own collator for its tokenized pairs
    elif config.model.task == "image-classification":
        collator = images.make_image_collator()
    elif labels is not None:
        collator = classification.make_classification_collator(tokenizer)
    else:
        collator = make_collator(tokenizer, packing=data.packed, model_type=tree.model_type)
    if config.lora.init == "eva" and resume_point is None:  # a resumed run loads its trained A and B instead
        lora_init.run_eva(peft_model, data.train, collator, config.training.batch_size, sink, config.training.seed)
    if dist.is_main:
        lora_init.save_initial(peft_model, run_dir, config.lora.init)  # PiSSA/OLoRA: for the conversion at the end

    args = setup.training_arguments(config, run_dir, compute, data.validation is not None and len(data.validation) > 0, dist)
    # The runs of a sweep share one step-0 evaluation of the same base (core/base_eval.py).
    slot = base_eval.reuse_slot(resolved, run_dir, compute, peft_model.get_base_model().config.name_or_path,
                                world_size=dist.world_size, resumed=resume_point is not None) \
        if args.eval_on_start else None
    reused = base_eval.load(slot) if slot is not None else None
    if reused is not None:
        args.eval_on_start = False  # the callback replays it
    callback = EventCallback(CallbackContext(
        config=config, resolved=resolved, sink=sink, control=control, dist=dist, tokenizer=tokenizer, compute=compute,
        run_dir=run_dir, trainable=peft_model.get_nb_trainable_parameters()[0],
        total=tree.total_params, train_examples=len(data.train), validation_examples=len(data.validation or []),
        resumed_from=resume_point.step if resume_point else 0, base_eval_slot=slot, base_eval=reused))
    if config.eval.scorers and dist.is_main and args.eval_strategy != "no":
        callback.eval_refs = setup.task_references(config, tokenizer, sink)
    if config.eval.retention and dist.is_main:
        callback.retention = setup.retention_probe(config, peft_model, tokenizer, sink, args.eval_strategy != "no")
    metrics = classification.ClassificationMetrics(labels) if labels is not None else None
    trainer_cls: Any = AtomicCheckpointTrainer
    if config.training.method != "sft":
        # The PEFT model and no ref_model: TRL scores the reference with a frozen copy of the starting adapter (the
        # base for a fresh adapter, the SFT model for model.init_adapter; core/init_adapter.py), no second model.
        trainer_cls = preference.trainer_class(config.training.method, AtomicCheckpointTrainer)
        args = preference.trainer_arguments(config.training.method, args, config.training.beta, config.data.max_length)
    trainer = trainer_cls(
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
    trainer.label_set = labels  # into every checkpoint: a run finished from its last checkpoint keeps its classes
    oom = None
    try:
        trainer.train(resume_from_checkpoint=str(resume_point.checkpoint) if resume_point else None)
    except Exception as exc:
        if not faults.is_out_of_memory(exc):
            full = faults.checkpoint_disk_full(exc, run_dir, trainer.state.global_step, faults.trainable_bytes(peft_model))
            full = full or faults.write_refused(exc, run_dir, f"checkpoint-{trainer.state.global_step}")
            if full is None:
                raise
            raise full from exc
        oom = first_line(exc)
    if oom is not None:
        # Raised outside the except block: a chained traceback would keep the failed step's tensors alive.
        raise faults.OutOfMemory(oom, trainer.state.global_step + 1)

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
            save_adapter(peft_model, run_dir, labels, **lora_init.conversion_source(run_dir, config.lora.init))
        except Exception as exc:
            full = faults.adapter_disk_full(exc, run_dir, step, faults.trainable_bytes(peft_model))
            full = full or faults.write_refused(exc, run_dir, f"the adapter of step {step}")
            if full is None:
                raise
            raise full from exc
    summary = {
        "steps": step,
        "train_loss": callback.last_loss,
        "best_eval_loss": callback.best_eval_loss,
        "tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
        "train_seconds": round(time.time() - callback.started, 2),
        "trainable_params": callback.ctx.trainable,
    }
    status = "stopped" if stopped else "finished"
    if dist.is_main:  # README.md beside the adapter: settings, data, curves, how to load it
        write_model_card(adapter_dir, kind="adapter", adapter=adapter_dir, sink=sink)
    sink.emit(Finished(status=status, adapter_path=str(adapter_dir), step=step, summary=summary))
    del trainer
    if compute.device == "cuda":
        torch.cuda.empty_cache()
    return TrainResult(run_dir, adapter_dir, status, step, summary)


def _stop_if_requested(control: Control, phase: str, resumed_at: int = 0) -> None:
    """A stop pressed while the model loads or the data is tokenised ends the run there, not a step later.
    A resumed run has trained steps before: it is still at its checkpoint, and says so."""
    if not control.stop_requested:
        return
    if resumed_at:
        raise TrainingError(f"stopped while {phase}, before the resumed run trained its next step",
                            f"no step was trained in this session; the run is still at step {resumed_at} "
                            "(its checkpoint is unchanged), and `workbench resume` continues it from there")
    raise TrainingError(f"stopped while {phase}, before the first training step", "nothing was trained")


def _finish_from_checkpoint(run_dir: Path, sink: Sink, point: "_ResumeInfo", dist: Distributed) -> TrainResult:
    """Finish a run whose checkpoint holds its last step (it was killed while its final adapter was written):
    the final adapter is the checkpoint's adapter, copied into ``adapter/`` aside and renamed into place, and
    the run is marked finished. No model is loaded and no step is trained: training on from the last step
    would go past the run's target (the Trainer trains one more step when resumed at ``max_steps``)."""
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

    with atomic_directory(final, overwrite=True) as tmp:
        for name in _ADAPTER_FILES:
            if (checkpoint / name).is_file():
                shutil.copyfile(checkpoint / name, tmp / name)


def save_adapter(peft_model: Any, run_dir: Path, labels: Any = None, **save_kwargs: Any) -> Path:
    """PEFT format (adapter_config.json + adapter_model.safetensors), written aside and renamed into place.
    ``save_kwargs``: PEFT's conversion of PiSSA/OLoRA adapters to a plain LoRA on the original base.
    ``labels``: a classification run's label set, saved beside the adapter as labels.json."""
    final = run_dir / "adapter"
    with atomic_directory(final, overwrite=True) as tmp:
        if "ref" in getattr(peft_model, "peft_config", {}):
            # TRL's frozen reference copy (preference training, core/init_adapter.py): not part of the result, which
            # PEFT would otherwise save into adapter/ref/
            save_kwargs = {**save_kwargs, "selected_adapters": ["default"]}
        peft_model.save_pretrained(str(tmp), safe_serialization=True, **save_kwargs)
        if labels is not None:
            classification.write_label_file(tmp, labels)
    return final

