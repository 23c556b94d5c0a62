"""Rendering examples to text, tokenizing them and labelling the tokens that carry the loss.

Rendering and loss masks
    Chat conversations are rendered with the tokenizer's chat template (``DataConfig.chat_template`` overrides
    it; a tokenizer without one gets ``FALLBACK_CHAT_TEMPLATE``, ChatML, whose turns end with ``<|im_end|>``).
    With ``train_on = "completion"`` (the default) the loss covers only the completion / the output / each
    assistant turn's content and the template's end-of-turn text after it; prompt, system and user tokens and
    the assistant header get the label -100. Assistant spans are found by rendering the conversation up to the
    generation prompt before each assistant turn and up to the end of that turn; tokens are then labelled from
    the tokenizer's character offsets (a token is trained when any of its characters is), so the mask is exact
    for any template and tokenizer. ``train_on = "all"`` trains on every token. EOS is appended to text,
    prompt-completion and Alpaca examples and trained, so the model learns to stop (chat templates end turns
    themselves). ``loss_weight`` 0 on an assistant message (LLaMA-Factory v1) leaves that turn out of the loss.
    Alpaca rows (``alpaca_template``) are rendered either as a user turn (instruction, then the input after a
    blank line) and an assistant turn (the output) of the chat template, masked as chat, or with the classic
    Stanford prompt. Plain text cut into chunks (``text_split = "chunks"``) is tokenized whole and cut into
    ``max_length``-token examples, each trained on every token but its first; only the last ends with EOS.
    The first token of every example never has a target (nothing precedes it), so its label is
    -100 too. Examples longer than ``max_length`` are cut at the end (a cut example keeps no EOS); they are
    counted. An example whose trained tokens were all cut off is dropped, counted and reported.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jinja2
import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .cache import _TOKENIZED, _fingerprint
from .formats import _CHAT_FORMATS, CANONICAL_COLUMNS
from .results import _RowProblem

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

# ChatML, as used by Qwen and SmolLM2: each turn is "<|im_start|>{role}\n{content}<|im_end|>\n".
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class _Rendered:
    text: str
    spans: tuple[tuple[int, int], ...]  # character ranges trained on with train_on = "completion"
    add_eos: bool  # append EOS (trained): the example ends with a completion the model must learn to stop after


@dataclass(frozen=True)
class _Encoded:
    ids: np.ndarray  # int32
    labels: np.ndarray  # int32, -100 where there is no loss
    offsets: np.ndarray  # (tokens, 2): character range of each token in the rendered text; empty if it has none
    full_length: int  # before truncation
    loss_tokens: int


def _render(row: dict[str, Any], fmt: str, tokenizer: Any, template: str | None, train_on: str,
            alpaca_chat: bool = False) -> _Rendered:
    if fmt == "text":
        return _Rendered(row["text"], ((0, len(row["text"])),), add_eos=True)
    if fmt == "prompt-completion":
        prompt = row["prompt"]
        completion = row["completion"]
    elif fmt == "alpaca" and alpaca_chat:
        return _render_chat(_alpaca_messages(row), tokenizer, template, find_spans=train_on == "completion")
    elif fmt == "alpaca":
        template_text = ALPACA_PROMPT if row["input"].strip() else ALPACA_PROMPT_NO_INPUT
        prompt = template_text.format(instruction=row["instruction"], input=row["input"])
        completion = row["output"]
    else:
        return _render_chat(row["messages"], tokenizer, template, find_spans=train_on == "completion",
                            untrained=row.get("untrained_turns") or ())
    return _Rendered(prompt + completion, ((len(prompt), len(prompt) + len(completion)),), add_eos=True)


def _alpaca_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """An Alpaca row as a conversation: the instruction (and the input after a blank line, as LLaMA-Factory joins
    them) from the user, the output from the assistant."""
    request = row["instruction"] + (f"\n\n{row['input']}" if row["input"].strip() else "")
    return [{"role": "user", "content": request}, {"role": "assistant", "content": row["output"]}]


def _alpaca_uses_chat(cfg: DataConfig, tokenizer: Any) -> bool:
    """``alpaca_template``: "auto" renders Alpaca rows with the chat template when there is one (the model's or a
    configured one); a base model without one keeps the classic prompt."""
    if cfg.alpaca_template != "auto":
        return cfg.alpaca_template == "chat"
    return cfg.chat_template is not None or bool(getattr(tokenizer, "chat_template", None))


def _render_chat(messages: list[dict[str, str]], tokenizer: Any, template: str | None, find_spans: bool,
                 untrained: Any = ()) -> _Rendered:
    """Render with the chat template; each assistant span runs from the end of the generation prompt that
    precedes the turn to the end of the rendering that includes the turn (content plus end-of-turn text)."""

    def render(turns: list[dict[str, str]], generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt,
                                             chat_template=template)

    try:
        text = render(messages)
        spans = []
        left_out = set(untrained)
        for i, message in enumerate(messages if find_spans else ()):
            if message["role"] != "assistant" or i in left_out:
                continue
            if i == 0:
                raise _RowProblem("messages[0]", "the conversation starts with an assistant message; "
                                                 "a user (or system) message must come first")
            before = render(messages[:i], generation_prompt=True)
            through = render(messages[: i + 1])
            if not (through.startswith(before) and text.startswith(through)):
                raise _RowProblem("messages", "the chat template renders earlier turns differently once later "
                                              "turns are added, so the assistant turns cannot be located; "
                                              "use train_on = 'all' or set data.chat_template")
            spans.append((len(before), len(through)))
    except (jinja2.TemplateError, ValueError, TypeError) as exc:  # the template rejected this conversation
        raise _RowProblem("messages", f"the chat template cannot render it: {exc}") from None
    return _Rendered(text, tuple(spans), add_eos=False)


def _trained_tokens(offsets: np.ndarray, spans: tuple[tuple[int, int], ...]) -> np.ndarray:
    """A token is trained when any of its characters lies in a span. A token without characters counts with
    the character before it: tokenizers that trim offsets give whitespace tokens an empty range at their end,
    and a BOS at 0 then has no character and stays untrained."""
    trained = np.zeros(len(offsets), dtype=bool)
    if not spans:
        return trained
    span_starts, span_ends = np.asarray(spans).T
    ends = offsets[:, 1]
    starts = np.minimum(offsets[:, 0], ends - 1)
    first = np.searchsorted(span_ends, starts, side="right")  # the first span ending after the token starts
    inside = first < len(spans)
    trained[inside] = span_starts[first[inside]] < ends[inside]
    return trained


class _Encoder:
    """Tokenizes rendered examples into ids, labels and lengths, for ``prepare`` (in batches) and ``preview``."""

    def __init__(self, tokenizer: Any, fmt: str, template: str | None, max_length: int, train_on: str,
                 *, alpaca_chat: bool = False, chunks: bool = False):
        self.tokenizer = tokenizer
        self.format = fmt
        self.template = template
        self.max_length = max_length
        self.train_on = train_on
        self.alpaca_chat = alpaca_chat and fmt == "alpaca"
        self.chunks = chunks and fmt == "text"
        # Chat templates write their own BOS; other formats get the tokenizer's usual special tokens.
        self.add_special_tokens = fmt not in _CHAT_FORMATS and not self.alpaca_chat
        # What the tokenized output depends on, besides the rows and this package's code.
        self.cache_key = _fingerprint(
            type(tokenizer).__name__, tokenizer.backend_tokenizer.to_str(), tokenizer.special_tokens_map,
            getattr(tokenizer, "add_bos_token", None), getattr(tokenizer, "add_eos_token", None),
            template if template is not None else tokenizer.chat_template, fmt, max_length, train_on,
            self.alpaca_chat, self.chunks,
        )

    @classmethod
    def for_config(cls, cfg: DataConfig, tokenizer: Any, fmt: str, template: str | None) -> _Encoder:
        return cls(tokenizer, fmt, template, cfg.max_length, cfg.train_on,
                   alpaca_chat=_alpaca_uses_chat(cfg, tokenizer), chunks=cfg.text_split == "chunks")

    def render(self, row: dict[str, Any]) -> _Rendered:
        return _render(row, self.format, self.tokenizer, self.template, self.train_on, self.alpaca_chat)

    def encode_pieces(self, rendered: list[_Rendered]) -> list[list[_Encoded]]:
        """The examples each rendered text becomes: itself, or (plain text in chunks) its ``max_length``-token
        chunks."""
        if not self.chunks:
            return [[e] for e in self.encode(rendered)]
        batch = self.tokenizer([r.text for r in rendered], add_special_tokens=self.add_special_tokens,
                               return_offsets_mapping=True, return_attention_mask=False, verbose=False)
        out = []
        for r, ids, offsets in zip(rendered, batch["input_ids"], batch["offset_mapping"]):
            ids_, offsets_, trained = self._with_eos(r, ids, offsets)
            out.append([self._cut(ids_[k:k + self.max_length], offsets_[k:k + self.max_length],
                                  trained[k:k + self.max_length], self.max_length)
                        for k in range(0, len(ids_), self.max_length)])
        return out

    def encode(self, rendered: list[_Rendered]) -> list[_Encoded]:
        batch = self.tokenizer([r.text for r in rendered], add_special_tokens=self.add_special_tokens,
                               return_offsets_mapping=True, return_attention_mask=False, verbose=False)
        return [self._label(r, ids, offsets)
                for r, ids, offsets in zip(rendered, batch["input_ids"], batch["offset_mapping"])]

    def _label(self, rendered: _Rendered, ids: list[int], offsets: list[tuple[int, int]]) -> _Encoded:
        return self._cut(*self._with_eos(rendered, ids, offsets), self.max_length)

    def _with_eos(self, rendered: _Rendered, token_ids: list[int], token_offsets: list[tuple[int, int]]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ids, character offsets and the trained flag of every token, with EOS appended where it belongs."""
        ids = np.asarray(token_ids, dtype=np.int32)
        offsets = np.asarray(token_offsets, dtype=np.int64).reshape(-1, 2)
        trained = np.ones(len(ids), bool) if self.train_on == "all" else _trained_tokens(offsets, rendered.spans)
        eos = self.tokenizer.eos_token_id
        if rendered.add_eos and eos is not None:
            if not len(ids) or ids[-1] != eos:  # some tokenizers already end every text with EOS
                end = len(rendered.text)
                ids = np.append(ids, np.int32(eos))
                offsets = np.vstack([offsets, [end, end]])
                trained = np.append(trained, True)
            trained[-1] = True
        return ids, offsets, trained

    @staticmethod
    def _cut(ids: np.ndarray, offsets: np.ndarray, trained: np.ndarray, max_length: int) -> _Encoded:
        full_length = len(ids)
        ids, offsets, trained = ids[:max_length], offsets[:max_length], trained[:max_length]
        labels = np.where(trained, ids, np.int32(-100))
        labels[:1] = -100  # nothing precedes the first token, so it is never a target
        return _Encoded(ids, labels, offsets, full_length, int(np.count_nonzero(labels != -100)))


