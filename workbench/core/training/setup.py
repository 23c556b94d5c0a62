"""Setting a run up before its first step: the PEFT model over the base (with tokenizer, layer tree and selection),
the Trainer's arguments, and the references the task metrics and the retention meter compare against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import classification, images, init_adapter, lora_init, quantization
from ..config import LOWER_IS_BETTER, RunConfig
from ..distributed import Distributed
from ..errors import WorkbenchError
from ..events import Message, Sink
from ..precision import Compute
from ..runs import RunFolder
from ..speed import optimizer_for_device

if TYPE_CHECKING:
    from ..layers import Selection
    from ..models import ModelSource


@dataclass(frozen=True)
class ModelFiles:
    """What ``preflight`` resolved and loaded of the base model, handed on to ``setup_model`` so that a run resolves
    its source, reads its config and loads its tokenizer once. ``hf_config`` and ``tokenizer`` are None where
    preflight did not read them (a GGUF file's metadata, a Hub model's tokenizer before its download)."""

    source: ModelSource
    hf_config: Any | None = None
    tokenizer: Any | None = None
    selection: Selection | None = None  # resolved on the meta skeleton: what run.toml records from the start


def label_set(config: RunConfig) -> Any:
    """A classification run's ``LabelSet``, read from the training data (it shapes the head); None otherwise."""
    if config.model.task == "image-classification":
        return images.image_label_set(config.model, config.data)
    if config.model.task == "sequence-classification":
        return classification.label_set_for(config.model, config.data)
    return None


def load_processing(config: RunConfig, source: ModelSource) -> Any:
    """The tokenizer, or for an image model its image processor (resizing and normalising its images)."""
    from ..models import load_tokenizer

    if config.model.task == "image-classification":
        return images.load_image_processor(source, config.model.trust_remote_code)
    return load_tokenizer(source, trust_remote_code=config.model.trust_remote_code)


def setup_model(config: RunConfig, compute: Compute, sink: Sink, files: ModelFiles | None = None, labels: Any = None):
    """Base model + tokenizer + PEFT wrapper. Returns (peft_model, tokenizer, tree, selection).
    ``labels``: the ``classification.LabelSet`` of a classification run (it shapes the head). An image model's
    "tokenizer" is its image processor."""
    from peft import get_peft_model

    from ..layers import build_tree, lora_config_from_selection, resolve_selection
    from ..lean_attention import install_lean_attention
    from ..lora_forward import install_fused_lora_forward
    from ..models import load_model, resolve_source

    mc = config.model
    if files is None or files.source.kind == "hub":  # preflight fetched only a Hub model's config files
        source = resolve_source(mc.source, mc.revision, allow_pickle=mc.allow_pickle, download="all", sink=sink)
    else:
        source = files.source
    hf_config = files.hf_config if files is not None and files.hf_config is not None else load_base_config(config, source)
    tokenizer = files.tokenizer if files is not None and files.tokenizer is not None else load_processing(config, source)
    if labels is not None and mc.task == "sequence-classification":
        classification.configure_model(hf_config, tokenizer, labels)
    elif labels is not None:
        classification.apply_to_model_config(hf_config, labels)
    elif mc.task == "sequence-classification" and getattr(hf_config, "pad_token_id", None) is None:
        hf_config.pad_token_id = tokenizer.pad_token_id
    dtype = compute.torch_weight_dtype()
    loading_info: dict[str, Any] | None = {} if labels is not None else None
    model = load_model(source, hf_config, task=mc.task, dtype=dtype, trust_remote_code=mc.trust_remote_code,
                       loading_info=loading_info, **quantization.load_kwargs(mc, compute.device, dtype))
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
    if mc.init_adapter:  # the two-stage recipe: train on from an earlier run's adapter (core/init_adapter.py)
        peft_model = init_adapter.load_trainable(model, mc.init_adapter)
    else:
        peft_model = get_peft_model(model, lora_config_from_selection(selection, lora_settings, mc.task))
    install_fused_lora_forward(peft_model)  # PEFT's modules and adapter; one autograd node per LoRA linear (core/lora_forward.py)
    install_lean_attention(peft_model)  # "sdpa" without grouped-query k/v copies or per-layer float masks (core/lean_attention.py)
    if config.lora.init == "loftq":
        lora_init.run_loftq(peft_model, source.path, sink)
    if config.training.compile == "blocks":  # after everything that changes the blocks' forwards (core/training/compiled.py)
        from .compiled import compile_blocks

        compile_blocks(peft_model, sink)
    return peft_model, tokenizer, tree, selection


