"""The Ollama ``Modelfile`` beside an export: ``FROM`` the GGUF (or the GGUF base plus an ``ADAPTER`` line), the
chat template in Ollama's Go syntax (``templates.py``), the default system prompt, the stop tokens and the
model's own sampling defaults.

The file is plain text in Ollama's documented format (``FROM``, ``ADAPTER``, ``TEMPLATE``, ``SYSTEM``,
``PARAMETER``); a value in triple quotes may span lines and must not contain three quotes itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .templates import RecognisedTemplate, recognise_template

__all__ = ["MODELFILE", "ollama_template", "modelfile_text", "ollama_instructions"]

MODELFILE = "Modelfile"


def ollama_template(tokenizer_folder: Path, *, add_bos: bool, chat_template: str | None) -> RecognisedTemplate:
    """The chat template of the model in ``tokenizer_folder`` (rendered by transformers with the model's own
    tokenizer), recognised as a family; ``WorkbenchError`` when it is none (see ``templates.py``)."""
    from transformers import AutoTokenizer

    from workbench.core.errors import WorkbenchError

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise WorkbenchError(f"{tokenizer_folder} has no chat template, so Ollama would not know how to prompt it",
                             "export the GGUF without --ollama, or add a chat template to the tokenizer")

    def render(messages: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)

    return recognise_template(render, tokenizer.bos_token, tokenizer.eos_token, add_bos=add_bos,
                              where=str(tokenizer_folder))


@dataclass(frozen=True)
class _Parameter:
    name: str
    value: Any


def _parameters(folder: Path, context_length: int | None, stops: tuple[str, ...]) -> list[_Parameter]:
    params = [_Parameter("stop", s) for s in stops]
    try:
        gen = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        gen = {}
    if isinstance(gen, dict) and gen.get("do_sample"):
        for key, name in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                          ("min_p", "min_p"), ("repetition_penalty", "repeat_penalty")):
            value = gen.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                params.append(_Parameter(name, value))
    if context_length:
        # Ollama's default window is small; the model's own, capped so a 128k model does not claim its memory
        params.append(_Parameter("num_ctx", min(int(context_length), 8192)))
    return params


def _quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def modelfile_text(*, model: str, adapter: str | None, template: RecognisedTemplate, folder: Path,
                   context_length: int | None, comment: str) -> str:
    lines = [f"# {line}" for line in comment.splitlines()]
    lines.append(f"FROM {model}")
    if adapter is not None:
        lines.append(f"ADAPTER {adapter}")
    lines.append(f'TEMPLATE """{template.go_template()}"""')
    if template.family.default_system is not None:
        lines.append(f'SYSTEM """{template.family.default_system}"""')
    for p in _parameters(folder, context_length, template.stops):
        lines.append(f"PARAMETER {p.name} {_quoted(p.value) if isinstance(p.value, str) else p.value}")
    return "\n".join(lines) + "\n"


def ollama_instructions(out: Path, name: str) -> str:
    return (f"cd {out}\nollama create {name} -f {MODELFILE}\nollama run {name}")