def _tokenize_rows(batch: dict[str, list], encoder: _Encoder) -> dict[str, list]:
    """``Dataset.map`` function: canonical rows → tokens; rows the template rejects get ``_problem`` set. A row
    cut into chunks gives one output row per chunk, numbered by the line its chunk starts on."""
    count = len(batch["_row"])
    problems = [("", "")] * count
    rendered, positions = [], []
    for i in range(count):
        row = {name: batch[name][i] for name in CANONICAL_COLUMNS[encoder.format]}
        try:
            rendered.append(encoder.render(row))
            positions.append(i)
        except _RowProblem as problem:
            problems[i] = (problem.field or "", problem.reason)
    encoded = dict(zip(positions, encoder.encode_pieces(rendered))) if rendered else {}
    texts = dict(zip(positions, (r.text for r in rendered)))
    out: dict[str, list] = {name: [] for name in _TOKENIZED}
    nothing = np.zeros(0, dtype=np.int32)
    for i in range(count):
        for k, e in enumerate(encoded.get(i) or [None]):
            out["input_ids"].append(e.ids if e else nothing)
            out["labels"].append(e.labels if e else nothing)
            out["length"].append(len(e.ids) if e else 0)
            out["full_length"].append(e.full_length if e else 0)
            out["loss_tokens"].append(e.loss_tokens if e else 0)
            out["_field"].append(problems[i][0])
            out["_problem"].append(problems[i][1])
            out["_source"].append(batch["_source"][i])
            line = batch["_row"][i]
            if e is not None and k and len(e.offsets):
                line += texts[i].count("\n", 0, int(e.offsets[0][0]))
            out["_row"].append(line)
    return out


