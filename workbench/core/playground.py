"""The playground's model work: a base model loaded once with an adapter on it, and the base's and the adapter's
answers to one prompt, streamed piece by piece.

The base answer is generated inside PEFT's ``disable_adapter()``, so comparing the two never loads anything
twice; both use the same settings and the same seed, so the only difference between them is the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["GenerationSettings", "load_playground", "generate_answers", "ANSWERS"]

ANSWERS = ("base", "adapter")  # in the order they are generated


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy, the most likely token each time
    top_p: float = 0.95
    seed: int = 0  # the same draws for both answers


def load_playground(base: str, adapter: str) -> dict[str, Any]:
    """``{"model": PeftModel, "tokenizer"}``: the base found and loaded as everywhere else (``core.models``: a
    folder, a Hub id, a GGUF file or ``builtin:``), wrapped with the adapter, in eval mode."""
    from peft import PeftModel

    from .models import load_config, load_model, load_tokenizer, resolve_source

    source = resolve_source(base, download="all")
    tokenizer = load_tokenizer(source)
    model = load_model(source, load_config(source))
    model = PeftModel.from_pretrained(model, adapter).eval()
    return {"model": model, "tokenizer": tokenizer}


def generate_answers(model: Any, tokenizer: Any, prompt: str, settings: GenerationSettings,
                     on_piece: Callable[[str, str], None] = lambda which, text: None,
                     should_stop: Callable[[], bool] = lambda: False) -> dict[str, str]:
    """The base's answer to ``prompt`` (adapter disabled), then the adapter's: ``{"base": text, "adapter": text}``.

    ``on_piece(which, text)`` receives each decoded piece as ``generate`` produces it (transformers'
    ``TextStreamer``, which decodes at word boundaries), on the calling thread. ``should_stop`` is checked at
    every token; once true, the answer in progress ends there and the next one is not started (it is then
    missing from the result).
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            return should_stop()

    class _Streamer(TextStreamer):
        def __init__(self, which: str):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.which, self.text = which, ""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                self.text += text
                on_piece(self.which, text)

    inputs = tokenizer(prompt, return_tensors="pt")
    answers: dict[str, str] = {}
    for which in ANSWERS:
        if should_stop():
            break
        streamer = _Streamer(which)
        kw = dict(**inputs, max_new_tokens=settings.max_new_tokens, streamer=streamer,
                  stopping_criteria=StoppingCriteriaList([_Stop()]),
                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        if settings.temperature > 0:
            kw.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        torch.manual_seed(settings.seed)  # the same draws for both answers: only the adapter differs
        with torch.no_grad():
            if which == "base":
                with model.disable_adapter():
                    model.generate(**kw)
            else:
                model.generate(**kw)
        answers[which] = streamer.text
    return answers
