"""Render max-activating examples for a terminal (ANSI, activating token highlighted) or as escaped HTML."""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Sequence

from r1_plugin.features.records import Example

ANSI_HIGHLIGHT = "\x1b[1;30;43m"  # bold black on yellow
ANSI_DIM = "\x1b[2m"
ANSI_RESET = "\x1b[0m"

_VISIBLE = {"\n": "↵", "\r": "␍", "\t": "⇥"}


def visible(token: str) -> str:
    """A token safe to print: newlines/tabs as symbols, other control characters (e.g. ESC) as \\xNN."""
    out = []
    for ch in token:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf") and ch not in ("\u200d",):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def render_example_terminal(example: Example, color: bool = True) -> str:
    """One example on one line: strength, position, the window with the activating token highlighted."""
    pieces = []
    for i, tok in enumerate(example.tokens):
        shown = visible(tok)
        if i == example.position:
            shown = f"{ANSI_HIGHLIGHT}{shown}{ANSI_RESET}" if color else f"<<{shown}>>"
        pieces.append(shown)
    where = f"seq {example.sequence_id} tok {example.token_idx}"
    prefix = (
        f"{example.strength:8.4f}  {ANSI_DIM}{where:>22}{ANSI_RESET}  "
        if color
        else f"{example.strength:8.4f}  {where:>22}  "
    )
    return prefix + "".join(pieces)


def render_terminal(
    examples: Sequence[Example], feature_id: int | None = None, label: str | None = None, color: bool = True
) -> str:
    """A header line (feature id and label) and one line per example, for printing to a terminal."""
    lines = []
    if feature_id is not None or label is not None:
        head = f"feature {feature_id}" if feature_id is not None else "feature"
        lines.append(head + (f": {visible(label)}" if label is not None else ""))
    if not examples:
        lines.append("  (no activations recorded)")
    lines += [render_example_terminal(ex, color=color) for ex in examples]
    return "\n".join(lines)


_CSS = (
    ".r1f{font-family:monospace}.r1f .ex{white-space:pre-wrap;margin:2px 0}"
    ".r1f .s{color:#666;display:inline-block;min-width:6em}"
    ".r1f mark{background:#ffd54f;font-weight:bold}.r1f .nl{color:#aaa}"
)


def _html_token(token: str) -> str:
    """An escaped token, control characters made visible; a newline shows as a faint ↵ and a line break."""
    pieces = [html.escape(visible(part), quote=True) for part in token.split("\n")]
    return "<span class='nl'>↵</span>\n".join(pieces)


def render_example_html(example: Example) -> str:
    """One example as a `<div>`: every token HTML-escaped, the activating one in a `<mark>`."""
    parts = []
    for i, tok in enumerate(example.tokens):
        if i == example.position:
            parts.append(f"<mark title='strength {example.strength:.4f}'>{_html_token(tok)}</mark>")
        else:
            parts.append(_html_token(tok))
    title = html.escape(f"sequence {example.sequence_id}, token {example.token_idx}", quote=True)
    return (
        f"<div class='ex' title='{title}'><span class='s'>{example.strength:.4f}</span> "
        + "".join(parts)
        + "</div>"
    )


def render_html(
    examples: Sequence[Example],
    feature_id: int | None = None,
    label: str | None = None,
    full_page: bool = False,
) -> str:
    """The examples as an HTML fragment (or a full page); all database text is escaped."""
    head = ""
    if feature_id is not None or label is not None:
        text = (f"Feature {feature_id}" if feature_id is not None else "Feature") + (
            f": {label}" if label else ""
        )
        head = f"<h3>{html.escape(text, quote=True)}</h3>"
    body = (
        "".join(render_example_html(ex) for ex in examples)
        or "<div class='ex'>(no activations recorded)</div>"
    )
    fragment = f"<div class='r1f'><style>{_CSS}</style>{head}{body}</div>"
    if not full_page:
        return fragment
    title = html.escape(f"feature {feature_id}" if feature_id is not None else "features", quote=True)
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body>{fragment}</body></html>"
