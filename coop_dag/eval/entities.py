"""Real task entities of a pair, for plan_content and follow_through (`coop_dag.eval.metrics`):
the paths and function/class names a plan may name, from the features' texts and the task's base
repository, and how a mention in a message resolves to them."""

from __future__ import annotations

import builtins
import keyword
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from coop_dag import BUNDLED_DATASET
from coop_dag.dataset.base_repo import BaseTree, base_tree
from coop_dag.dataset.tasks import files_modified
from coop_dag.util.paths import extract_paths

# A "/" that starts an absolute path (not preceded by a path character). The shared regex does
# not match absolute paths, so they are made relative before it runs.
ABS_SLASH_RE = re.compile(r"(?<![\w./-])/(?=[\w.-])")


@dataclass(frozen=True)
class TaskEntities:
    """What counts as a *real* task entity for one pair: paths (base-repository files and the
    features' Files Modified lists) and function/class names (named by the feature texts or
    defined in the task's files). `sources` says where they came from."""

    files: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()
    sources: tuple[str, ...] = ()

    def resolve_path(self, mention: str) -> list[str]:
        """The real files a mentioned path names (see the module docstring); [] if invented."""
        mention = _normalise_path(mention)
        if not mention:
            return []
        if mention in self.files:
            return [mention]
        return sorted(
            f for f in self.files if mention.endswith("/" + f) or f.endswith("/" + mention)
        )


_WORKSPACE_PREFIXES = ("workspace/repo/", "repo/")


def _normalise_path(path: str) -> str:
    path = path.strip().lstrip("/")
    while path.startswith("./"):
        path = path[2:]
    return path


def mentioned_paths(text: str) -> list[str]:
    """Paths in `text`, absolute ones included (`/workspace/repo/src/a.py` -> `src/a.py`;
    other absolute paths lose their leading "/"). First-seen order, deduplicated."""
    out: dict[str, None] = {}
    for p in extract_paths(ABS_SLASH_RE.sub(" ", text or "")):
        for prefix in _WORKSPACE_PREFIXES:
            if p.startswith(prefix):
                p = p[len(prefix) :]
                break
        out.setdefault(p, None)
    return list(out)


_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CODE_SPAN_RE = re.compile(r"`([^`\n]+)`")
_FENCE_RE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
_DEF_RE = re.compile(r"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+([A-Za-z_]\w*)", re.MULTILINE)
_CALL_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
# Names that are never task entities, even when a feature text writes them as code.
_NOT_ENTITIES = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | {
    "self", "cls", "Any", "Optional", "Union", "Callable", "List", "Dict", "Tuple", "Set",
    "None", "True", "False",
}  # fmt: skip
# Methods of builtin types: `text.rstrip()` in a feature text names Python, not the task (a task
# file that defines one, e.g. a cache's `get`, still makes it an entity via `defined_names`).
_BUILTIN_METHODS = frozenset(
    n for t in (str, bytes, dict, list, set, tuple, int, float) for n in dir(t)
)


def _code_shaped(name: str) -> bool:
    return "_" in name or any(c.isupper() or c.isdigit() for c in name)


def _class_like(name: str) -> bool:
    return name[0].isupper() and any(c.islower() for c in name[1:])


def _entity_name(name: str) -> bool:
    dunder = name.startswith("__") and name.endswith("__")  # Python's protocol, not the task's
    return (
        len(name) >= 3 and not dunder and name not in _NOT_ENTITIES and name not in _prompt_names()
    )


def _blank_paths(text: str) -> str:
    """`text` with its paths blanked, so a path's parts (`spec` of `src/spec.py`) are not names."""
    text = ABS_SLASH_RE.sub(" ", text or "")
    for p in sorted(extract_paths(text), key=len, reverse=True):
        text = text.replace(p, " ")
    return text


# A code span that *is* a (dotted) name, or starts with a call of one: `Option`, `Parser.parse()`.
_LEAD_NAME_RE = re.compile(r"^\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*(\(|$)")


def feature_names(text: str) -> set[str]:
    """Function/class names a feature text names: in a `code span`, every called name
    (`_convert()`) and a span that is a name -- capitalised (`Option`, `Parser.parse()` gives
    both), code-shaped (`_metavar`) or called; in a fenced block, `def`/`class` names; in prose, a
    called code-shaped name (`parse_date()`). Builtins, builtin types' methods (`rstrip`),
    keywords and the coop prompt's own names (`send_message`) are not task entities."""
    text = text or ""
    names: set[str] = set()
    for span in _CODE_SPAN_RE.findall(text):
        span = _blank_paths(span)
        names.update(m.group(1) for m in _CALL_RE.finditer(span))
        lead = _LEAD_NAME_RE.match(span)
        if lead:  # in `a.b.c(...)` only `c` is called; `a`, `b` count if they look like names
            parts = lead.group(1).split(".")
            called = lead.group(2) == "("
            names.update(
                part
                for i, part in enumerate(parts)
                if (called and i == len(parts) - 1) or _class_like(part) or "_" in part.strip("_")
            )
    for block in _FENCE_RE.findall(text):
        names.update(m.group(1) for m in _DEF_RE.finditer(block))
    prose = _blank_paths(text)
    names.update(m.group(1) for m in _CALL_RE.finditer(prose) if _code_shaped(m.group(1)))
    return {n for n in names if _entity_name(n) and n not in _BUILTIN_METHODS}


