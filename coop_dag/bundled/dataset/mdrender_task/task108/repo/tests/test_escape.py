import pytest

from mdrender import escape_html, escape_url
from mdrender.escape import is_safe_url


def test_escape_html():
    assert escape_html("<a href=\"x\">Tom & Jerry's</a>") == (
        "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#x27;s&lt;/a&gt;"
    )


def test_escape_html_without_quotes():
    assert escape_html("\"it's\" <b>", quote_chars=False) == "\"it's\" &lt;b&gt;"


@pytest.mark.parametrize(
    "url, safe",
    [
        ("https://example.com", True),
        ("/relative/path", True),
        ("page?x=a:b", True),
        ("mailto:me@example.com", True),
        ("javascript:alert(1)", False),
        ("JavaScript :alert(1)", False),
        ("data:text/html,hi", False),
    ],
)
def test_is_safe_url(url, safe):
    assert is_safe_url(url) is safe


def test_escape_url():
    assert escape_url("https://example.com/a b?q=1&r=2") == (
        "https://example.com/a%20b?q=1&amp;r=2"
    )
    assert escape_url("javascript:alert(1)") == "#"
