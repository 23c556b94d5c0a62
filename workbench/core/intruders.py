"""Intruder dimensions: a trained adapter's post-hoc trade-off between the task and what the base model knew.

LoRA updates tend to add *intruder dimensions*: singular vectors of ``W + ΔW`` among the top ``top_k`` that are
nearly orthogonal (|cos| < ``threshold_epsilon``) to every singular vector of the pre-trained ``W`` ("LoRA vs Full
Fine-tuning: An Illusion of Equivalence", arXiv 2410.21228). They carry much of the forgetting. PEFT's
``reduce_intruder_dimension`` scales them down by ``mitigation_lambda`` (1.0 keeps the adapter as trained, 0.0
removes them) and refits the adapter at its own rank; this module only measures what that costs and gains:

* **task**: the loss on the run's validation answers (each answer's tokens given its prompt, teacher-forced —
  no generation, so a handful of λ values stay cheap), lower is better;
* **retention**: the retention meter's numbers (``core/retention.py``) against the base model — the loss on the
  general reference text, its perplexity ratio to the base, and agreement with the base's own answers.

``intruder_trade_off`` computes both for several λ on one loaded model; ``save_reduced_adapter`` writes the adapter
for the λ the user picked to a new folder (temporary folder, then rename: the trained adapter is never touched).
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import WorkbenchError

__all__ = ["DEFAULT_LAMBDAS", "TradeOffPoint", "TradeOff", "reduce_intruders", "task_loss", "intruder_trade_off", "run_trade_off",
           "load_run_model", "save_reduced_adapter"]

DEFAULT_LAMBDAS = (1.0, 0.75, 0.5, 0.25, 0.0)
REDUCED = "intruders_reduced"  # the PEFT adapter name of a reduced copy (the trained one stays "default")
_INTRUDER_LINE = re.compile(r": Intruders: (\d+)$")


@dataclass(frozen=True)
class TradeOffPoint:
    mitigation_lambda: float
    intruders: int  # intruder dimensions found over all adapted modules
    modules_with_intruders: int
    task_loss: float | None  # loss on the validation answers; None without validation prompts
    retention_text_loss: float
    retention_ppl_ratio: float  # exp(text loss − the base's): 1.0 = nothing forgotten
    retention_agreement: float  # share of the base's own answer tokens predicted the same


@dataclass
class TradeOff:
    points: list[TradeOffPoint]
    modules: int  # adapted modules looked at
    base_text_loss: float
    base_task_loss: float | None = None
    settings: dict[str, float] = field(default_factory=dict)  # top_k, threshold_epsilon


def reduce_intruders(peft_model: Any, *, mitigation_lambda: float, top_k: int = 10, threshold_epsilon: float = 0.5,
                     adapter_name: str = REDUCED) -> tuple[int, int]:
    """Add (replacing an earlier one) the adapter ``adapter_name``: the trained ``default`` with its intruder
    dimensions scaled by ``mitigation_lambda``, and make it the active one. Returns (intruder dimensions found,
    modules that had any). PEFT does the work; its log lines are where it reports the counts."""
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    if adapter_name in peft_model.peft_config:
        peft_model.set_adapter("default")
        peft_model.delete_adapter(adapter_name)
    counts: list[int] = []

    def collect(line: str, *args: Any, **kwargs: Any) -> None:
        found = _INTRUDER_LINE.search(str(line))
        if found:
            counts.append(int(found.group(1)))

    reduce_intruder_dimension(peft_model, old_adapter_name="default", new_adapter_name=adapter_name, top_k=top_k,
                              threshold_epsilon=threshold_epsilon, mitigation_lambda=mitigation_lambda,
                              logging_sink=collect)
    return sum(counts), len(counts)


def task_loss(model: Any, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 8) -> float | None:
    """Mean token loss of each answer given its prompt (``(prompt ids, answer ids)`` pairs); None without pairs."""
    import torch

    from .retention import _token_losses

    if not pairs:
        return None
    with torch.no_grad():
        total, count = _token_losses(model, [(p + a, len(p)) for p, a in pairs], batch_size)
    return total / count if count else None


def _check_plain_lora(peft_model: Any) -> None:
    config = peft_model.peft_config.get("default")
    if config is None or getattr(config, "peft_type", None) is None or str(config.peft_type.value) != "LORA":
        raise WorkbenchError("intruder reduction works on LoRA adapters only", "pick a run trained with LoRA")
    if getattr(config, "use_dora", False):
        raise WorkbenchError("intruder reduction does not apply to DoRA adapters (their magnitude vector would no "
                             "longer match the refitted update)", "pick a run trained without DoRA")


def intruder_trade_off(peft_model: Any, tokenizer: Any, probe: Any, task_pairs: Sequence[tuple[list[int], list[int]]],
                       *, lambdas: Sequence[float] = DEFAULT_LAMBDAS, top_k: int = 10, threshold_epsilon: float = 0.5,
                       batch_size: int = 8, should_stop: Callable[[], bool] = lambda: False) -> TradeOff:
    """Task loss and retention for the trained adapter reduced at each λ of ``lambdas`` (``probe``: a
    ``RetentionProbe`` built on this model's base). The model is left with the trained adapter active."""
    from .retention import _base_only

    _check_plain_lora(peft_model)
    for value in lambdas:
        if not 0.0 <= value <= 1.0 or not math.isfinite(value):
            raise WorkbenchError(f"mitigation λ {value} is outside 0…1",
                                 "use values from 0 (remove intruder dimensions) to 1 (keep the adapter as trained)")
    peft_model.eval()
    with _base_only(peft_model):
        base_task = task_loss(peft_model, task_pairs, batch_size)
    points = []
    modules = 0
    try:
        for value in lambdas:
            if should_stop():
                break
            found, with_intruders = reduce_intruders(peft_model, mitigation_lambda=value, top_k=top_k,
                                                     threshold_epsilon=threshold_epsilon)
            modules = sum(1 for name, _ in _lora_layers(peft_model))
            retention = probe.measure(peft_model)
            points.append(TradeOffPoint(value, found, with_intruders, task_loss(peft_model, task_pairs, batch_size),
                                        retention["retention_text_loss"], retention["retention_ppl_ratio"],
                                        retention["retention_agreement"]))
    finally:
        if REDUCED in peft_model.peft_config:
            peft_model.set_adapter("default")
            peft_model.delete_adapter(REDUCED)
    return TradeOff(points, modules, probe.base_text_loss, base_task,
                    {"top_k": top_k, "threshold_epsilon": threshold_epsilon})


def _lora_layers(peft_model: Any):
    from peft.tuners.lora.layer import LoraLayer

    return [(n, m) for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]


# ------------------------------------------------------------------------------------------ run folders


@dataclass
class LoadedRun:
    model: Any  # PeftModel, trained adapter "default" active, eval mode
    tokenizer: Any
    task_pairs: list[tuple[list[int], list[int]]]
    config: Any  # RunConfig


def load_run_model(run_dir: str | Path, *, max_examples: int | None = None) -> LoadedRun:
    """The run's base model (float32) with its final adapter, and the (prompt, answer) token pairs of its
    validation rows (at most ``max_examples``, default: the run's own eval.max_examples)."""
    import torch
    from peft import PeftModel

    from .evaluation import eval_references
    from .models import load_config, load_model, load_tokenizer, resolve_source
    from .runs import ADAPTER_DIR, load_config as load_run_config

    run_dir = Path(run_dir)
    adapter = run_dir / ADAPTER_DIR
    if not (adapter / "adapter_config.json").is_file():
        raise WorkbenchError(f"{run_dir} has no final adapter ({adapter} is missing)",
                             "pick a finished or stopped run, or resume this one until it saves its adapter")
    config = load_run_config(run_dir)
    m = config.model
    source = resolve_source(m.source, m.revision, allow_pickle=m.allow_pickle, download="all")
    tokenizer = load_tokenizer(source, trust_remote_code=m.trust_remote_code)
    base = load_model(source, load_config(source, trust_remote_code=m.trust_remote_code), dtype=torch.float32,
                      trust_remote_code=m.trust_remote_code)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    refs = eval_references(config.data, tokenizer, seed=config.training.seed,
                           limit=max_examples or config.eval.max_examples)
    pairs = []
    for ref in refs:
        prompt = tokenizer(ref.prompt, add_special_tokens=True)["input_ids"]
        answer = tokenizer(ref.answer, add_special_tokens=False)["input_ids"]
        if answer:
            pairs.append((prompt, answer))
    return LoadedRun(model, tokenizer, pairs, config)


def save_reduced_adapter(peft_model: Any, out: str | Path, *, mitigation_lambda: float, top_k: int = 10,
                         threshold_epsilon: float = 0.5) -> Path:
    """Write the trained adapter reduced at ``mitigation_lambda`` to the new folder ``out`` as a PEFT adapter
    (saved under the name ``default``, so it loads like any other). Refuses an existing ``out``."""
    from .fsutil import atomic_directory

    out = Path(out).expanduser()
    if out.exists():
        raise WorkbenchError(f"{out} already exists", "choose a new folder for the reduced adapter")
    _check_plain_lora(peft_model)
    reduce_intruders(peft_model, mitigation_lambda=mitigation_lambda, top_k=top_k, threshold_epsilon=threshold_epsilon)
    try:
        with atomic_directory(out) as tmp:
            # PEFT writes an adapter not named "default" into a sub-folder of its name: that is the folder to keep.
            peft_model.save_pretrained(str(tmp / "saved"), selected_adapters=[REDUCED], safe_serialization=True)
            saved = tmp / "saved" / REDUCED
            for item in saved.iterdir():
                item.rename(tmp / item.name)
            shutil.rmtree(tmp / "saved")  # what is left: PEFT's generic README for the outer folder
    finally:
        peft_model.set_adapter("default")
        peft_model.delete_adapter(REDUCED)
    return out


def run_trade_off(run_dir: str | Path, *, lambdas: Sequence[float] = DEFAULT_LAMBDAS, top_k: int = 10,
                  threshold_epsilon: float = 0.5, should_stop: Callable[[], bool] = lambda: False
                  ) -> tuple[LoadedRun, TradeOff]:
    """The trade-off of a run's final adapter: its model loaded (kept, so the chosen λ can be saved without loading
    again), the retention meter built on its base with the run's own reference texts, and every λ measured."""
    from .retention import RetentionProbe, general_prompts, reference_texts

    loaded = load_run_model(run_dir)
    e = loaded.config.eval
    probe = RetentionProbe.build(loaded.model, loaded.tokenizer, reference_texts(e.retention_file), general_prompts(),
                                 batch_size=e.batch_size)
    trade = intruder_trade_off(loaded.model, loaded.tokenizer, probe, loaded.task_pairs, lambdas=lambdas, top_k=top_k,
                               threshold_epsilon=threshold_epsilon, batch_size=e.batch_size, should_stop=should_stop)
    return loaded, trade

