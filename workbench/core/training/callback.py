"""The Trainer callback that turns a run's life into events and applies stop / pause / checkpoint requests between
steps. Imports transformers: the engine imports it only when a run starts, like ``trainer``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..config import LOWER_IS_BETTER, RunConfig
from ..control import Control
from ..distributed import Distributed
from ..errors import WorkbenchError
from ..precision import Compute
from ..events import CheckpointSaved, Evaluation, Message, Paused, Resumed, RunStarted, Sample, Sink, Step
from .faults import abandon, divergence_error


@dataclass(frozen=True)
class CallbackContext:
    """What the callback needs to know about the run it reports on, fixed before the Trainer starts."""

    config: RunConfig  # as trained (after any out-of-memory retry)
    resolved: RunConfig  # config with the selection resolved to exact modules: the one RunStarted carries
    sink: Sink
    control: Control
    dist: Distributed
    tokenizer: Any
    compute: Compute  # device and number formats
    run_dir: Path
    trainable: int  # trainable parameters (the adapter)
    total: int  # parameters of the base model
    train_examples: int
    validation_examples: int
    resumed_from: int  # the checkpoint's step, 0 for a new run
    # core/base_eval.py: where this run's step-0 evaluation is shared with the other runs of its sweep (None: not
    # shared), and the one it replays instead of evaluating (the Trainer's eval_on_start is then off)
    base_eval_slot: Path | None = None
    base_eval: Any = None


def _device_memory(device: str) -> int | None:
    """The attempt's peak memory so far (``faults.reset_peak_memory``). On a GPU what PyTorch's allocator held from the
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