def _segments(text: str, encoded: _Encoded, tokenizer: Any, chunk: bool = False,
              per_token: bool = False) -> list[tuple[str, bool]]:
    """(text, trained) pieces in token order, merged where the flag does not change (``per_token``: one piece
    per token, for showing where tokens begin). Each token shows the text from the end of the previous one to
    its own end, so whitespace that a tokenizer leaves out of its offsets is shown too. A ``chunk`` of a longer
    text shows its own tokens' text only."""
    added = set(tokenizer.added_tokens_decoder)  # BOS, EOS and other tokens that are not spelled out in text
    segments: list[tuple[str, bool]] = []
    cursor = int(encoded.offsets[0][0]) if chunk and len(encoded.offsets) else 0

    def extend_last(extra: str) -> None:  # text no token's offsets cover belongs with the token before it
        if extra and segments:
            segments[-1] = (segments[-1][0] + extra, segments[-1][1])

    for token, (start, end), label in zip(encoded.ids.tolist(), encoded.offsets.tolist(), encoded.labels.tolist()):
        if end > cursor:
            piece = text[cursor:end]
            cursor = end
        elif start == end and token in added:  # BOS/EOS added by the tokenizer or by us: show the token
            extend_last(text[cursor:start])
            cursor = max(cursor, start)
            piece = tokenizer.convert_ids_to_tokens(token)
        else:  # several byte-level tokens share one character, which is already shown
            continue
        trained = label != -100
        if segments and segments[-1][1] == trained and not per_token:
            segments[-1] = (segments[-1][0] + piece, trained)
        else:
            segments.append((piece, trained))
    if len(encoded.ids) == encoded.full_length and not chunk:  # not truncated: the whole text is shown
        extend_last(text[cursor:])
    return segments