@lru_cache(maxsize=1)
def _prompt_names() -> frozenset[str]:
    """Names our coop prompt itself writes as code (`send_message`, ...): not the task's."""
    from coop_dag.agent.prompts import render_prompts

    try:
        texts = [render_prompts("", "agent1", "agent2", steering=s).instance for s in (0, 1)]
    except Exception:  # noqa: BLE001 -- a broken prompt config must not break scoring
        texts = []
    out = {"send_message", "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"}
    for t in texts:
        for span in _CODE_SPAN_RE.findall(t):
            out.update(_IDENT_RE.findall(span))
    return frozenset(out)


def defined_names(source: str) -> set[str]:
    """`def` and `class` names in a source file."""
    return {n for n in (m.group(1) for m in _DEF_RE.finditer(source or "")) if _entity_name(n)}


def names_in_message(text: str, names: Iterable[str]) -> list[str]:
    """The `names` a message mentions *as code* (see the module docstring), first-seen order."""
    wanted = set(names)
    text = _blank_paths(text)
    in_code = {t for span in _CODE_SPAN_RE.findall(text) for t in _IDENT_RE.findall(span)}
    called = {m.group(1) for m in _CALL_RE.finditer(text)}
    out: dict[str, None] = {}
    for t in _IDENT_RE.findall(text):
        if t in wanted and (_code_shaped(t) or t in in_code or t in called):
            out.setdefault(t, None)
    return list(out)


def names_in_command(command: str, names: Iterable[str]) -> list[str]:
    tokens = set(_IDENT_RE.findall(command or ""))
    return [n for n in names if n in tokens]


def task_text(traj: dict | None) -> str:
    """The task an agent was given: its first user message (the feature text is in it)."""
    for msg in (traj or {}).get("messages") or []:
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content if isinstance(content, str) else ""
    return ""


def dataset_roots(dataset: str | Path | None = None) -> list[Path]:
    """Where task directories are looked up, in order: `dataset`, $COOP_DAG_DATASET, the bundled
    dataset. A pair's repository is found by name (`<root>/<repo>/task<id>/`)."""
    roots = [dataset, os.environ.get("COOP_DAG_DATASET"), BUNDLED_DATASET]
    out: list[Path] = []
    for r in roots:
        if r and Path(r) not in out:
            out.append(Path(r))
    return out


def find_task_dir(repo: str, task_id: str | int, roots: Iterable[Path]) -> Path | None:
    name = str(task_id)
    name = name if name.startswith("task") else f"task{name}"
    return next((Path(r) / repo / name for r in roots if (Path(r) / repo / name).is_dir()), None)


@lru_cache(maxsize=64)
def cached_base_tree(task_dir: Path, mirror_dir: str | None) -> BaseTree | None:
    return base_tree(task_dir, mirror_dir)


def task_entities(
    texts: Iterable[str],
    task_dir: Path | None = None,
    mirror_dir: str | Path | None = None,
    features: Iterable[int] = (),
) -> TaskEntities:
    """Real entities of a pair from its agents' task texts and, when `task_dir` is given, the
    `features`' feature.md files there and the task's base repository if it is readable
    (bundled `repo/`, or a mirror)."""
    texts = [t for t in texts if t]
    if task_dir is not None:  # the dataset's feature.md files, for logs with no task message
        for k in features:
            md = task_dir / f"feature{k}" / "feature.md"
            if md.is_file():
                texts.append(md.read_text(encoding="utf-8", errors="replace"))
    sources = ["task text"] if texts else []
    files: set[str] = set()
    names: set[str] = set()
    for text in texts:
        files.update(files_modified(text))
        names |= feature_names(text)
    tree = cached_base_tree(task_dir, str(mirror_dir) if mirror_dir else None) if task_dir else None
    if tree is not None:
        # the kind, not the path: per-pair rows are content-hashed into data versions
        sources.append(f"base repository ({tree.kind})")
        named = set(files)
        for text in texts:
            named |= {f for p in mentioned_paths(text) for f in _resolve(p, tree.files)}
        for path in sorted(named):
            names |= defined_names(tree.read(path) or "")
        files |= tree.files
    return TaskEntities(frozenset(files), frozenset(names), tuple(sources))


def _resolve(mention: str, files: frozenset[str]) -> list[str]:
    return TaskEntities(files=files).resolve_path(mention)
