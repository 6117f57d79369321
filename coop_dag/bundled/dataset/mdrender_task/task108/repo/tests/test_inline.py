from mdrender import render_inline


def test_plain_text_is_escaped():
    assert render_inline("a < b & c") == "a &lt; b &amp; c"


def test_strong_and_emphasis():
    assert render_inline("**bold** and *it* and __b2__ _i2_") == (
        "<strong>bold</strong> and <em>it</em> and <strong>b2</strong> <em>i2</em>"
    )


def test_underscores_inside_words_are_literal():
    assert render_inline("snake_case_name and 2 * 3 * 4") == "snake_case_name and 2 * 3 * 4"


def test_code_spans_are_literal():
    assert render_inline("use `**x** < y` now") == "use <code>**x** &lt; y</code> now"
    assert render_inline("``a ` b``") == "<code>a ` b</code>"


def test_links():
    assert render_inline('see [the *docs*](http://x.org/a b "T & C")') == (
        'see [the <em>docs</em>](http://x.org/a b &quot;T &amp; C&quot;)'
    )
    assert render_inline('see [the *docs*](http://x.org/ab "T & C")') == (
        'see <a href="http://x.org/ab" title="T &amp; C">the <em>docs</em></a>'
    )


def test_unsafe_link_is_neutralised():
    assert render_inline("[x](javascript:alert(1))") == '<a href="#">x</a>)'
