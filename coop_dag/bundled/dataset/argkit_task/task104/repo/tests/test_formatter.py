from argkit import Parser, format_help, format_usage


def make_parser():
    p = Parser("copy", description="Copy files from one place to another.")
    p.add_option("-n", "--count", type=int, default=1, help="Number of copies.")
    p.add_option("-v", "--verbose", is_flag=True, help="Print progress.")
    p.add_option("--mode", required=True, help="Copy mode.")
    p.add_argument("source", help="File to copy.")
    p.add_argument("target", default="out")
    return p


def test_usage_line():
    assert format_usage(make_parser()) == (
        "usage: copy [-n COUNT] [-v] --mode MODE SOURCE [TARGET]"
    )


def test_help_page():
    assert format_help(make_parser()) == (
        "usage: copy [-n COUNT] [-v] --mode MODE SOURCE [TARGET]\n"
        "\n"
        "Copy files from one place to another.\n"
        "\n"
        "arguments:\n"
        "  SOURCE  File to copy.\n"
        "  TARGET\n"
        "\n"
        "options:\n"
        "  -n, --count COUNT  Number of copies.\n"
        "  -v, --verbose      Print progress.\n"
        "  --mode MODE        Copy mode.\n"
    )


def test_parser_methods_delegate():
    p = make_parser()
    assert p.format_usage() == format_usage(p)
    assert p.format_help(width=40) == format_help(p, width=40)


def test_long_help_wraps():
    p = Parser("tool")
    p.add_option("--level", help="word " * 30)
    lines = format_help(p, width=50).splitlines()
    option_lines = lines[lines.index("options:") + 1 :]
    assert len(option_lines) > 1
    assert all(len(line) <= 50 for line in option_lines)
    assert option_lines[1].startswith(" " * 17 + "word")
