import pytest

from mdrender import HtmlRenderer, render
from mdrender.blocks import Paragraph


def test_render_document():
    src = (
        "# Title\n"
        "\n"
        "Intro with `code` and a [link](/x).\n"
        "\n"
        "1. first\n"
        "2. **second**\n"
        "\n"
        "```sh\n"
        "echo \"<hi>\"\n"
        "```\n"
        "---\n"
    )
    assert render(src) == (
        "<h1>Title</h1>\n"
        '<p>Intro with <code>code</code> and a <a href="/x">link</a>.</p>\n'
        "<ol><li>first</li><li><strong>second</strong></li></ol>\n"
        '<pre><code class="language-sh">echo "&lt;hi&gt;"\n</code></pre>\n'
        "<hr />\n"
    )


def test_ordered_list_start_attribute():
    assert render("5. five\n6. six") == '<ol start="5"><li>five</li><li>six</li></ol>\n'


def test_empty_code_block():
    assert render("```\n```") == "<pre><code></code></pre>\n"


def test_renderer_can_be_customised():
    class Custom(HtmlRenderer):
        def render_paragraph(self, block):
            return f"<div>{block.text}</div>"

    assert Custom().render([Paragraph("hi")]) == "<div>hi</div>\n"


def test_unknown_block_type():
    with pytest.raises(TypeError):
        HtmlRenderer().render([object()])
