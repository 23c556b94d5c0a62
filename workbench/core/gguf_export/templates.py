"""Chat templates for Ollama: the model's Jinja template recognised as one of the families that exist, and written
again in Go's ``text/template`` syntax, which is what an Ollama ``Modelfile``'s ``TEMPLATE`` is.

Translating Jinja to Go templates in general is impossible (Jinja has filters, macros, Python string methods,
``raise_exception``; Go has none of them). But the templates models ship belong to a handful of families, and
a family is fully described by how it writes one turn of each role, what it appends to ask for an answer, and
what it puts before the first turn. So the template is not parsed: it is *rendered* (by transformers, with the
tokenizer's own special tokens) on probe conversations — with and without a system message, one and two user
turns — and a family whose description reproduces every probe byte for byte is taken. Its default system
prompt, if the template adds one when the conversation has none (SmolLM2, Qwen2.5), is read off the probes
and becomes the Modelfile's ``SYSTEM`` line, which Ollama inserts exactly then. A template that no family
reproduces is refused, with the reason, rather than approximated: a wrong template is the classic cause of a
fine-tune that "answers worse in Ollama".

The BOS token: when the GGUF says ``add_bos_token``, llama.cpp (and so Ollama) prepends it while tokenizing,
so the Go template must not write it again, although the Jinja template does (Llama 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from workbench.core.errors import WorkbenchError

__all__ = ["ChatFamily", "FAMILIES", "RecognisedTemplate", "recognise_template", "PROBES"]


@dataclass(frozen=True)
class ChatFamily:
    name: str
    title: str
    turns: dict[str, str]  # role → how one message of that role is written ("{content}", "{eos}")
    generation: str  # appended after a last non-assistant message when asking for an answer
    end_of_turn: tuple[str, ...]  # stop strings besides the EOS token
    prefix: str = ""  # before the first turn ("{bos}" for templates that write BOS themselves)
    default_system: str | None = None  # the system turn the template adds when the conversation has none

    def render(self, messages: list[dict[str, str]], bos: str, eos: str, *, with_prefix: bool = True) -> str:
        """The prompt this family writes; ``ValueError`` for a role it has no turn for."""
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        out = [self.prefix.replace("{bos}", bos)] if with_prefix else []
        for m in messages:
            if m["role"] not in self.turns:
                raise ValueError(f"no {m['role']} turn")
            out.append(self.turns[m["role"]].replace("{eos}", eos).replace("{content}", m["content"]))
        if messages and messages[-1]["role"] != "assistant":
            out.append(self.generation)
        return "".join(out)

    def go_template(self, bos: str, eos: str, *, write_bos: bool) -> str:
        """The same family as a Go ``text/template`` over Ollama's ``.Messages`` (``.Role``, ``.Content``). No
        trim markers: the literal text between actions is written exactly, newlines included."""
        parts = [self.prefix.replace("{bos}", bos if write_bos else "")]
        parts.append("{{ range $i, $m := .Messages }}")
        for n, (role, turn) in enumerate(self.turns.items()):
            head, _, tail = turn.replace("{eos}", eos).partition("{content}")
            parts.append(f'{{{{ {"if" if n == 0 else "else if"} eq $m.Role "{role}" }}}}{head}{{{{ $m.Content }}}}{tail}')
        parts.append("{{ end }}")
        if self.generation:
            parts.append('{{ if and (eq (len (slice $.Messages $i)) 1) (ne $m.Role "assistant") }}'
                         f"{self.generation}{{{{ end }}}}")
        parts.append("{{ end }}")
        return "".join(parts)


def _same(role_format: str) -> dict[str, str]:
    return {r: role_format.replace("{role}", r) for r in ("system", "user", "assistant")}


FAMILIES: tuple[ChatFamily, ...] = (
    ChatFamily("chatml", "ChatML (SmolLM2, Qwen2/2.5, many others)", _same("<|im_start|>{role}\n{content}<|im_end|>\n"),
               "<|im_start|>assistant\n", ("<|im_end|>",)),
    ChatFamily("llama3", "Llama 3", _same("<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"),
               "<|start_header_id|>assistant<|end_header_id|>\n\n", ("<|eot_id|>",)),
    ChatFamily("phi3", "Phi-3", _same("<|{role}|>\n{content}<|end|>\n"), "<|assistant|>\n", ("<|end|>",)),
    ChatFamily("mistral", "Mistral [INST] (no system role)", {"user": "[INST] {content} [/INST]", "assistant": "{content}{eos}"},
               "", ("[INST]",)),
    ChatFamily("gemma", "Gemma (no system role)", {"user": "<start_of_turn>user\n{content}<end_of_turn>\n",
                                                   "assistant": "<start_of_turn>model\n{content}<end_of_turn>\n"},
               "<start_of_turn>model\n", ("<end_of_turn>",)),
)

_S, _U1, _A1, _U2 = ("You are a careful assistant.", "What is the capital of France?", "Paris.",
                     "And of Italy? Answer in one word.")
PROBES: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": _U1},),
    ({"role": "user", "content": _U1}, {"role": "assistant", "content": _A1}, {"role": "user", "content": _U2}),
    ({"role": "system", "content": _S}, {"role": "user", "content": _U1}),
    ({"role": "system", "content": _S}, {"role": "user", "content": _U1}, {"role": "assistant", "content": _A1},
     {"role": "user", "content": _U2}),
)


@dataclass(frozen=True)
class RecognisedTemplate:
    family: ChatFamily
    system_supported: bool
    bos: str
    eos: str
    add_bos: bool
    stops: tuple[str, ...] = field(default=())

    def go_template(self) -> str:
        return self.family.go_template(self.bos, self.eos, write_bos=not self.add_bos)


def recognise_template(render: Any, bos: str | None, eos: str | None, *, add_bos: bool, where: str) -> RecognisedTemplate:
    """The family of a chat template, given ``render(messages) -> str`` (the model's own template with
    ``add_generation_prompt=True``, raising for conversations it refuses). ``WorkbenchError`` if none fits."""
    bos, eos = bos or "", eos or ""
    rendered: list[str | None] = []
    for probe in PROBES:
        try:
            rendered.append(render([dict(m) for m in probe]))
        except Exception:  # a template may refuse a system message (raise_exception); that is part of the family
            rendered.append(None)
    if rendered[0] is None or rendered[1] is None:
        raise WorkbenchError(f"{where}: the chat template fails on a plain user/assistant conversation",
                             "fix the chat template, or export without --ollama")
    system_ok = rendered[2] is not None and rendered[3] is not None
    for family in FAMILIES:
        for prefix in ("", "{bos}") if bos else ("",):
            candidate = _with_default_system(replace(family, prefix=prefix), rendered[0], bos, eos)
            if candidate is None or (not system_ok and "system" in candidate.turns):
                continue  # a template that refuses system messages belongs to a family without them
            probes = PROBES if system_ok else PROBES[:2]
            try:
                expected = [candidate.render(list(p), bos, eos) for p in probes]
            except ValueError:  # the template writes a role this family has no turn for
                continue
            if expected != rendered[:len(probes)]:
                continue
            literal = "".join([candidate.prefix, candidate.generation, *candidate.turns.values(), bos, eos])
            if "{{" in literal or "}}" in literal or '"""' in literal:
                break  # cannot be written as Go template text inside a Modelfile's triple quotes
            stops = tuple(dict.fromkeys(s for s in (*candidate.end_of_turn, eos) if s))
            return RecognisedTemplate(candidate, system_ok, bos, eos, add_bos, stops)
    families = ", ".join(f.title for f in FAMILIES)
    raise WorkbenchError(
        f"{where}: the model's chat template is none of the families an Ollama template can be written for "
        f"({families}); a translated template that differs from the original makes the model answer worse",
        "export the GGUF without --ollama and write the Modelfile's TEMPLATE by hand "
        "(https://github.com/ollama/ollama/blob/main/docs/template.md)",
    )


def _with_default_system(family: ChatFamily, rendered_user_only: str, bos: str, eos: str) -> ChatFamily | None:
    """The family, with the default system prompt the template inserts (if any) read off its rendering of a
    conversation without a system message; None if the rendering cannot be this family's."""
    probe = list(PROBES[0])
    plain = family.render(probe, bos, eos)
    if plain == rendered_user_only:
        return family
    if "system" not in family.turns:
        return None
    head = family.prefix.replace("{bos}", bos)
    tail = family.render(probe, bos, eos, with_prefix=False)
    if not (rendered_user_only.startswith(head) and rendered_user_only.endswith(tail)):
        return None
    system_turn = rendered_user_only[len(head):len(rendered_user_only) - len(tail)]
    before, _, after = family.turns["system"].replace("{eos}", eos).partition("{content}")
    if len(system_turn) < len(before) + len(after) or not (system_turn.startswith(before) and system_turn.endswith(after)):
        return None
    return replace(family, default_system=system_turn[len(before):len(system_turn) - len(after)])
