"""Render parsed blocks to HTML."""

from __future__ import annotations

from .escape import escape_html
from .inline import render_inline


class HtmlRenderer:
    """Turn block nodes into HTML, one top-level element per line.

    Each block type ``Foo`` is rendered by a ``render_foo`` method, so
    subclasses can override the output of individual block types.
    """

    def render(self, blocks) -> str:
        return "".join(self.render_block(block) + "\n" for block in blocks)

    def render_block(self, block) -> str:
        method = getattr(self, "render_" + type(block).__name__.lower(), None)
        if method is None:
            raise TypeError(f"cannot render {type(block).__name__}")
        return method(block)

    def render_heading(self, block) -> str:
        return f"<h{block.level}>{render_inline(block.text)}</h{block.level}>"

    def render_paragraph(self, block) -> str:
        return f"<p>{render_inline(block.text)}</p>"

    def render_codeblock(self, block) -> str:
        cls = f' class="language-{escape_html(block.lang)}"' if block.lang else ""
        code = escape_html(block.code, quote_chars=False)
        if code:
            code += "\n"
        return f"<pre><code{cls}>{code}</code></pre>"

    def render_listblock(self, block) -> str:
        tag = "ol" if block.ordered else "ul"
        start = f' start="{block.start}"' if block.ordered and block.start != 1 else ""
        items = "".join(f"<li>{render_inline(item)}</li>" for item in block.items)
        return f"<{tag}{start}>{items}</{tag}>"

    def render_thematicbreak(self, block) -> str:
        return "<hr />"
