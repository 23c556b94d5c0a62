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
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from contextlib import nullcontext

from .config import RunConfig
from .control import RunControl
from .distributed import Distributed
from .errors import TrainingError, WorkbenchError
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


def run(config: RunConfig, sink: Any = None, control: RunControl | None = None, *, run_dir: str | Path | None = None) -> TrainResult:
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


def preflight(config: RunConfig, sink: Any = None) -> None:
    """The checks that take a second or less: the model source resolves and is safe, the data files are
    readable and of a known format. Raises the same ``WorkbenchError`` training itself would. (A built-in
    model is converted here on first use, with ``Progress`` events to ``sink``.)"""
    from .data import detect
    from .models import load_config, resolve_source

    mc = config.model
    source = resolve_source(mc.source, mc.revision, allow_pickle=mc.allow_pickle, download="config", sink=as_sink(sink))
    if source.kind != "gguf":  # reading a GGUF's metadata takes seconds; training reports its problems soon enough
        load_config(source, trust_remote_code=mc.trust_remote_code)
    detect(config.data)


def resume(run_dir: str | Path, sink: Any = None, control: RunControl | None = None) -> TrainResult:
    """Continue a stopped, failed or crashed run from its newest complete checkpoint.

    Optimizer, scheduler, RNG state, data position and step counter continue where the checkpoint left
    them; the loss curve continues in the same ``metrics.jsonl``.
    """
    from .runs import RUN_FILE, load_config, prepare_resume

    if not (Path(run_dir) / RUN_FILE).is_file():
        raise TrainingError(f"{run_dir} is not a run folder (no {RUN_FILE})", "pick a folder listed by `workbench runs`")
    dist = Distributed.setup(choose_device(load_config(run_dir).training.device))

    def prepare() -> _ResumeInfo:  # raises for running / finished runs and runs without a complete checkpoint
        point = prepare_resume(run_dir)
        return _ResumeInfo(point.folder.path, point.config, point.checkpoint.path, point.step, point.describe())

    point = dist.on_main(prepare)
    return _train(point.run_dir, point.config, as_sink(sink), control or RunControl(), point, dist)


@dataclass(frozen=True)
class _ResumeInfo:
    run_dir: Path
    config: RunConfig
    checkpoint: Path
    step: int
    description: str


def _train(run_dir: Path, config: RunConfig, user_sink: Any, control: RunControl, resume_point: "_ResumeInfo | None",
           dist: Distributed) -> TrainResult:
    from .runs import RunRecorder

    # Only rank 0 writes the run folder; the other ranks train silently.
    recorder = dist.on_main(lambda: RunRecorder(run_dir, control=control), share_result=False)
    with recorder if dist.is_main else nullcontext(NullSink()) as record_sink:
        sink = _StampWorldSize(MultiSink([record_sink, user_sink]), dist.world_size) if dist.is_main else NullSink()
        if resume_point is not None:
            sink.emit(Message(resume_point.description))
        try:
            return _train_inner(run_dir, config, sink, control, resume_point, dist)
        except WorkbenchError as exc:
            sink.emit(Failed(reason=exc.message, hint=exc.hint))
            raise
        except Exception as exc:
            reason, hint = _explain_failure(exc)
            sink.emit(Failed(reason=reason, hint=hint, traceback=traceback.format_exc()))
            raise


class _StampWorldSize:
    """Every event of a run carries the number of processes that train it."""

    def __init__(self, sink: Any, world_size: int):
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


def _setup_model(config: RunConfig, device: str, precision: str, sink: Any):
    """Base model + tokenizer + PEFT wrapper. Returns (peft_model, tokenizer, tree, selection, resolved lora)."""
    from peft import get_peft_model

    from .layers import build_tree, lora_config_from_selection, resolve_selection
    from .models import load_config, load_model, load_tokenizer, resolve_source

    mc = config.model
    source = resolve_source(mc.source, mc.revision, allow_pickle=mc.allow_pickle, download="all")
    hf_config = load_config(source, trust_remote_code=mc.trust_remote_code,
                            num_labels=mc.num_labels if mc.task == "sequence-classification" else None)
    tokenizer = load_tokenizer(source, trust_remote_code=mc.trust_remote_code)
    if mc.task == "sequence-classification" and getattr(hf_config, "pad_token_id", None) is None:
        hf_config.pad_token_id = tokenizer.pad_token_id
    model = load_model(source, hf_config, task=mc.task, dtype=_weight_dtype(config, precision, device),
                       trust_remote_code=mc.trust_remote_code)
    # No KV cache while training: it is useless there, and transformers only derives the per-example masks
    # of packed rows (from restarting position_ids) when no cache is being built.
    model.config.use_cache = False
    tree = build_tree(model)
    selection = resolve_selection(tree, config.lora, mc.task)
    for warning in selection.warnings:
        sink.emit(Message(warning, level="warning"))
    if config.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
    peft_model = get_peft_model(model, lora_config_from_selection(selection, config.lora, mc.task))
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
        max_grad_norm=t.max_grad_norm if t.max_grad_norm > 0 else None,
        optim=t.optimizer,
        seed=t.seed,
        data_seed=t.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        logging_steps=t.logging_steps,
        logging_first_step=True,
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
    )


