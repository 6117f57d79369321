import pytest

from tmplr import Template, TemplateError, UndefinedError, render


def test_variables_and_paths():
    class User:
        name = "ada"

    assert render("Hi {{ user.name }}, {{ items.1 }}", user=User(), items=["a", "b"]) == "Hi ada, b"
    assert render("{{ cfg.debug }}", cfg={"debug": True}) == "True"


def test_undefined_is_empty_unless_strict():
    assert render("[{{ missing.x }}]") == "[]"
    with pytest.raises(UndefinedError):
        Template("{{ missing }}", strict=True).render()


def test_filters():
    assert render("{{ n | upper }}-{{ n | title }}", n="hello world") == "HELLO WORLD-Hello World"
    assert render("{{ xs | join(', ') }} ({{ xs | length }})", xs=[1, 2, 3]) == "1, 2, 3 (3)"
    assert render("{{ name | default('anon') }}", name="") == "anon"
    assert render("{{ '  x ' | trim }}") == "x"


def test_unknown_filter():
    with pytest.raises(TemplateError):
        render("{{ x | nope }}", x=1)


def test_custom_filter():
    t = Template("{{ x | double }}", filters={"double": lambda v: v * 2})
    assert t.render(x=21) == "42"


def test_if_else_and_not():
    src = "{% if user %}hi {{ user }}{% else %}guest{% endif %}"
    assert render(src, user="bob") == "hi bob"
    assert render(src) == "guest"
    assert render("{% if not items %}empty{% endif %}", items=[]) == "empty"


def test_for_loop_scoping():
    src = "{% for x in xs %}{{ x }}{{ sep }}{% endfor %}{{ x }}"
    assert render(src, xs=[1, 2], sep=";") == "1;2;"
    assert render("{% for x in nothing %}{{ x }}{% endfor %}") == ""


def test_nested_loops():
    src = "{% for row in rows %}{% for c in row %}{{ c }}{% endfor %}|{% endfor %}"
    assert render(src, rows=[[1, 2], [3]]) == "12|3|"
