"""Which functions and classes a unified git diff changes, per file.

The templated teacher names these regions in its plan (`coop_dag.agent.teachers`), so a
plan says not only which files an agent edits but where in them.
"""

from __future__ import annotations

import ast
import re
import threading
from pathlib import Path

PATCH_FILE_RE = re.compile(r"^diff --git a/(\S+) b/(\S+)$", re.MULTILINE)
MODULE_LEVEL = "module level"  # changes outside any function or class (imports, constants)
_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@ ?(.*)$")
_DEF_RE = re.compile(r"^(\s*)(?:async\s+)?(def|class)\s+([A-Za-z_]\w*)")


def patch_files(patch_text: str) -> list[str]:
    """Files a unified git diff touches, in order."""
    return list(dict.fromkeys(m.group(2) for m in PATCH_FILE_RE.finditer(patch_text)))


# CPython 3.11's `ast.parse` is not safe in two threads at once: the AST constructor's depth
# counter is shared, so a parse interleaved with another raises "SystemError: AST constructor
# recursion depth mismatch" (python/cpython#106905). Our parses take turns; the standard
# library parses too (traceback formatting, `inspect.signature` of builtins), outside any lock
# of ours, so a collision with those is parsed again.
_AST_LOCK = threading.Lock()
_AST_ATTEMPTS = 5


def _parse(source: str) -> ast.Module:
    for attempt in range(_AST_ATTEMPTS):
        try:
            with _AST_LOCK:
                return ast.parse(source)
        except SystemError as err:
            if "recursion depth mismatch" not in str(err) or attempt == _AST_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _scopes(source: str) -> list[tuple[int, int, int, str, bool]]:
    """`(first line, last line, column, qualified name, is_function)` of every class and of every
    function not nested in another function (a nested helper is part of its function)."""
    try:
        tree = _parse(source)
    except SyntaxError:
        return []
    out: list[tuple[int, int, int, str, bool]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                is_fn = not isinstance(child, ast.ClassDef)
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                out.append((first, child.end_lineno or child.lineno, child.col_offset, name, is_fn))
                if not is_fn:
                    visit(child, f"{name}.")

    visit(tree, "")
    return out


def _label(name: str, is_function: bool) -> str:
    return f"{name}()" if is_function else name


def _enclosing(scopes: list, line: int, indent: int) -> str | None:
    """The innermost def/class around base line `line` whose body `indent` could be in."""
    best = None
    for first, last, col, name, is_fn in scopes:
        if first <= line <= last and col < indent:
            if best is None or col > best[0]:
                best = (col, _label(name, is_fn))
    return best[1] if best else None


class _HunkContext:
    """Without base sources: the scope a hunk line is in, from the definitions the hunk shows
    (its header's context line, which git takes from the last unindented line, and the
    definitions among its lines)."""

    def __init__(self, header: str) -> None:
        self.top: tuple[str, bool] | None = None  # last unindented def/class
        self.inner: tuple[int, str] | None = None  # last indented def in a class: (indent, name)
        self.see(header)

    def see(self, text: str) -> None:
        definition = _DEF_RE.match(text)
        if not definition:
            return
        indent, name = len(definition.group(1)), definition.group(3)
        if indent == 0:
            self.top, self.inner = (name, definition.group(2) == "def"), None
        elif self.top and not self.top[1] and definition.group(2) == "def":
            self.inner = (indent, name)

    def outer(self, indent: int) -> str | None:
        if indent == 0 or self.top is None:
            return None
        name, is_fn = self.top
        if not is_fn and self.inner and indent > self.inner[0]:
            return f"{name}.{self.inner[1]}()"
        return _label(name, is_fn)


def patch_regions(patch_text: str, base_dir: Path | None = None) -> dict[str, list[str]]:
    """Per file a unified git diff changes, the functions/classes the change touches, in order:
    `Class.method()` for functions, `Class` for class bodies, `module level` for the rest
    (imports, constants), and new definitions by their own names. Nested functions count as
    their enclosing function.

    With the base sources (`base_dir`), a changed line is placed in its innermost enclosing
    definition; without them, only what the hunk shows is used.
    """
    regions: dict[str, list[str]] = {}
    for block in re.split(r"^diff --git ", patch_text, flags=re.M)[1:]:
        match = re.match(r"a/(\S+) b/(\S+)", block)
        if not match:
            continue
        path = match.group(2)
        found: dict[str, None] = {}
        source = None
        if base_dir is not None and (base_dir / path).is_file():
            source = (base_dir / path).read_text(encoding="utf-8", errors="replace")
        scopes = _scopes(source) if source is not None else []
        old_line = 0
        context = _HunkContext("")
        new_def: tuple[int, str] | None = None  # a definition this hunk adds: (indent, label)
        for line in block.splitlines():
            hunk = _HUNK_RE.match(line)
            if hunk:
                old_line, context, new_def = (
                    int(hunk.group(1)) - 1,
                    _HunkContext(hunk.group(2)),
                    None,
                )
                continue
            line = line or " "  # a blank context line whose trailing space was stripped
            if line[0] not in " +-" or line.startswith(("+++", "---")):
                continue
            kind, text = line[0], line[1:]
            indent = len(text) - len(text.lstrip())
            if kind != "+":
                old_line += 1
            if not text.strip():
                continue
            if kind == " ":
                context.see(text)
                if new_def and indent <= new_def[0]:
                    new_def = None
                continue
            if kind == "+" and new_def and indent > new_def[0]:
                found.setdefault(new_def[1], None)
                context.see(text)
                continue
            new_def = None
            if scopes:
                # a removed line lies in its own scope; an added one in the scope of the base
                # line before it, if indented deeper than that scope's header
                outer = _enclosing(scopes, old_line, indent) if old_line else None
            else:
                outer = context.outer(indent)
            context.see(text)
            definition = _DEF_RE.match(text)
            if definition and outer is None:
                region = _label(definition.group(3), definition.group(2) == "def")
            elif definition and not outer.endswith("()"):  # a method
                region = _label(f"{outer}.{definition.group(3)}", definition.group(2) == "def")
            else:  # a statement, or a helper nested in a function
                region = outer or MODULE_LEVEL
            if definition and kind == "+":
                new_def = (indent, region)
            found.setdefault(region, None)
        regions[path] = list(found)
    return regions