def load_base_config(config: RunConfig, source: ModelSource) -> Any:
    """The base model's transformers config, with the label count of a classification run."""
    from ..models import load_config

    mc = config.model
    return load_config(source, trust_remote_code=mc.trust_remote_code,
                       num_labels=mc.num_labels if mc.task == "sequence-classification" else None)


def planned_selection(config: RunConfig, hf_config: Any) -> Selection | None:
    """The selection resolved on the model's meta skeleton (no weights read; well under a second), so that the
    run file can record the exact modules from the start. None when the skeleton cannot tell: the set-up then
    resolves it on the loaded model and reports any problem there, as it always has."""
    from ..layers import build_tree, resolve_selection
    from ..checkpoint import build_skeleton

    try:
        skeleton = build_skeleton(hf_config, config.model.task, trust_remote_code=config.model.trust_remote_code)
        return resolve_selection(build_tree(skeleton), config.lora, config.model.task)
    except WorkbenchError:
        return None


def with_selection(config: RunConfig, selection: Selection) -> RunConfig:
    """``config`` with the exact modules the selection resolved to: what run.toml keeps, so that a re-run or a
    resume builds the same adapter even if a later version changes what a preset means."""
    return config.copy_with(lora={"target_modules": selection.targets, "rank_pattern": selection.rank_overrides,
                                  "alpha_pattern": selection.alpha_overrides})


def training_arguments(config: RunConfig, run_dir: Path, compute: Compute, has_eval: bool, dist: Distributed):
    from transformers import TrainingArguments

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
        optim=optimizer_for_device(t.optimizer, compute.device),  # the fused AdamW where the device has it (core/speed.py)
        seed=t.seed,
        data_seed=t.seed,
        bf16=compute.precision == "bf16",
        fp16=compute.precision == "fp16",
        use_cpu=compute.device == "cpu",
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
        ddp_backend="gloo" if dist.world_size > 1 and compute.device == "cpu" else None,
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
    return {"metric_for_best_model": metric, "greater_is_better": e.best_metric not in LOWER_IS_BETTER}




def task_references(config: RunConfig, tokenizer: Any, sink: Sink) -> list:
    from ..evaluation import eval_references
    from ..scorers import GENERATIVE_SCORERS

    refs = eval_references(config.data, tokenizer, seed=config.training.seed, limit=config.eval.max_examples)
    if not refs and any(name in GENERATIVE_SCORERS for name in config.eval.scorers):
        sink.emit(Message("eval.scorers: the validation rows have no prompt to answer (plain text), so only "
                          "perplexity can be computed", level="warning"))
    return refs


def retention_probe(config: RunConfig, model: Any, tokenizer: Any, sink: Sink, evaluates: bool):
    from ..retention import RetentionProbe, general_prompts, reference_texts

    if not evaluates:
        sink.emit(Message("eval.retention: the meter runs at each evaluation, and this run has no validation data; "
                          "add data.validation_files or data.validation_split", level="warning"))
        return None
    texts = reference_texts(config.eval.retention_file)
    probe = RetentionProbe.build(model, tokenizer, texts, general_prompts(), batch_size=config.eval.batch_size)
    sink.emit(Message(f"retention meter: {len(probe.texts)} reference texts, {len(probe.answers)} answers of the base "
                      f"model (base loss on the texts {probe.base_text_loss:.4f})"))
    return probe
