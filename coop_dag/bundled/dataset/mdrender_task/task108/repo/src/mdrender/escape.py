"""HTML and URL escaping helpers."""

from __future__ import annotations

from urllib.parse import quote

_HTML_ESCAPES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "'": "&#x27;",
}

_SAFE_SCHEMES = ("http", "https", "mailto", "ftp")


def escape_html(text: str, quote_chars: bool = True) -> str:
    """Escape ``&``, ``<``, ``>`` and, if ``quote_chars``, both quote characters."""
    out = []
    for ch in text:
        if ch in "\"'" and not quote_chars:
            out.append(ch)
        else:
            out.append(_HTML_ESCAPES.get(ch, ch))
    return "".join(out)


def is_safe_url(url: str) -> bool:
    """Reject ``javascript:`` and other unknown schemes; relative URLs are fine."""
    head, sep, _ = url.partition(":")
    if not sep or "/" in head or "?" in head or "#" in head:
        return True
    return head.strip().lower() in _SAFE_SCHEMES


def escape_url(url: str) -> str:
    """Percent-encode unsafe characters and HTML-escape the result for an attribute.

    Unsafe schemes are replaced by ``#`` so they can never be followed.
    """
    if not is_safe_url(url):
        return "#"
    return escape_html(quote(url, safe="/:?#[]@!$&'()*+,;=%-._~"))
