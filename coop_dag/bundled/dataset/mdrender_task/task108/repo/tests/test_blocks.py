from mdrender import CodeBlock, Heading, ListBlock, Paragraph, ThematicBreak, parse_blocks


def test_headings():
    assert parse_blocks("# One\n### Three ###\n####### seven") == [
        Heading(1, "One"),
        Heading(3, "Three"),
        Paragraph("####### seven"),
    ]


def test_paragraphs_are_split_on_blank_lines():
    assert parse_blocks("a\nb\n\n\nc  \n") == [Paragraph("a\nb"), Paragraph("c")]


def test_fenced_code_keeps_content_verbatim():
    src = "```python\ndef f():\n    return '# not a heading'\n```\nafter"
    assert parse_blocks(src) == [
        CodeBlock("def f():\n    return '# not a heading'", "python"),
        Paragraph("after"),
    ]


def test_unclosed_fence_runs_to_end():
    assert parse_blocks("~~~\nx\ny") == [CodeBlock("x\ny", "")]


def test_bullet_list_with_continuation():
    assert parse_blocks("- one\n  more\n* two\n\npara") == [
        ListBlock(False, ["one\nmore", "two"]),
        Paragraph("para"),
    ]


def test_ordered_list_start_and_kind_change():
    assert parse_blocks("3. c\n4) d\n- e") == [
        ListBlock(True, ["c", "d"], 3),
        ListBlock(False, ["e"]),
    ]


def test_thematic_break_and_interruptions():
    assert parse_blocks("text\n***\n- item\n# Head") == [
        Paragraph("text"),
        ThematicBreak(),
        ListBlock(False, ["item"]),
        Heading(1, "Head"),
    ]


def test_crlf_and_empty_input():
    assert parse_blocks("") == []
    assert parse_blocks("a\r\nb") == [Paragraph("a\nb")]
