"""The one file-path regex shared by task discovery and the behaviour metrics.

The seed's v5-tf fix hinged on the plan body, the bash target and the task text all being
matched by the *same* regex, so it lives here and nowhere else.
"""

from __future__ import annotations

import re

# Extensions that mark a token as a source/config path rather than prose ("e.g.", "v1.2").
_EXTENSIONS = (
    "py|pyi|md|rst|txt|json|yaml|yml|toml|cfg|ini|sh|js|ts|tsx|jsx|go|rs|java|c|h|cc|cpp|hpp|"
    "html|css|sql|lock|patch|diff"
)
# A path: optional directories then a file name with a known extension, not glued to a
# preceding word character, slash or dot (so URLs' tails and "foo.bar.py" fragments stay whole).
FILE_PATH_RE = re.compile(
    rf"(?<![\w/.-])((?:[A-Za-z0-9_.-]+/)*[A-Za-z0-9_-][A-Za-z0-9_.-]*\.(?:{_EXTENSIONS}))(?![\w/])"
)


def extract_paths(text: str) -> list[str]:
    """File paths named in `text`, in first-seen order, deduplicated.

    Works on prose, `backticked` paths, fenced code blocks and "Files Modified" lists alike.
    A leading "./" is dropped so "./src/a.py" and "src/a.py" are the same path.
    """
    seen: dict[str, None] = {}
    for match in FILE_PATH_RE.finditer(text or ""):
        path = match.group(1)
        while path.startswith("./"):
            path = path[2:]
        if path.startswith(".") and "/" not in path:
            continue  # ".py", ".gitignore"-like tokens are not task files
        seen.setdefault(path, None)
    return list(seen)
