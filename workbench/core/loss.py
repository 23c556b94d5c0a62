"""The causal-LM loss computed only where it counts: on positions whose label is not -100, in chunks.

A causal LM's own loss projects *every* position through the output head and keeps fp32 logits of shape
``[batch, seq, vocab]`` for the backward pass: at 8 × 512 tokens and a 49k vocabulary that is 0.8 GB for the
logits alone, and the cross-entropy's softmax and gradients keep two or three more copies alive. Prompt,
template and padding positions carry no loss, so their logits are wasted work as well.

``supervised_token_loss`` gathers the hidden states of the positions that do carry loss and projects them
through the head a chunk of rows at a time (the idea of Liger's fused linear cross-entropy and of
cut-cross-entropy, in plain PyTorch so it runs on a CPU too). The gradient of each chunk is computed in the
same pass, while its logits are at hand, so only one chunk of logits ever exists and no logits are kept for
the backward pass; the matmuls are the same as the plain path's (one forward and one backward product with
the head, two when the head is trained), nothing is recomputed.

``HeadlessCausalLM`` makes a training step use it: it runs the model with its head taken off (so every
wrapper around the model — PEFT, DDP, gradient checkpointing — runs its forward as usual and returns the
final hidden states) and computes the loss with the real head. ``chunked_loss_head`` says for which models
this is the same computation as the model's own loss (tests/core/test_loss.py compares loss and gradients).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["IGNORE_INDEX", "HeadlessCausalLM", "LossCounts", "chunked_loss_head", "count_preference", "count_supervised",
           "supervised_token_loss"]

IGNORE_INDEX = -100

# Model types whose causal-LM forward ends in ``logits = head(final hidden states)`` with a plain ``nn.Linear``
# head and the standard shifted cross-entropy: no logit soft-capping (gemma2/3), no logit scale (cohere,
# granite), no auxiliary loss (MoE routers). Each is checked against the model's own loss on a tiny model by
# tests/core/test_loss.py; any other model keeps its own loss.
CHUNKED_LOSS_MODEL_TYPES = frozenset({
    "gemma", "gpt2", "gpt_neox", "llama", "mistral", "opt", "phi3", "qwen2",
})

# Bytes of fp32 logits per chunk: large enough for efficient matmuls, small next to the model's activations.
CHUNK_BYTES = 64 * 2**20


def supervised_token_loss(hidden_states: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None = None, num_items_in_batch: torch.Tensor | int | None = None,
                          chunk_rows: int | None = None) -> torch.Tensor:
    """The causal-LM cross-entropy of ``head(hidden_states)`` against ``labels`` shifted by one, as
    transformers' ``ForCausalLMLoss`` computes it: summed over positions whose next label is not -100 and
    divided by ``num_items_in_batch`` when given (the Trainer's count over the accumulated micro-batches),
    else by the number of such positions.

    ``hidden_states``: ``[batch, seq, hidden]``; ``labels``: ``[batch, seq]``; ``weight`` / ``bias``: the
    head's (``[vocab, hidden]`` / ``[vocab]``). Never builds more than ``chunk_rows × vocab`` logits.
    """
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    picked = hidden_states[:, :-1][supervised]  # [n, hidden]: the positions that carry loss
    wanted = targets[supervised].to(picked.device)
    rows = chunk_rows or max(1, CHUNK_BYTES // (4 * weight.shape[0]))
    total = _ChunkedLinearCrossEntropy.apply(picked, weight, bias, wanted, rows)
    denominator = num_items_in_batch if num_items_in_batch is not None else supervised.sum()
    if torch.is_tensor(denominator):
        denominator = denominator.to(total.device)
    return total / denominator


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum over rows of ``cross_entropy(hidden @ weight.T + bias, targets)``, with the gradients of
    ``hidden`` (and of ``weight`` / ``bias`` when they require one) computed chunk by chunk in the forward
    pass: d loss / d logits = softmax(logits) - one_hot(target), so a chunk's logits are needed only while
    that chunk is processed."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk_rows: int) -> torch.Tensor:
        wants_hidden, wants_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        wants_bias = bias is not None and ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(hidden) if wants_hidden else None
        # Accumulated in fp32 across chunks, as the plain path's single matmul accumulates.
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if wants_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if wants_bias and bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            h = hidden[start:start + chunk_rows]
            y = targets[start:start + chunk_rows]
            logits = F.linear(h, weight, bias).float()  # fp32 for the softmax, as transformers upcasts
            log_norm = torch.logsumexp(logits, dim=-1)
            total += (log_norm - logits.gather(1, y[:, None]).squeeze(1)).sum()
            if grad_hidden is None and grad_weight is None and grad_bias is None:
                continue
            grad_logits = logits.sub_(log_norm[:, None]).exp_()  # softmax, in place of the logits
            grad_logits[torch.arange(y.shape[0], device=y.device), y] -= 1.0
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
            grad_logits = grad_logits.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + chunk_rows] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ h.to(weight.dtype)).float()
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        scale = grad_total.to(torch.float32)
        out_hidden = grad_hidden * scale.to(grad_hidden.dtype) if grad_hidden is not None else None
        out_weight = (grad_weight * scale).to(weight_dtype) if grad_weight is not None else None
        out_bias = (grad_bias * scale).to(bias_dtype) if grad_bias is not None else None
        return out_hidden, out_weight, out_bias, None, None


def chunked_loss_head(model: Any) -> tuple[nn.Module, str, nn.Linear] | None:
    """``(causal_lm, attribute, head)`` when the chunked loss equals ``model``'s own loss — a causal LM of a
    type in ``CHUNKED_LOSS_MODEL_TYPES`` whose output head is a plain ``nn.Linear`` (not wrapped by an
    adapter or quantized) — else None. ``model`` may be a PEFT model or the causal LM itself."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(causal_lm, "config", None)
    if config is None or getattr(config, "model_type", None) not in CHUNKED_LOSS_MODEL_TYPES:
        return None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if type(causal_lm).__name__ not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():  # not e.g. a classifier
        return None
    get_head = getattr(causal_lm, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if type(head) is not nn.Linear:  # a LoRA-wrapped or quantized head computes more than weight @ h + bias
        return None
    attribute = next((name for name, child in causal_lm.named_children() if child is head), None)
    return (causal_lm, attribute, head) if attribute is not None else None


class HeadlessCausalLM:
    """Calls ``model`` (as the Trainer would, through every wrapper) with the head of ``causal_lm`` replaced
    by an identity, so that the "logits" it returns are the final hidden states, and returns
    ``{"loss": supervised_token_loss(...)}`` computed with the real head. Used for training steps only: the
    returned outputs hold no logits.

    The head is swapped back in before the call returns, even when the forward fails; nothing else of the
    model changes (the optimizer holds parameters, not modules, and a frozen head has no gradient to sync).
    """

    def __init__(self, model: Any, causal_lm: nn.Module, attribute: str, head: nn.Linear):
        self.model, self.causal_lm, self.attribute, self.head = model, causal_lm, attribute, head

    def __call__(self, **inputs: Any) -> dict[str, torch.Tensor]:
        labels = inputs.pop("labels")
        num_items = inputs.pop("num_items_in_batch", None)
        with self._head_removed():
            outputs = self.model(**inputs)
        hidden = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        hidden = hidden.to(self.head.weight.dtype)
        loss = supervised_token_loss(hidden, labels, self.head.weight, self.head.bias, num_items)
        return {"loss": loss}

    @contextmanager
    def _head_removed(self) -> Iterator[None]:
        setattr(self.causal_lm, self.attribute, nn.Identity())
        try:
            yield
        finally:
            setattr(self.causal_lm, self.attribute, self.head)


class LossCounts:
    """Running totals of what the training steps trained on: positions that carry loss (the next label is not
    -100) and examples with at least one such position. Kept as device tensors so counting costs no device
    sync per micro-batch; ``take()`` reads and resets them (once per logged step)."""

    def __init__(self) -> None:
        self._tokens: torch.Tensor | None = None
        self._examples: torch.Tensor | None = None

    def add(self, inputs: dict[str, Any]) -> None:
        labels = inputs.get("labels")
        if not torch.is_tensor(labels):
            counted = count_preference(inputs)
            if counted is not None:
                self._add(*counted)
            return
        if labels.dim() != 2 or labels.is_floating_point():
            # one target per example (a class id, a regression value, a multi-label row: core/classification.py):
            # every example is trained on, and no token carries a language-modelling loss
            tokens = torch.zeros((), dtype=torch.long, device=labels.device)
            examples = torch.tensor(labels.shape[0], dtype=torch.long, device=labels.device)
        else:
            tokens, examples = count_supervised(labels, inputs.get("position_ids"))
        self._add(tokens, examples)

    def _add(self, tokens: torch.Tensor, examples: torch.Tensor) -> None:
        self._tokens = tokens if self._tokens is None else self._tokens + tokens
        self._examples = examples if self._examples is None else self._examples + examples

    def take(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
             device: torch.device | str | None = None) -> tuple[int, int]:
        """``(tokens, examples)`` since the last call. ``reduce`` sums them over the processes of a distributed run
        (every process must call it at the same step); ``device``: where the reduction's tensor must live."""
        if self._tokens is None or self._examples is None:
            counts = torch.zeros(2, dtype=torch.long)
        else:  # both counted from the same batches, on their device
            counts = torch.stack([self._tokens, self._examples])
        self._tokens = self._examples = None
        if device is not None:
            counts = counts.to(device)
        if reduce is not None:
            counts = reduce(counts)
        tokens, examples = counts.tolist()
        return int(tokens), int(examples)


def count_preference(inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(trained tokens, trained examples)`` of a TRL preference batch (core/preference.py), or None for another
    batch. Tokens: the positions that predict a completion token, of the chosen and the rejected answers both (the
    ones whose log-probabilities the preference loss sums). Examples: the rows of the user's data, a DPO or ORPO
    pair counting once, and only with at least one such position.

    TRL 1.16's batches: DPO and KTO mark the answer with ``completion_mask`` (DPO: the chosen rows, then the
    rejected rows; KTO: one answer per row, with a ``label``); ORPO's ``chosen_labels``/``rejected_labels`` hold -100
    outside the answer. KTO's ``KL_*`` rows (its reference term, mismatched on purpose) are not counted."""
    mask = inputs.get("completion_mask")
    if torch.is_tensor(mask) and mask.dim() == 2:
        carries = mask[:, 1:].bool()  # position t predicts token t + 1
        per_row = carries.any(dim=1)
        if "label" not in inputs:  # DPO: rows [0, n) chosen, [n, 2n) rejected, the same pairs
            half = per_row.shape[0] // 2
            per_row = per_row[:half] | per_row[half:]
        return carries.sum(), per_row.sum()
    chosen, rejected = inputs.get("chosen_labels"), inputs.get("rejected_labels")
    if torch.is_tensor(chosen) and torch.is_tensor(rejected) and chosen.dim() == 2 and rejected.dim() == 2:
        chosen_carries = chosen[:, 1:] != IGNORE_INDEX
        rejected_carries = rejected[:, 1:] != IGNORE_INDEX
        return (chosen_carries.sum() + rejected_carries.sum(),
                (chosen_carries.any(dim=1) | rejected_carries.any(dim=1)).sum())
    return None


def count_supervised(labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(trained tokens, trained examples)`` of one batch, as 0-d tensors on its device.

    Trained tokens: positions whose next label is not -100 (the ones the loss is summed over). Examples: in a
    packed batch each run of positions starting at ``position_ids == 0`` is one example (the padding at the
    end of a row is a run too, but it carries no loss); otherwise each row is one. Only examples with at least
    one trained token count, so padding and fully masked rows do not.
    """
    carries = torch.zeros_like(labels, dtype=torch.bool)
    carries[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # position t is trained to predict label t + 1
    tokens = carries.sum()
    if position_ids is None:
        return tokens, carries.any(dim=1).sum()
    starts = position_ids == 0
    segment = torch.cumsum(starts.to(torch.long), dim=1) - 1  # per row: 0, 0, 0, 1, 1, ...
    segments_per_row = int(segment.shape[1]) + 1
    flat_segment = segment.clamp_min(0) + torch.arange(labels.shape[0], device=labels.device)[:, None] * segments_per_row
    trained = torch.zeros(labels.shape[0] * segments_per_row, dtype=torch.bool, device=labels.device)
    trained[flat_segment[carries]] = True
    return tokens, trained.sum()
