"""Task metrics during training: generate answers for validation rows and score them (``[eval]`` in the run file).

The references come from the validation rows as the data pipeline reads them (the same files, the same split
seed): the prompt is the row rendered up to where the answer begins — the prompt of a prompt/completion row, the
Alpaca prompt, a conversation rendered with its chat template up to the generation prompt of its last assistant
turn — and the reference is that answer. Plain-text rows have no prompt, so they cannot be scored by generation
(only perplexity applies).

Generation is greedy and batched (left padding, ``eval.batch_size`` prompts at once) on the model being trained, in
eval mode and without gradients; the time it takes is reported, so that the throughput and ETA of training can
leave it out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from .config import DataConfig, EvalConfig
from .scorers import GENERATIVE_SCORERS, perplexity, score_all

__all__ = ["Reference", "eval_references", "render_user_prompt", "generate_answers", "TaskScores", "score_task"]


@dataclass(frozen=True)
class Reference:
    prompt: str  # rendered: the text the model continues
    answer: str  # what it should continue with


def eval_references(cfg: DataConfig, tokenizer: Any, *, seed: int, limit: int) -> list[Reference]:
    """Up to ``limit`` (prompt, reference answer) pairs from the validation rows; [] without validation data or
    for plain-text rows."""
    from .data.raw import load_raw
    from .data.rendering import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT, _alpaca_messages, _alpaca_uses_chat, _chat_template

    raw = load_raw(cfg, seed=seed)
    if raw.validation is None or raw.format == "text":
        return []
    template = _chat_template(cfg, tokenizer)
    refs: list[Reference] = []
    for row in raw.validation.select(range(min(limit, len(raw.validation)))):
        if raw.format == "prompt-completion":
            refs.append(Reference(row["prompt"], row["completion"]))
        elif raw.format == "alpaca" and _alpaca_uses_chat(cfg, tokenizer):  # as training renders it
            prompt = tokenizer.apply_chat_template(_alpaca_messages(row)[:1], tokenize=False,
                                                   add_generation_prompt=True, chat_template=template)
            refs.append(Reference(prompt, row["output"]))
        elif raw.format == "alpaca":
            text = ALPACA_PROMPT if row["input"].strip() else ALPACA_PROMPT_NO_INPUT
            refs.append(Reference(text.format(instruction=row["instruction"], input=row["input"]), row["output"]))
        else:
            messages = row["messages"]
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=0)
            if last == 0:
                continue  # no assistant turn to compare with
            prompt = tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True,
                                                   chat_template=template)
            refs.append(Reference(prompt, messages[last]["content"]))
    return refs


def render_user_prompt(tokenizer: Any, prompt: str) -> str:
    """A prompt given as a user turn (sample prompts, the retention meter's prompts): rendered with the chat
    template, up to the generation prompt, when the tokenizer has one; as it is otherwise."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int,
                     batch_size: int, token_ids: bool = False) -> list[Any]:
    """Greedy answers for ``prompts``, ``batch_size`` at a time (left-padded, as decoder-only models need): the
    decoded texts, or with ``token_ids`` the generated ids of each (up to, not including, the end of sequence)."""
    import torch

    answers: list[Any] = []
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start:start + batch_size])
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            if token_ids:
                stops = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
                for row in new.tolist():
                    cut = next((i for i, t in enumerate(row) if t in stops), len(row))
                    answers.append(row[:cut])
            else:
                answers += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad
        if was_training:
            model.train()
    return answers


@dataclass(frozen=True)
class TaskScores:
    metrics: dict[str, float]  # {"exact_match": 0.25, "perplexity": 3.1, …}
    seconds: float  # spent generating (left out of training throughput and ETA)
    examples: int
    first_answer: str = ""


def score_task(model: Any, tokenizer: Any, refs: Sequence[Reference], cfg: EvalConfig,
               eval_loss: float | None) -> TaskScores:
    """Every scorer of ``cfg`` on ``refs`` (generating only when a generative scorer is asked for)."""
    started = time.monotonic()
    metrics: dict[str, float] = {}
    answers: list[str] = []
    generative = [name for name in cfg.scorers if name in GENERATIVE_SCORERS]
    if generative and refs:
        answers = generate_answers(model, tokenizer, [r.prompt for r in refs], max_new_tokens=cfg.max_new_tokens,
                                   batch_size=cfg.batch_size)
        metrics.update(score_all(generative, answers, [r.answer for r in refs], regex=cfg.regex,
                                 normalize=cfg.normalize))
    if "perplexity" in cfg.scorers and eval_loss is not None:
        metrics["perplexity"] = perplexity(eval_loss)
    return TaskScores(metrics, time.monotonic() - started, len(answers), answers[0] if answers else "")