# ------------------------------------------------------------------------------------------- training


def _train_inner(run_dir: Path, config: RunConfig, sink: Any, control: RunControl, resume_point: "_ResumeInfo | None",
                 dist: Distributed) -> TrainResult:
    import torch
    from transformers import PrinterCallback, Trainer, set_seed

    from .data import make_collator, prepare

    device = choose_device(config.training.device)
    precision = choose_precision(config.training.precision, device)
    _stop_if_requested(control, "starting")
    set_seed(config.training.seed)
    peft_model, tokenizer, tree, selection = _setup_model(config, device, precision, sink)
    _stop_if_requested(control, "loading the model")
    # rank 0 tokenises into the datasets cache, the others then read it
    data = dist.main_first(lambda: prepare(config.data, tokenizer, seed=config.training.seed, sink=sink,
                                           model_type=tree.model_type))
    _stop_if_requested(control, "preparing the data")
    if len(data.train) == 0:
        raise TrainingError("the training data has no usable rows", "check data.train_files and the column mapping")

    # run.toml keeps the exact modules the selection resolved to, so a re-run builds the same adapter
    # even if a later version changes what a preset means.
    resolved = config.copy_with(lora={"target_modules": selection.targets, "rank_pattern": selection.rank_overrides,
                                      "alpha_pattern": selection.alpha_overrides})
    if resume_point is None and dist.is_main:
        resolved.save(run_dir / "run.toml")

    args = _training_arguments(config, run_dir, device, precision, data.validation is not None and len(data.validation) > 0, dist)
    callback = _event_callback(config, sink, control, dist, tokenizer, device, precision, run_dir,
                              trainable=peft_model.get_nb_trainable_parameters()[0], total=tree.total_params,
                              train_examples=len(data.train), validation_examples=len(data.validation or []),
                              resumed_from=resume_point.step if resume_point else 0, resolved=resolved)
    trainer = Trainer(
        model=peft_model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation if args.eval_strategy != "no" else None,
        data_collator=make_collator(tokenizer, packing=data.packed, model_type=tree.model_type),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # our events replace its prints to stdout
    trainer.train(resume_from_checkpoint=str(resume_point.checkpoint) if resume_point else None)

    if callback.failure is not None:
        raise callback.failure
    step = trainer.state.global_step
    stopped = callback.stopped and step < trainer.state.max_steps
    adapter_dir = _save_adapter(peft_model, run_dir) if dist.is_main else run_dir / "adapter"
    summary = {
        "steps": step,
        "train_loss": callback.last_loss,
        "best_eval_loss": callback.best_eval_loss,
        "tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
        "train_seconds": round(time.time() - callback.started, 2),
        "trainable_params": callback.trainable,
    }
    status = "stopped" if stopped else "finished"
    sink.emit(Finished(status=status, adapter_path=str(adapter_dir), step=step, summary=summary))
    del trainer
    if device == "cuda":
        torch.cuda.empty_cache()
    return TrainResult(run_dir, adapter_dir, status, step, summary)


def _stop_if_requested(control: RunControl, phase: str) -> None:
    """A stop pressed while the model loads or the data is tokenised ends the run there, not a step later."""
    if control.stop_requested:
        raise TrainingError(f"stopped while {phase}, before the first training step", "nothing was trained")


def _save_adapter(peft_model: Any, run_dir: Path) -> Path:
    """PEFT format (adapter_config.json + adapter_model.safetensors), written aside and renamed into place."""
    from .fsutil import atomic_directory

    final = run_dir / "adapter"
    with atomic_directory(final, overwrite=True) as tmp:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
    return final


def _explain_failure(exc: BaseException) -> tuple[str, str]:
    text = str(exc).split("\n")[0]
    if "out of memory" in text.lower():
        return (f"out of memory: {text}",
                "lower training.batch_size (and raise gradient_accumulation to keep the effective batch), "
                "shorten data.max_length, or turn on training.gradient_checkpointing")
    return f"{type(exc).__name__}: {text}", ""


def _device_memory(device: str) -> int | None:
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
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


def _make_callback_class():
    """Defined inside a function so that importing this module does not import transformers."""
    from transformers import TrainerCallback

    class EventCallback(TrainerCallback):
        """Turns the Trainer's life into events, and applies stop / pause / checkpoint requests between steps."""

        def __init__(self, config: RunConfig, sink: Any, control: RunControl, dist: Distributed, tokenizer: Any, device: str, precision: str,
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
            self._last_log_time = self.started
            self._last_tokens = 0
            self._first_step_of_session: int | None = None

        # -- lifecycle ---------------------------------------------------------------------------------
        def on_train_begin(self, args, state, control, model=None, **kw):
            world = self.dist.world_size
            self._last_tokens = int(state.num_input_tokens_seen or 0)
            self.sink.emit(RunStarted(
                run_dir=str(self.run_dir), config=self.resolved.to_dict(), device=self.device,
                device_name=_device_name(self.device), precision=self.precision, trainable_params=self.trainable,
                total_params=self.total, total_steps=int(state.max_steps), world_size=world,
                global_batch=args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
                resumed_from_step=self.resumed_from, train_examples=self.train_examples,
                validation_examples=self.validation_examples,
            ))
            if self.resumed_from == 0 and self._sampling():
                self._samples(model, state.global_step)  # "before" samples to compare against

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
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
                eta = elapsed / done * (state.max_steps - state.global_step) if done > 0 else None
                self.last_loss = loss
                self.sink.emit(Step(
                    step=state.global_step, total_steps=int(state.max_steps), epoch=float(state.epoch or 0.0),
                    loss=loss, learning_rate=float(logs.get("learning_rate", 0.0)),
                    grad_norm=_finite_or_none(logs.get("grad_norm")), tokens_per_second=tps, tokens_seen=tokens,
                    memory_bytes=_device_memory(self.device), elapsed_s=round(elapsed, 3), eta_s=eta,
                    world_size=self.dist.world_size,
                ))
                if not math.isfinite(loss):
                    self.failure = TrainingError(
                        f"the loss became {loss} at step {state.global_step}",
                        "lower training.learning_rate, or use bf16/fp32 precision instead of fp16",
                    )
                    control.should_training_stop = True
            return self._apply_requests(state, control)

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            metrics = metrics or {}
            if "eval_loss" in metrics:
                loss = float(metrics["eval_loss"])
                if math.isfinite(loss) and (self.best_eval_loss is None or loss < self.best_eval_loss):
                    self.best_eval_loss = loss
                extra = {k: float(v) for k, v in metrics.items() if k != "eval_loss" and isinstance(v, (int, float))}
                self.sink.emit(Evaluation(step=state.global_step, eval_loss=loss, metrics=extra))

        def on_save(self, args, state, control, **kw):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.sink.emit(CheckpointSaved(step=state.global_step, path=str(path)))

        # -- control between steps ---------------------------------------------------------------------
        # Requests are applied once per step, after the step's Step event when the step is logged (on_log
        # follows on_step_end within the same step), so the event order reads step → paused → resumed →
        # next step, and a stop asked for in reaction to a Step event takes effect at once. The Trainer then
        # saves the requested checkpoint before it leaves the loop.
        def on_step_end(self, args, state, control, model=None, **kw):
            if self._sampling() and state.global_step % self.config.training.sample_steps == 0:
                self._samples(model, state.global_step)
            if control.should_log:  # set by DefaultFlowCallback, which runs first: on_log will apply them
                return control
            return self._apply_requests(state, control)

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

            if model is None:
                return
            was_training = model.training
            model.eval()
            try:
                for prompt in self.config.training.sample_prompts:
                    text = _render_prompt(self.tokenizer, prompt)
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


def _render_prompt(tokenizer: Any, prompt: str) -> str:
    """Sample prompts are user turns: rendered with the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return prompt


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None
