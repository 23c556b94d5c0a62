"""The Data tab's preview as HTML: each example rendered as it will be trained, trained text highlighted,
template tokens greyed, and optionally every token shaded so the tokenizer's cuts show."""

from __future__ import annotations

import html
import re
from pathlib import Path

TRAINED_STYLE = "background:rgba(46,157,78,0.35)"
# Template and special tokens (<|im_end|>, <s>, </s>, [INST]) are set apart so the text around them reads.
_SPECIAL = re.compile(r"(&lt;\|[^|&]*\|&gt;|&lt;/?s&gt;|\[/?INST\])")
# Every other token is shaded a little darker: trained tokens stay green, the others grey.
_TOKEN_SHADES = {True: ("rgba(46,157,78,0.30)", "rgba(46,157,78,0.55)"),
                 False: ("rgba(128,128,128,0.10)", "rgba(128,128,128,0.28)")}


def preview_html(previews: list, show_tokens: bool = False) -> str:
    """``core.data.PreviewExample``s as one HTML page, with a header per example (where it comes from, its
    tokens and how many are trained)."""
    parts = []
    for example in previews:
        if show_tokens and example.token_pieces:
            body = "".join(_token_html(text, trained, i) for i, (text, trained) in enumerate(example.token_pieces))
        else:
            body = "".join(f"<span style='{TRAINED_STYLE}'>{_mark_special(html.escape(text))}</span>" if trained
                           else _mark_special(html.escape(text)) for text, trained in example.segments)
        note = " · <b>truncated</b>" if example.truncated else ""
        path, _, where = example.source.rpartition(": ")
        source = f"{Path(path).name}: {where}" if path else example.source
        parts.append(f"<p style='margin-top:10px'><b>{html.escape(source)}</b> · {example.tokens} tokens, "
                     f"{example.trained_tokens} trained{note}</p>"
                     f"<pre style='white-space: pre-wrap; margin-left:8px'>{body}</pre>")
    return "<hr>".join(parts) or "<i>No usable example.</i>"


def _token_html(text: str, trained: bool, index: int) -> str:
    return f"<span style='background:{_TOKEN_SHADES[trained][index % 2]}'>{html.escape(text)}</span>"


def _mark_special(escaped: str) -> str:
    return _SPECIAL.sub(r"<span style='color:gray'>\1</span>", escaped)


def labelled_preview_html(samples: list, images: bool = False) -> str:
    """A classifier's first examples: ``(text, label, where)`` rows, or for an image folder ``(path, label, _)``
    with one thumbnail per class, drawn large enough to see (the files may be 8 × 8)."""
    if images:  # Qt's rich text has no inline blocks: a one-row table lays the thumbnails side by side
        return "<p>One image of each class:</p><table cellspacing='8'><tr>" + "".join(
            f"<td align='center'><img src='{html.escape(Path(path).as_uri())}' width='64' height='64'><br>"
            f"<small>{html.escape(str(label))}</small></td>" for path, label, _ in samples) + "</tr></table>"
    return "".join(
        f"<p><small>{html.escape(Path(where.rpartition(': ')[0]).name)}: "
        f"{html.escape(where.rpartition(': ')[2])} · label <b>{html.escape(str(label))}</b></small></p>"
        f"<pre style='white-space: pre-wrap'>{html.escape(text)}</pre><hr>"
        for text, label, where in samples) or "<i>No usable example.</i>"
