"""Inline rendering: code spans, links, strong and emphasis."""

from __future__ import annotations

import re

from .escape import escape_html, escape_url

_CODE_RE = re.compile(r"(`+)(.+?)\1", re.S)
_LINK_RE = re.compile(r"\[([^\]]+)\]\(([^)\s]+)(?:\s+\"([^\"]*)\")?\)")
_STRONG_RE = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)")
_EM_RE = re.compile(r"\*(?=\S)(.+?)(?<=\S)\*|(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)")


def render_inline(text: str) -> str:
    """Render inline Markdown in ``text`` to HTML.

    Code spans are handled first so nothing inside them is interpreted.
    Line breaks inside a paragraph are kept as newlines.
    """
    out = []
    pos = 0
    for m in _CODE_RE.finditer(text):
        out.append(_render_text(text[pos : m.start()]))
        out.append(f"<code>{escape_html(m.group(2).strip())}</code>")
        pos = m.end()
    out.append(_render_text(text[pos:]))
    return "".join(out)


def _render_text(text: str) -> str:
    """Render links, then emphasis in the escaped text around them."""
    out = []
    pos = 0
    for m in _LINK_RE.finditer(text):
        out.append(_render_emphasis(escape_html(text[pos : m.start()])))
        label = _render_emphasis(escape_html(m.group(1)))
        title = f' title="{escape_html(m.group(3))}"' if m.group(3) else ""
        out.append(f'<a href="{escape_url(m.group(2))}"{title}>{label}</a>')
        pos = m.end()
    out.append(_render_emphasis(escape_html(text[pos:])))
    return "".join(out)


def _render_emphasis(escaped: str) -> str:
    """Apply ``**strong**`` and ``*em*`` to already-escaped text."""
    escaped = _STRONG_RE.sub(lambda m: f"<strong>{m.group(1) or m.group(2)}</strong>", escaped)
    escaped = _EM_RE.sub(lambda m: f"<em>{m.group(1) or m.group(2)}</em>", escaped)
    return escaped
