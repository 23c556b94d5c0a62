"""An adapter on the unquantized base against the same adapter on a quantized base: how far apart the logits are.

An adapter trained on a 4-bit (QLoRA) or 8-bit base is merged into, and usually served on, the *unquantized*
weights (``core/merge.py`` streams from the original files). Its outputs there differ from what training saw,
by the rounding of the base; users are surprised by it unless it is shown. ``compare_on_quantized_base`` runs
the same prompts through both and reports, per prompt, the largest and mean absolute logit difference, how often
the two agree on the most likely next token, and the adapter's own effect on the unquantized base (the scale the
difference is read against).

Both run in eval mode, as a user's inference would. For 4-bit bases that computes what training computed
(``quantization.disable_cpu_fast_path``); for int8, bitsandbytes' inference matmul (LLM.int8) rounds the
activations to 8 bits as well, which its CPU training path does not, so the int8 difference includes that.

The two models are loaded one after the other (the unquantized one is freed first), so the peak memory is that of
the larger one, not of both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import WorkbenchError
from .quantization import QUANTIZATIONS, QuantizationError, backend_available, BNB_PIN

__all__ = ["PromptComparison", "QuantizedComparison", "compare_on_quantized_base", "trained_quantization",
           "MAX_PROMPT_TOKENS"]

MAX_PROMPT_TOKENS = 512  # a comparison is about the logits, not long contexts: longer prompts are cut here


@dataclass(frozen=True)
class PromptComparison:
    prompt: str
    tokens: int  # positions compared (the prompt's tokens, after the cut at MAX_PROMPT_TOKENS)
    max_abs_diff: float  # max |logit(quantized base + adapter) − logit(unquantized base + adapter)|
    mean_abs_diff: float
    top1_agreement: float  # share of positions whose most likely next token is the same on both bases
    adapter_effect: float  # max |logit(unquantized base + adapter) − logit(unquantized base)|
    next_token_unquantized: str
    next_token_quantized: str


@dataclass(frozen=True)
class QuantizedComparison:
    quantization: str
    double_quant: bool
    dtype: str  # the compute dtype of both models
    prompts: tuple[PromptComparison, ...]

    @property
    def max_abs_diff(self) -> float:
        return max(p.max_abs_diff for p in self.prompts)

    @property
    def top1_agreement(self) -> float:
        """Over all compared positions of all prompts."""
        total = sum(p.tokens for p in self.prompts)
        return sum(p.top1_agreement * p.tokens for p in self.prompts) / total


def trained_quantization(adapter: str | Path) -> tuple[str, bool] | None:
    """``(model.quantization, model.double_quant)`` of the run an adapter folder belongs to (its ``run.toml`` one
    level up), or None for an adapter from elsewhere or a run on an unquantized base."""
    from .runs import load_config

    try:
        model = load_config(Path(adapter).parent).model
    except Exception:  # noqa: BLE001  (no run.toml, or one from another version: not a run of ours)
        return None
    return (model.quantization, model.double_quant) if model.quantization != "none" else None


def _check(quantization: str, prompts: list[str], device: str) -> None:
    if quantization not in QUANTIZATIONS or quantization == "none":
        allowed = ", ".join(q for q in QUANTIZATIONS if q != "none")
        raise QuantizationError(f"quantization {quantization!r} is not one the comparison can load",
                                f"choose one of {allowed}")
    if not backend_available():
        raise QuantizationError("comparing on a quantized base needs bitsandbytes, which is not installed",
                                f"install it with: pip install {BNB_PIN}  (or pip install 'lora-workbench[quant]')")
    if device == "mps":
        raise QuantizationError("bitsandbytes has no backend for Apple's mps device", "compare on the CPU")
    if not [p for p in prompts if p.strip()]:
        raise WorkbenchError("no prompt to compare the two bases on", "type a prompt first")


def compare_on_quantized_base(base: str, adapter: str | Path, prompts: list[str], *, quantization: str = "nf4",
                              double_quant: bool = True, device: str = "auto",
                              should_stop: Callable[[], bool] | None = None,
                              on_stage: Callable[[str], None] | None = None) -> QuantizedComparison | None:
    """The adapter's logits on ``base`` as stored and on ``base`` quantized with ``quantization``, for each prompt
    (the raw prompt text, as the playground feeds it). Returns None when ``should_stop`` asked to stop.
    ``on_stage`` hears a short line as each of the slow steps starts (loading a model takes most of the time)."""
    import gc

    import torch
    from peft import PeftModel

    from .models import load_config, load_model, load_tokenizer, resolve_source
    from .quantization import disable_cpu_fast_path, load_kwargs

    prompts = [p for p in prompts if p.strip()]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    _check(quantization, prompts, device)
    stop = should_stop or (lambda: False)
    stage = on_stage or (lambda _text: None)
    # float32 on the CPU (bitsandbytes' CPU kernels compute in it), bfloat16 on a GPU: the same for both models,
    # so the difference is the base's rounding only.
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    source = resolve_source(base, download="all")
    tokenizer = load_tokenizer(source)
    inputs = [tokenizer(p, return_tensors="pt", truncation=True, max_length=MAX_PROMPT_TOKENS) for p in prompts]

    def logits(model: Any) -> list[torch.Tensor]:
        out = []
        for batch in inputs:
            if stop():
                return []
            with torch.no_grad():
                out.append(model(**{k: v.to(device) for k, v in batch.items()}).logits[0].float().cpu())
        return out

    stage("loading the base as stored, with the adapter")
    full = PeftModel.from_pretrained(load_model(source, load_config(source), dtype=dtype).to(device), str(adapter)).eval()
    adapted = logits(full)
    with full.disable_adapter():
        plain = logits(full)
    del full
    gc.collect()
    if device == "cuda":  # hand the unquantized model's memory back before the quantized one loads
        torch.cuda.empty_cache()
    if stop():
        return None

    stage(f"loading the base quantized to {quantization}, with the adapter")
    model_config = _ModelSettings(quantization, double_quant)
    quantized_base = load_model(source, load_config(source), dtype=dtype, **load_kwargs(model_config, device, dtype))
    disable_cpu_fast_path(quantized_base)
    quantized = PeftModel.from_pretrained(quantized_base, str(adapter)).eval()
    stage("running the prompts on the quantized base")
    on_quantized = logits(quantized)
    del quantized, quantized_base
    gc.collect()
    if stop() or len(on_quantized) != len(prompts):
        return None

    results = []
    for prompt, a, q, p in zip(prompts, adapted, on_quantized, plain):
        diff = (q - a).abs()
        top_a, top_q = a.argmax(-1), q.argmax(-1)
        results.append(PromptComparison(
            prompt=prompt, tokens=int(a.shape[0]), max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
            top1_agreement=float((top_a == top_q).float().mean()), adapter_effect=float((a - p).abs().max()),
            next_token_unquantized=tokenizer.decode([int(top_a[-1])]),
            next_token_quantized=tokenizer.decode([int(top_q[-1])])))
    return QuantizedComparison(quantization, double_quant, str(dtype).removeprefix("torch."), tuple(results))


@dataclass(frozen=True)
class _ModelSettings:
    """The two ``model.*`` settings ``quantization.load_kwargs`` reads, without a whole run configuration."""

    quantization: str
    double_quant: bool
