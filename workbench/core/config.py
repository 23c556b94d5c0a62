"""The run configuration: one typed, validated schema for a whole run.

The window's forms, the CLI flags (``--set key=value``) and the ``run.toml`` stored in every run folder
are three views of this one object. It is validated once, when it is built; an error names the field,
the value and what is allowed. Unknown keys are errors (a typo must not silently fall back to a default).

TOML has no ``null``, so fields whose value is ``None`` are left out when writing and come back as
``None`` (their default) when reading: the round-trip is lossless.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config_messages import ConfigError, describe_validation_error, parse_block_spec
from .paths import not_regular_problem
from .presets import DEFAULT_PRESET, PRESETS  # their home: building the command line needs no pydantic

__all__ = [
    "ConfigError",
    "ModelConfig",
    "LoraSettings",
    "DataConfig",
    "TrainingConfig",
    "OutputConfig",
    "RunConfig",
    "PRESETS",
    "DEFAULT_PRESET",
    "describe_validation_error",
    "parse_block_spec",
]


class _Section(BaseModel):
    # extra="forbid": unknown keys are errors; strict: no silent coercion ("8" is not a rank, true is not 1);
    # validate_assignment: a field assigned after construction gets the same checks (the window never does
    # it: its ConfigStore builds a new config with copy_with); allow_inf_nan=False: no
    # setting means anything as inf or nan (epochs = inf passed, then the Trainer overflowed mid-start).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class ModelConfig(_Section):
    source: str = Field("", description="Local Hugging Face folder, Hub id (org/name) or path to a .gguf file.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit); local sources ignore it.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Dtype of the frozen base weights. 'auto': float32 on CPU; on a GPU the training precision (bf16 or fp16)."
    )
    task: Literal["causal-lm", "sequence-classification", "image-classification"] = Field(
        "causal-lm", description="Causal language modelling; a classification head on a text model (BERT-style encoders, "
                                 "Llama/Qwen decoders); or an image classifier (ViT, DeiT, ConvNeXt, ResNet, Swin, …) "
                                 "trained on an image folder with one sub-folder per class."
    )
    num_labels: int = Field(2, ge=2, le=100_000, description="Classes for sequence classification (set from model.labels "
                                                            "or from the labels found in the training data).")
    problem_type: Literal["single-label", "multi-label", "regression"] = Field(
        "single-label", description="Sequence classification: one class per text (single-label), any number of classes "
                                    "per text (multi-label: the label is a list), or a number to predict (regression).")
    labels: list[str] = Field(
        default_factory=list, description="Class names in id order. Empty: the labels found in the training data, sorted "
                                          "(numerically when they are numbers).")
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model. Off unless you have read that code."
    )
    allow_pickle: bool = Field(
        False, description="Allow loading pickle (.bin/.pt) weights. Unpickling can run arbitrary code: only for files you trust."
    )
    quantization: Literal["none", "nf4", "fp4", "int8"] = Field(
        "none", description="Hold the frozen base in 4 bits (nf4, fp4) or 8 bits (int8) while the adapter trains (QLoRA): "
                            "about a quarter / half of bf16's memory. Needs bitsandbytes. Merges still use the original weights."
    )
    double_quant: bool = Field(True, description="4-bit bases: quantize the quantization constants too (saves ~0.4 bit per weight).")
    init_adapter: str | None = Field(
        None, description="Start from this PEFT adapter (a run's adapter/ folder, or the run folder) instead of a fresh "
                          "one, e.g. DPO after SFT: its modules, rank and alpha come from the adapter; the preference "
                          "reference is that adapter, frozen (core/init_adapter.py).")


class LoraSettings(_Section):
    r: int = Field(16, description="LoRA rank: capacity of the update (typical 4–64).")
    alpha: float = Field(32.0, gt=0, description="Scale numerator: the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input during training (0–0.3).")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r); helps at high ranks.")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (learned per-row magnitude); slower, sometimes better.")
    # PiSSA/OLoRA rewrite the base weights at initialisation; core/lora_init.py saves their adapters converted to a
    # plain LoRA against the original base, so merges and exports stay right.
    init: str = Field(
        "default", description="Initialisation of A and B: default (Kaiming-uniform A, zero B), gaussian, pissa, "
                               "pissa_niter_N (fast SVD), olora, orthogonal, eva (from a pass over the data), loftq (quantized bases)."
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases to train alongside the adapter.")
    preset: str = Field(DEFAULT_PRESET, description="Layer preset used when target_modules is empty.")
    include: list[str] = Field(default_factory=list, description="Extra name patterns (glob, or regex as 're:...') added to the preset.")
    blocks: str | None = Field(None, description="Restrict to transformer blocks, e.g. '8-15' or '0,2,4-6'.")
    target_modules: list[str] = Field(
        default_factory=list, description="Exact module names (or patterns) to adapt. When set it replaces preset and include; blocks still restricts it."
    )
    rank_pattern: dict[str, int] = Field(default_factory=dict, description="Per-module rank overrides: {module name: rank}.")
    alpha_pattern: dict[str, float] = Field(default_factory=dict, description="Per-module alpha overrides: {module name: alpha}.")
    modules_to_save: list[str] = Field(default_factory=list, description="Modules trained in full and saved with the adapter.")

    @field_validator("r")
    @classmethod
    def _rank_positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("the rank must be a whole number of at least 1")
        return v

    @field_validator("init")
    @classmethod
    def _known_init(cls, v: str) -> str:
        from .lora_init import check_init_name

        return check_init_name(v)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESETS and v != "none":
            raise ValueError(f"unknown preset; choose one of {', '.join(PRESETS)} (or 'none')")
        return v

    @field_validator("blocks")
    @classmethod
    def _blocks_syntax(cls, v: str | None) -> str | None:
        if v is not None:
            parse_block_spec(v)
        return v

    @field_validator("rank_pattern")
    @classmethod
    def _ranks_positive(cls, v: dict[str, int]) -> dict[str, int]:
        bad = [k for k, r in v.items() if r < 1]
        if bad:
            raise ValueError(f"ranks must be at least 1 (bad: {', '.join(bad)})")
        return v

    @field_validator("alpha_pattern")
    @classmethod
    def _alphas_positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, a in v.items() if a <= 0]
        if bad:
            raise ValueError(f"alphas must be greater than 0 (bad: {', '.join(bad)})")
        return v


DataFormat = Literal["auto", "text", "prompt-completion", "alpaca", "chat", "sharegpt"]


class DataConfig(_Section):
    train_files: list[str] = Field(default_factory=list, description="Training files (JSONL, JSON, CSV, Parquet, TXT) or saved dataset folders.")
    validation_files: list[str] = Field(default_factory=list, description="Separate validation files (optional).")
    validation_split: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of the training rows held out for validation when no validation file is given.")
    format: DataFormat = Field("auto", description="Row format; 'auto' detects it from the columns.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Column mapping {role: column}, roles: text, prompt, completion, instruction, input, output, messages, "
                    "conversations; for sequence classification text, text_pair (optional) and label.",
    )
    max_length: int = Field(1024, ge=8, le=1_048_576, description="Maximum tokens per example; longer ones are truncated and counted.")
    packing: bool = Field(True, description="Pack short examples into full rows without attention across example boundaries.")
    train_on: Literal["completion", "all"] = Field("completion", description="Compute the loss on completions/assistant turns only, or on every token.")
    chat_template: str | None = Field(None, description="Jinja chat template overriding the tokenizer's.")
    skip_bad_rows: bool = Field(False, description="Skip malformed rows (and report how many) instead of stopping.")
    alpaca_template: Literal["auto", "chat", "classic"] = Field(
        "auto", description="How Alpaca rows are rendered: 'chat' as a user turn and an assistant turn of the chat "
                            "template, 'classic' with the Stanford '### Instruction' prompt; 'auto': chat when the "
                            "model has a chat template, classic otherwise.")
    text_split: Literal["paragraphs", "chunks", "whole"] = Field(
        "paragraphs", description="How a .txt file becomes examples: one per paragraph (blank-line separated), "
                                  "the whole file cut into max_length-token chunks, or the whole file as one example.")


class TrainingConfig(_Section):
    method: Literal["sft", "dpo", "orpo", "kto"] = Field(
        "sft", description="sft: learn the completions (supervised fine-tuning). dpo / orpo: learn to prefer the chosen "
                           "answer over the rejected one ({prompt, chosen, rejected} rows); kto: from answers marked "
                           "good or bad ({prompt, completion, label}). Preference methods need the trl package.")
    beta: float = Field(0.1, gt=0, le=100, description="Preference methods: how strongly the adapter may move away "
                                                       "from the base model (DPO/KTO) or weigh the odds ratio (ORPO).")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    learning_rate: float = Field(2e-4, gt=0, le=1.0, description="Peak learning rate (LoRA: 1e-5 – 1e-3, typically 2e-4).")
    batch_size: int = Field(4, ge=1, le=65_536, description="Examples (or packed rows) per device per micro-batch.")
    gradient_accumulation: int = Field(1, ge=1, le=65_536, description="Micro-batches accumulated per optimizer step.")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"] = Field(
        "cosine", description="Learning-rate schedule after warm-up."
    )
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Fraction of the steps spent warming up the learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay on the adapter weights.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping threshold (0 disables clipping).")
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "sgd", "adafactor", "adamw_bnb_8bit", "paged_adamw_8bit",
                       "paged_adamw_32bit"] = Field(
        "adamw_torch", description="Optimizer. adamw_bnb_8bit keeps its state in 8 bits (bitsandbytes); paged_* move it to "
                                   "CPU memory when the GPU runs out (CUDA only).")
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, le=1000, description="LoRA+: B matrices learn this many times faster than A (typically 16); "
                                         "often converges faster at the same cost. Unset: one learning rate.")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Random seed: same seed and data give the same loss curve.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="'auto': bf16 where the GPU supports it, fp16 with loss scaling otherwise, fp32 on CPU."
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="Where to train.")
    gradient_checkpointing: bool | None = Field(
        None, description="Recompute activations in the backward pass: less memory, ~30% slower. Unset: on for quantized bases.")
    compile: Literal["off", "blocks"] = Field(
        "off", description="'blocks': torch.compile each decoder block (dynamic shapes), the engine's own LoRA, norm and "
                           "attention nodes kept eager inside; falls back to eager with a warning when compiling fails. "
                           "Same loss and gradients. On a 2-core CPU it lost: 2-7 minutes of compilation in the first "
                           "steps, then 0.3-1.1x eager's trained tok/CPU-s (docs/benchmarks.md); so 'off'."
    )
    oom_retry: bool = Field(
        False, description="When a step runs out of memory, halve batch_size and double gradient_accumulation (same effective "
                           "batch) and continue from the last checkpoint, down to batch size 1. One process only (not torchrun)."
    )
    logging_steps: int = Field(1, ge=1, description="Report metrics every N optimizer steps.")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps (default: once per epoch when there is validation data).")
    save_steps: int | None = Field(None, ge=1, description="Save a checkpoint every N steps (default: only at the end).")
    save_total_limit: int = Field(3, ge=0, description="Keep at most this many checkpoints (0 keeps all).")
    sample_steps: int | None = Field(None, ge=1, description="Generate the sample prompts every N steps.")
    sample_prompts: list[str] = Field(default_factory=list, description="Fixed prompts generated with the current adapter during training.")
    sample_max_new_tokens: int = Field(48, ge=1, le=4096, description="Tokens generated per sample prompt.")


ScorerName = Literal["exact_match", "regex", "json_valid", "json_exact", "json_fields", "label", "perplexity"]
# What a classification run's evaluation computes (core/classification.ClassificationMetrics); any of them can pick
# the best checkpoint. mse and mae (regression) are better when lower.
CLASSIFIER_METRICS = ("accuracy", "f1", "exact_match", "mse", "mae")
LOWER_IS_BETTER = ("eval_loss", "perplexity", "mse", "mae")


class EvalConfig(_Section):
    scorers: list[ScorerName] = Field(
        default_factory=list,
        description="Task metrics computed at each evaluation on the validation rows (see core/scorers.py): "
                    "exact_match, regex, json_valid, json_exact, json_fields, label (generate and compare with the reference "
                    "answer) and perplexity (from the evaluation loss).")
    regex: str | None = Field(None, description="The pattern the 'regex' scorer looks for in each generated answer.")
    normalize: bool = Field(False, description="exact_match ignores case and runs of whitespace.")
    max_examples: int = Field(64, ge=1, le=100_000, description="Validation rows generated for the generative scorers.")
    max_new_tokens: int = Field(128, ge=1, le=4096, description="Tokens generated per answer (greedy).")
    batch_size: int = Field(8, ge=1, le=1024, description="Answers generated at once.")
    best_metric: str = Field("eval_loss", description="The metric that picks the best checkpoint: eval_loss (lower is "
                                                      "better) or one of the scorers (higher is better; perplexity lower).")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop when best_metric has not improved for this many evaluations (needs validation data).")
    retention: bool = Field(False, description="Measure at every evaluation what the base model knew (core/retention.py): "
                                               "loss on general reference text, agreement with the base's own answers.")
    retention_file: str | None = Field(None, description="Your own reference texts for the retention meter, one per line "
                                                         "(default: the general set shipped with the app).")
    retention_warn_below: float = Field(0.8, gt=0.0, le=1.0, description="Warn when agreement with the base model's "
                                                                         "own answers falls below this share.")

    @model_validator(mode="after")
    def _consistent(self) -> "EvalConfig":
        if "regex" in self.scorers and not self.regex:
            raise ValueError("the regex scorer needs eval.regex, the pattern an answer must match")
        if self.best_metric != "eval_loss" and self.best_metric not in self.scorers \
                and self.best_metric not in CLASSIFIER_METRICS:
            raise ValueError(f"best_metric {self.best_metric!r} must be eval_loss or one of eval.scorers "
                             f"({', '.join(self.scorers) or 'none set'}); a classifier also has "
                             f"{', '.join(CLASSIFIER_METRICS)}")
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return v


class OutputConfig(_Section):
    runs_root: str = Field("runs", description="Folder that holds one sub-folder per run.")
    name: str | None = Field(None, description="Run name (default: model name and time stamp).")
    run_dir: str | None = Field(None, description="Exact run folder; overrides runs_root/name.")
    group: str | None = Field(None, description="The sweep or series this run belongs to (set by `workbench sweep`); "
                              "runs of one group are listed and compared together.")
    trackers: list[Literal["tensorboard", "mlflow", "trackio"]] = Field(
        default_factory=list, description="Experiment trackers that also log the run, each to its local store: "
        "tensorboard (RUN/tensorboard), mlflow (mlflow.db beside the run folders), trackio (its own local store).")

    @field_validator("trackers")
    @classmethod
    def _no_repeats(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each tracker may be listed once")
        return v

    @field_validator("name", "group")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or re.search(r"[/\\\0]", v)):
            raise ValueError("a run name must be non-empty and contain no slashes")
        return v


class RunConfig(_Section):
    """Everything that defines a run. Build it with keywords, ``from_dict`` or ``from_toml``."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _classifier_metric_needs_a_classifier(self) -> "RunConfig":
        e = self.eval
        if e.best_metric in CLASSIFIER_METRICS and e.best_metric not in e.scorers and self.model.task == "causal-lm":
            raise ValueError(f"eval.best_metric {e.best_metric!r} must be eval_loss or one of eval.scorers "
                             f"({', '.join(e.scorers) or 'none set'}): without a scorer it is computed for classifiers "
                             "only (model.task = sequence-classification or image-classification)")
        return self

    # -- warnings ------------------------------------------------------------------------------------
    def warnings(self) -> list[str]:
        """Settings that are valid but will not do what they say: each a sentence naming the fields. The engine
        sends them as warning events when a run starts (a setting silently ignored looks like a bug)."""
        out = []
        d = self.data
        if self.training.eval_steps is not None and not d.validation_files and d.validation_split == 0:
            out.append(f"training.eval_steps = {self.training.eval_steps} is set, but there is no validation data, "
                       "so nothing is evaluated: add data.validation_files or set data.validation_split (e.g. 0.1).")
        return out

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> "RunConfig":
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc), source) from None

    @classmethod
    def from_toml_text(cls, text: str, source: str | None = None) -> "RunConfig":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"not valid TOML: {exc}"], source,
                              "fix the syntax at the line and column shown (text values need quotes: "
                              'source = "path/to/model")') from None
        return cls.from_dict(data, source)

    @classmethod
    def from_toml(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        problem = not_regular_problem(path)  # a FIFO would block read_text forever
        if problem:
            raise ConfigError([f"the run file {problem}"], str(path), "choose the .toml run file itself") from None
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError([f"file not found: {path}"], str(path),
                              "check the path of the run file (File → Save in the window writes one)") from None
        except UnicodeDecodeError:
            raise ConfigError(["the file is not UTF-8 text"], str(path),
                              "a run file is TOML text: save it as UTF-8, or choose the .toml file itself") from None
        except OSError as exc:
            raise ConfigError([f"cannot read the file: {exc.strerror}"], str(path),
                              "choose a readable .toml run file" + (", not a folder" if path.is_dir() else "")) from None
        return cls.from_toml_text(text, str(path))

    # -- output ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data with ``None`` fields left out (TOML cannot hold them; they are the defaults)."""
        return self.model_dump(mode="json", exclude_none=True)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> None:
        from .fsutil import atomic_write_text

        atomic_write_text(Path(path), self.to_toml())

    # -- edits ----------------------------------------------------------------------------------------
    def with_overrides(self, assignments: list[str]) -> "RunConfig":
        """Apply ``section.field=value`` assignments (CLI ``--set``). Values are parsed as TOML values,
        falling back to a plain string, so ``training.learning_rate=1e-4`` and ``model.source=./m`` both work."""
        data = self.model_dump(mode="json")
        problems = []
        for item in assignments:
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or "." not in key:
                problems.append(f"{item!r}: expected section.field=value, e.g. training.learning_rate=1e-4")
                continue
            node = data
            *parents, leaf = key.split(".")
            ok = True
            for part in parents:
                if not isinstance(node.get(part), dict):
                    problems.append(f"{key}: unknown section {part!r}")
                    ok = False
                    break
                node = node[part]
            if ok:
                node[leaf] = _parse_value(raw.strip())
        if problems:
            raise ConfigError(problems, "--set")
        return RunConfig.from_dict(data, "--set")

    def copy_with(self, **sections: Any) -> "RunConfig":
        """A validated copy with whole sections or section fields replaced, e.g. ``copy_with(lora={"r": 8})``."""
        data = self.model_dump(mode="json")
        for name, value in sections.items():
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json")
            if isinstance(value, dict) and isinstance(data.get(name), dict):
                data[name].update(value)
            else:
                data[name] = value
        return RunConfig.from_dict(data)


def field_help() -> dict[str, str]:
    """``{"section.field": description}`` for tooltips and ``--help`` texts."""
    out = {}
    for section_name, section_field in RunConfig.model_fields.items():
        section_cls = section_field.annotation
        for name, f in section_cls.model_fields.items():  # type: ignore[union-attr]
            out[f"{section_name}.{name}"] = f.description or ""
    return out


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