class EventCallback(TrainerCallback):
    """Turns the Trainer's life into events, and applies stop / pause / checkpoint requests between steps."""

    def __init__(self, context: CallbackContext):
        self.ctx = context
        self.started = time.time()
        self.last_loss: float | None = None
        self.best_eval_loss: float | None = None
        self.failure: WorkbenchError | None = None
        self.stopped = False  # a stop request was acted on (every rank agrees)
        self._diverged_at: int | None = None  # the step whose loss, gradients or weights became NaN / inf
        self._trainable_params: list | None = None
        self._last_log_time = self.started
        self._rng_before_eval: Any = None  # the random state before the step-0 evaluation: restored after it
        self._last_tokens = 0
        self._trained_tokens = 0  # in this session (a resumed run counts again from its checkpoint)
        self._first_step_of_session: int | None = None
        self.eval_refs: list = []  # (prompt, answer) pairs for the task metrics (core/evaluation.py)
        self.retention: Any = None  # core/retention.RetentionProbe when eval.retention is on
        self._retention_warned = False
        self._eval_seconds = 0.0  # spent evaluating: left out of tokens/s and the ETA
        self._best_task_value: float | None = None
        self._evals_without_gain = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kw):
        world = self.ctx.dist.world_size
        self._last_tokens = int(state.num_input_tokens_seen or 0)
        self.ctx.sink.emit(RunStarted(
            run_dir=str(self.ctx.run_dir), config=self.ctx.resolved.to_dict(), device=self.ctx.compute.device,
            device_name=_device_name(self.ctx.compute.device), precision=self.ctx.compute.precision, trainable_params=self.ctx.trainable,
            total_params=self.ctx.total, total_steps=int(state.max_steps),  # world_size: stamped by the sink
            global_batch=args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
            resumed_from_step=self.ctx.resumed_from, train_examples=self.ctx.train_examples,
            validation_examples=self.ctx.validation_examples,
        ))
        if self.ctx.resumed_from == 0 and self._sampling():
            self._samples(model, state.global_step)  # "before" samples to compare against
        if state.global_step == 0 and self.ctx.base_eval is not None:
            self._replay_base_evaluation(state, control, self.ctx.base_eval)
        elif state.global_step == 0 and args.eval_on_start:
            # Evaluating draws from the random generators (each DataLoader iterator takes a seed from torch's), and a
            # run that replays its step-0 evaluation does not evaluate: both continue from the state before it, so a
            # sweep's run trains exactly as the same run started alone.
            from ..base_eval import rng_states

            self._rng_before_eval = rng_states()

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
            trained, examples = int(logs.get("trained_tokens", 0)), int(logs.get("trained_examples", 0))
            self._trained_tokens += trained
            self._last_log_time, self._last_tokens = now, tokens
            if self._first_step_of_session is None:
                self._first_step_of_session = state.global_step - 1
            done = state.global_step - self._first_step_of_session
            elapsed = now - self.started
            training_time = elapsed - self._eval_seconds
            eta = training_time / done * (state.max_steps - state.global_step) if done > 0 else None
            self.last_loss = loss
            self.ctx.sink.emit(Step(
                step=state.global_step, total_steps=int(state.max_steps), epoch=float(state.epoch or 0.0),
                loss=loss, learning_rate=float(logs.get("learning_rate", 0.0)),
                grad_norm=_finite_or_none(logs.get("grad_norm")), tokens_per_second=tps, tokens_seen=tokens,
                memory_bytes=_device_memory(self.ctx.compute.device), elapsed_s=round(elapsed, 3), eta_s=eta,
                trained_tokens_per_second=trained / dt if trained else None,
                examples_per_second=examples / dt if examples else None, trained_tokens_seen=self._trained_tokens,
                metrics=_method_metrics(logs),
            ))
            self._check_divergence(state.global_step, loss, _float_or_none(logs.get("grad_norm")))
        if self.failure is not None:
            return abandon(control)
        return self._apply_requests(state, control)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        metrics = metrics or {}
        if "eval_loss" in metrics:
            loss = float(metrics["eval_loss"])
            as_logged = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            extra = {k: float(v) for k, v in metrics.items() if k != "eval_loss" and isinstance(v, (int, float))}
            spent = float(metrics.get("eval_runtime") or 0.0)
            if self.ctx.config.eval.scorers and self.ctx.dist.is_main:
                from ..evaluation import score_task

                scores = score_task(kw.get("model"), self.ctx.tokenizer, self.eval_refs, self.ctx.config.eval, loss)
                extra.update(scores.metrics)
                # The Trainer picks the best checkpoint from this same dict (eval.best_metric).
                metrics.update({f"eval_{k}": v for k, v in scores.metrics.items()})
                spent += scores.seconds
            if self.retention is not None and kw.get("model") is not None:
                started = time.monotonic()
                extra.update(self.retention.measure(kw["model"]))
                spent += time.monotonic() - started
            self._eval_seconds += spent
            self._last_log_time += spent  # the next step's tokens/s counts training time only
            self._evaluated(state, control, loss, extra)
            if state.global_step == 0 and self._rng_before_eval is not None:
                from ..base_eval import BaseEvaluation, restore_rng, save

                restore_rng(self._rng_before_eval)
                self._rng_before_eval = None
                if self.ctx.base_eval_slot is not None:
                    try:
                        save(self.ctx.base_eval_slot, BaseEvaluation(loss, as_logged, extra, self.ctx.run_dir.name))
                    except OSError as exc:  # a saving for the sweep's other runs, never a reason for this one to fail
                        self.ctx.sink.emit(Message(
                            f"could not keep the base model's evaluation for the other runs of this sweep "
                            f"({exc.strerror or exc.__class__.__name__}: {self.ctx.base_eval_slot.parent}); "
                            "they will evaluate it themselves", level="warning"))

    def _evaluated(self, state, control, loss: float, extra: dict[str, float]) -> None:
        if math.isfinite(loss) and (self.best_eval_loss is None or loss < self.best_eval_loss):
            self.best_eval_loss = loss
        if self.retention is not None:
            self._warn_about_retention(state.global_step, extra)
        self.ctx.sink.emit(Evaluation(step=state.global_step, eval_loss=loss, metrics=extra))
        self._early_stopping(state, control, loss, extra)

    def _replay_base_evaluation(self, state, control, base: Any) -> None:
        """The step-0 evaluation another run of the sweep made of the same base model (core/base_eval.py): the same
        entry in the Trainer's log history and the same events as evaluating again would give."""
        entry = dict(base.trainer_metrics)
        if state.epoch is not None:
            entry["epoch"] = state.epoch
        state.log_history.append({**entry, "step": state.global_step})
        self.ctx.sink.emit(Message(f"step 0: the base model's evaluation is {base.from_run}'s (the same base, "
                                   "evaluation rows, scorers and settings in this sweep), not computed again"))
        self._evaluated(state, control, base.eval_loss, dict(base.event_metrics))

    def _warn_about_retention(self, step: int, extra: dict[str, float]) -> None:
        floor = self.ctx.config.eval.retention_warn_below
        agreement, ratio = extra.get("retention_agreement", math.nan), extra.get("retention_ppl_ratio", 1.0)
        if self._retention_warned or not (agreement < floor or ratio > 1 / floor):
            return
        self._retention_warned = True
        self.ctx.sink.emit(Message(
            f"retention at step {step}: the model agrees with the base model's own answers on {agreement:.0%} of "
            f"their tokens and its perplexity on general text is {ratio:.2f}× the base's — it is forgetting what "
            "it knew. Mitigations: fewer target modules or a lower rank (`workbench sweep` shows the trade-off), "
            "general data mixed into data.train_files, or stopping earlier (eval.early_stopping_patience).",
            level="warning"))

    def _early_stopping(self, state, control, loss: float, extra: dict[str, float]) -> None:
        patience = self.ctx.config.eval.early_stopping_patience
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
            name = self.ctx.config.eval.best_metric
            self.ctx.sink.emit(Message(f"early stopping at step {state.global_step}: {name} has not improved for "
                                   f"{patience} evaluation(s)"))
            control.should_training_stop = True

    def _metric_value(self, loss: float, extra: dict[str, float]) -> float | None:
        """eval.best_metric, signed so that higher is better."""
        name = self.ctx.config.eval.best_metric
        # a scorer's value is named as the scorer; a classifier's metric as the Trainer logs it (eval_accuracy)
        value = loss if name == "eval_loss" else extra.get(name, extra.get(f"eval_{name}"))
        if value is None or not math.isfinite(value):
            return None
        return -value if name in LOWER_IS_BETTER else value

    def on_save(self, args, state, control, **kw):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.ctx.sink.emit(CheckpointSaved(step=state.global_step, path=str(path)))

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
            self.failure = divergence_error(self.ctx.config, self.ctx.compute.precision, self.ctx.run_dir, state.global_step, None, None)
            control.should_log = True
        if self.failure is not None:
            return abandon(control)
        if self._sampling() and state.global_step % self.ctx.config.training.sample_steps == 0:
            self._samples(model, state.global_step)
        if control.should_log:  # set by DefaultFlowCallback, which runs first: on_log will apply them
            return control
        return self._apply_requests(state, control)

    def on_epoch_end(self, args, state, control, **kw):
        return abandon(control) if self.failure is not None else control

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
        bad_grad = grad_norm is not None and not math.isfinite(grad_norm) and self.ctx.compute.precision != "fp16"
        if step == self._diverged_at or not math.isfinite(loss) or bad_grad:
            self._diverged_at = step
            self.failure = divergence_error(self.ctx.config, self.ctx.compute.precision, self.ctx.run_dir, step, loss, grad_norm)

    def _apply_requests(self, state, control):
        rc, dist = self.ctx.control, self.ctx.dist
        req = dist.requests(rc)  # one snapshot, agreed by every rank under torchrun
        if req.pause and not req.stop:
            self.ctx.sink.emit(Paused(step=state.global_step))
            paused_at = time.time()
            while req.pause and not req.stop:
                req = dist.await_resume(rc)  # model stays in memory; wake on resume or stop
            self.started += time.time() - paused_at  # keep ETA and tokens/s honest
            self._last_log_time += time.time() - paused_at
            if not req.stop:
                self.ctx.sink.emit(Resumed(step=state.global_step))
        if req.checkpoint:
            control.should_save = True
        if req.stop:
            control.should_training_stop = True
            control.should_save = True  # a stopped run can be resumed from here
            self.stopped = True
        return control

    # -- samples -----------------------------------------------------------------------------------
    def _sampling(self) -> bool:
        t = self.ctx.config.training
        return bool(t.sample_steps and t.sample_prompts and self.ctx.config.model.task == "causal-lm" and self.ctx.dist.is_main)

    def _samples(self, model, step: int) -> None:
        import torch

        from ..evaluation import render_user_prompt

        if model is None:
            return
        was_training = model.training
        model.eval()
        try:
            for prompt in self.ctx.config.training.sample_prompts:
                text = render_user_prompt(self.ctx.tokenizer, prompt)
                enc = self.ctx.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
                with torch.no_grad():
                    out = model.generate(**enc, max_new_tokens=self.ctx.config.training.sample_max_new_tokens,
                                         do_sample=False, pad_token_id=self.ctx.tokenizer.pad_token_id)
                completion = self.ctx.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                self.ctx.sink.emit(Sample(step=step, prompt=prompt, completion=completion))
        finally:
            if was_training:
                model.train()


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


# What preference trainers (TRL's DPO, ORPO, KTO) log beside the loss, passed on with each step.
_METHOD_METRIC_PREFIXES = ("rewards/", "logps/", "logits/", "log_odds", "nll_loss", "kl")


def _method_metrics(logs: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in logs.items()
            if k.startswith(_METHOD_METRIC_PREFIXES) and isinstance(v, (int, float)) and math.isfinite(v)}
