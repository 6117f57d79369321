from coop_dag.util.paths import extract_paths


def test_paths_in_backticks_code_blocks_and_lists():
    text = (
        "Edit `src/click/termui.py` and ./dspy/clients/cache.py.\n"
        "```python\nfrom x import y  # see lib/util.py\n```\n"
        "**Files Modified**\n- `src/a_b/c-d.py`\n- README.md\n"
    )
    assert extract_paths(text) == [
        "src/click/termui.py",
        "dspy/clients/cache.py",
        "lib/util.py",
        "src/a_b/c-d.py",
        "README.md",
    ]


def test_prose_versions_and_urls_are_not_paths():
    assert extract_paths("e.g. version 1.2, see https://example.com/a/b.py or v2.0") == []


def test_dedup_keeps_first_seen_order():
    assert extract_paths("b.py a/c.py b.py ./a/c.py") == ["b.py", "a/c.py"]
