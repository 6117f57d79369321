import pytest

from tmplr import TemplateSyntaxError, parse, tokenize
from tmplr.lexer import BLOCK, TEXT, VAR
from tmplr.parser import For, If, Output, Text


def test_tokenize_kinds_and_lines():
    tokens = tokenize("Hi {{ name }}!\n{% if x %}y{% endif %}")
    assert [t.kind for t in tokens] == [TEXT, VAR, TEXT, BLOCK, TEXT, BLOCK]
    assert tokens[1].value == "name"
    assert tokens[3].lineno == 2


def test_tokenize_unclosed():
    with pytest.raises(TemplateSyntaxError):
        tokenize("Hello {{ name")


def test_parse_output_with_filters():
    (node,) = parse(tokenize("{{ user.name | default('anon') | upper }}"))
    assert isinstance(node, Output)
    assert node.expr.path == "user.name"
    assert node.expr.filters == [("default", ["anon"]), ("upper", [])]


def test_parse_literal_expression():
    (node,) = parse(tokenize("{{ 42 }}"))
    assert node.expr.literal == 42 and node.expr.path is None


def test_parse_if_else_and_for():
    nodes = parse(tokenize("{% if a %}x{% else %}y{% endif %}{% for i in items %}{{ i }}{% endfor %}"))
    assert isinstance(nodes[0], If) and nodes[0].else_body == [Text("y")]
    assert isinstance(nodes[1], For) and nodes[1].target == "i"


@pytest.mark.parametrize(
    "source",
    ["{% for x %}{% endfor %}", "{% if a %}", "{% endfor %}", "{% bogus %}", "{{ a | 1bad }}"],
)
def test_parse_errors(source):
    with pytest.raises(TemplateSyntaxError):
        parse(tokenize(source))


def test_parse_filter_args_with_commas():
    (node,) = parse(tokenize("{{ xs | join(', ') | default(1, \"a,b\") }}"))
    assert node.expr.filters == [("join", [", "]), ("default", [1, "a,b"])]