def _require_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"The tokenizer ({type(tokenizer).__name__}) reports no character offsets, which the loss "
                        "masks need.", "Use the model's fast tokenizer (tokenizer.json); most models ship one.")


# The conversation a configured template is tried on before any row is: it fails to render only if the template
# does not parse (or rejects every conversation).
_PROBE = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def _chat_template(cfg: DataConfig, tokenizer: Any) -> str | None:
    """The template to pass to apply_chat_template: the configured one, None for the tokenizer's own, or
    the ChatML fallback for a tokenizer without one."""
    if cfg.chat_template is None:
        return None if tokenizer.chat_template else FALLBACK_CHAT_TEMPLATE
    try:
        tokenizer.apply_chat_template(_PROBE, tokenize=False, chat_template=cfg.chat_template)
    except jinja2.TemplateSyntaxError as exc:
        raise _template_syntax_error(exc) from None
    except (jinja2.TemplateError, ValueError, TypeError):
        pass  # it parses; a template that rejects particular conversations is reported per row
    return cfg.chat_template


def _template_syntax_error(exc: jinja2.TemplateSyntaxError) -> DataError:
    """One message for a configured template that does not parse, whether ``detect`` (no tokenizer) or the
    preparation (with one) finds it."""
    return DataError(f"data.chat_template: not a valid Jinja template: {exc.message} (line {exc.lineno}).",
                     "Fix the template's syntax, or remove data.chat_template to use the tokenizer's own template.")


def _check_template_syntax(template: str) -> None:
    """Parse a configured chat template as transformers will, before the model's tokenizer is loaded, so
    ``detect`` reports a syntax error before a run starts."""
    try:
        _stand_in_tokenizer().apply_chat_template(_PROBE, tokenize=False, chat_template=template)
    except jinja2.TemplateSyntaxError as exc:
        raise _template_syntax_error(exc) from None
    except Exception:  # it parses; anything else is left to the real tokenizer, which reports it per row
        pass


@functools.lru_cache(maxsize=1)
def _stand_in_tokenizer() -> Any:
    """A tokenizer of one word. Rendering text takes no vocabulary, so with it the public ``apply_chat_template``
    compiles a template in transformers' own sandbox, with the tag (``{% generation %}``), extensions, filters
    and globals transformers adds to chat templates; a plain jinja2 environment would reject some templates
    transformers accepts, and the private compile function behind it may change."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")))
