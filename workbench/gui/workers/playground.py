"""The Playground tab's jobs: loading a base with an adapter once, and streaming the two answers
(``core.playground``), each piece a ``token(which, text)`` signal on the GUI thread."""

from __future__ import annotations

from PySide6.QtCore import Signal

from ..process_switches import lower_compute_threads_priority
from .jobs import Worker


def load_playground(base: str, adapter: str):
    """The base model once, wrapped with the adapter (``core.playground.load_playground``); run it in a
    ``FunctionWorker``."""
    from workbench.core.playground import load_playground as load

    return load(base, adapter)


class GenerateWorker(Worker):
    """Streams the base model's answer, then the adapter's, token by token, from one loaded PeftModel.

    ``token(which, text)``: which is "base" or "adapter"; pieces come from transformers' ``TextStreamer``. Both
    use the same settings and seed, so the only difference between the two answers is the adapter. ``control``
    (a ``RunControl``) stops it at the next token.
    """

    token = Signal(str, str)
    what = "Generating"

    def __init__(self, model, tokenizer, prompt: str, max_new_tokens: int, temperature: float, top_p: float, control):
        super().__init__()
        self._model, self._tok, self._prompt = model, tokenizer, prompt
        self._max, self._temp, self._top_p = max_new_tokens, temperature, top_p
        self._control = control

    def work(self):
        from workbench.core.playground import GenerationSettings, generate_answers

        lower_compute_threads_priority()
        settings = GenerationSettings(max_new_tokens=self._max, temperature=self._temp, top_p=self._top_p)
        return generate_answers(self._model, self._tok, self._prompt, settings,
                                on_piece=lambda which, text: self.post("token", which, text),
                                should_stop=lambda: self._control.stop_requested)
