"""mdrender: render a practical subset of Markdown to HTML."""

from .blocks import CodeBlock, Heading, ListBlock, Paragraph, ThematicBreak, parse_blocks
from .escape import escape_html, escape_url
from .html import HtmlRenderer
from .inline import render_inline

__all__ = [
    "CodeBlock",
    "Heading",
    "HtmlRenderer",
    "ListBlock",
    "Paragraph",
    "ThematicBreak",
    "escape_html",
    "escape_url",
    "parse_blocks",
    "render",
    "render_inline",
]


def render(text: str) -> str:
    """Render Markdown ``text`` to an HTML string (one block per line)."""
    return HtmlRenderer().render(parse_blocks(text))
