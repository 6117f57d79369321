"""Discovery of a CooperBench-format dataset: `<repo>_task/task<N>/feature<K>/` trees become
`Task`s and `Feature`s, a task's feature pairs `Pair`s, optionally limited by a subset file.

Discovery follows CooperBench's `runner/tasks.py`: repository directories end in `_task`
(files and the `subsets/` directory are skipped), tasks are `task<N>/` directories, features are
`feature<K>/` directories, and a task's pairs are all `(a, b)` with `a < b` unless a subset
(`<dataset>/subsets/<name>.json`, or a subset file anywhere) lists them. Unlike CooperBench,
which skips what it cannot use, every malformed input here raises `TaskError` naming the
offending path or value. Everything here only reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Container, Iterable
from functools import cache
from pathlib import Path

from coop_dag.dataset.base_repo import base_files
from coop_dag.dataset.tasks import Feature, Pair, Subset, Task, TaskError, task_files

SUBSETS_DIR = "subsets"
REPO_SUFFIX = "_task"

_TASK_DIR_RE = re.compile(r"task(\d+)")
_FEATURE_DIR_RE = re.compile(r"feature(\d+)")


def _names(values: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """Normalise a repo-name argument; a bare string is one name, not its characters."""
    if values is None:
        return None
    if isinstance(values, str):
        return (values,)
    out: dict[str, None] = {}
    for v in values:
        if not isinstance(v, str):
            raise TaskError(f"repository names must be strings, got {v!r}")
        out.setdefault(v, None)
    return tuple(out)


def dataset_root(dataset_dir: Path | str) -> Path:
    """`dataset_dir` as a Path; TaskError when it is missing or not a directory."""
    root = Path(dataset_dir)
    if not root.exists():
        raise TaskError(f"dataset directory not found: {root}")
    if not root.is_dir():
        raise TaskError(f"dataset path is not a directory: {root}")
    return root


def _repo_dirs(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and p.name != SUBSETS_DIR and p.name.endswith(REPO_SUFFIX)
    )


def repo_names(dataset_dir: Path | str) -> list[str]:
    """The repository directory names (`<name>_task`) of a dataset, sorted."""
    return [p.name for p in _repo_dirs(dataset_root(dataset_dir))]


def task_dirs(root: Path) -> list[tuple[str, Path]]:
    """`(repo, task dir)` of every `task*` directory of every repository, sorted, unloaded (the
    validator reports a task that does not load; `discover_tasks` raises)."""
    return [
        (repo, task_dir)
        for repo in repo_names(root)
        for task_dir in sorted((root / repo).iterdir())
        if task_dir.is_dir() and task_dir.name.startswith("task")
    ]


# --------------------------------------------------------------------------------------------
# tasks


def load_feature(
    repo: str,
    task_id: int,
    feature_dir: Path,
    base: Callable[[], frozenset[str] | None] | None = None,
) -> Feature:
    """One `feature<K>/` directory; `base` lists the base repository's files for the prose
    fallback of `task_files` (only called when feature.md has no Files Modified section)."""
    feature_dir = Path(feature_dir)
    md = feature_dir / "feature.md"
    if not md.is_file():
        raise TaskError(f"missing feature.md: {md}")
    m = _FEATURE_DIR_RE.fullmatch(feature_dir.name)
    if not m:
        raise TaskError(f"feature directory is not named feature<K>: {feature_dir}")
    text = md.read_text(encoding="utf-8")
    files, source = task_files(text, base)
    return Feature(repo, task_id, int(m.group(1)), feature_dir, text, files, source)


def load_task(repo: str, task_dir: Path, mirror_dir: Path | None = None) -> Task:
    """One `task<N>/` directory with its features (at least two, each with a feature.md).
    `mirror_dir` lets features without a Files Modified section check prose paths against a
    mirrored base (bundled sources need none)."""
    task_dir = Path(task_dir)
    m = _TASK_DIR_RE.fullmatch(task_dir.name)
    if not m:
        raise TaskError(f"task directory is not named task<N>: {task_dir}")
    task_id = int(m.group(1))
    base = cache(lambda: base_files(task_dir, mirror_dir))  # read once, and only if needed
    features: dict[int, Feature] = {}
    for child in task_dir.iterdir():
        if not child.is_dir() or not child.name.startswith("feature"):
            continue
        feature = load_feature(repo, task_id, child, base)
        if feature.feature_id in features:
            raise TaskError(
                f"duplicate feature id {feature.feature_id} in {task_dir}: "
                f"{features[feature.feature_id].dir.name} and {child.name}"
            )
        features[feature.feature_id] = feature
    if len(features) < 2:
        raise TaskError(
            f"task {repo}/{task_id} has {len(features)} feature(s), needs at least two: {task_dir}"
        )
    return Task(repo, task_id, task_dir, dict(sorted(features.items())))


def discover_tasks(
    dataset_dir: Path | str,
    repos: str | Iterable[str] | None = None,
    mirror_dir: Path | None = None,
) -> list[Task]:
    """Every task of a CooperBench-format dataset, sorted by (repo, task_id).

    `repos` restricts discovery to those repository directories; naming one that does not
    exist raises TaskError. `mirror_dir`: see `load_task`.
    """
    root = dataset_root(dataset_dir)
    wanted = _names(repos)
    repo_dirs = _repo_dirs(root)
    if wanted is not None:
        known = {p.name for p in repo_dirs}
        unknown = [r for r in wanted if r not in known]
        if unknown:
            raise TaskError(
                f"unknown repositories {unknown} in {root} (known: {sorted(known) or 'none'})"
            )
        repo_dirs = [p for p in repo_dirs if p.name in wanted]
    tasks: list[Task] = []
    for repo_dir in repo_dirs:
        for task_dir in repo_dir.iterdir():
            if task_dir.is_dir() and task_dir.name.startswith("task"):
                tasks.append(load_task(repo_dir.name, task_dir, mirror_dir))
    tasks.sort(key=lambda t: (t.repo, t.task_id))
    return tasks


# --------------------------------------------------------------------------------------------
# subsets and pairs


def _subset_error(path: Path, where: str, what: str) -> TaskError:
    return TaskError(f"malformed subset {path}: {where}: {what}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_subset_path(value: str) -> bool:
    """A subset given as a file (anything with a path separator or a `.json` suffix) rather than
    a name under `<dataset>/subsets/`."""
    return "/" in value or "\\" in value or value.endswith(".json")


def subset_file(dataset_dir: Path | str, name: str) -> Path:
    """The file of a subset: `<dataset_dir>/subsets/<name>.json` for a name, the path itself
    for a path (a subset may live anywhere). Raises TaskError when it does not exist."""
    root = dataset_root(dataset_dir)
    if not isinstance(name, str) or not name.strip() or name in (".", ".."):
        raise TaskError(f"invalid subset name: {name!r}")
    if is_subset_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise TaskError(f"subset file not found: {path}")
        return path
    path = root / SUBSETS_DIR / f"{name}.json"
    if not path.is_file():
        available = sorted(p.stem for p in (root / SUBSETS_DIR).glob("*.json"))
        raise TaskError(
            f"subset {name!r} not found at {path} (available: {', '.join(available) or 'none'}; "
            "a subset file elsewhere is given by its path)"
        )
    return path


def load_subset(dataset_dir: Path | str, name: str) -> Subset:
    """Read and validate a subset given by name (`<dataset_dir>/subsets/<name>.json`) or by
    path (see `subset_file`), in CooperBench's subset format:
    `{"name", "description", "stats", "tasks": [{"repo", "task_id", "pairs"?: [[a, b], ...]}]}`.
    Pairs are normalised to `a < b` (CooperBench names pair logs by sorted feature ids)."""
    path = subset_file(dataset_dir, name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TaskError(f"malformed subset {path}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _subset_error(path, "top level", f"expected an object, got {type(data).__name__}")
    if "tasks" not in data:
        raise _subset_error(path, "top level", "missing key 'tasks'")
    if not isinstance(data["tasks"], list):
        raise _subset_error(path, "tasks", f"expected a list, got {type(data['tasks']).__name__}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _subset_error(path, "description", "expected a string")
    declared = data.get("name", path.stem)
    if not isinstance(declared, str):
        raise _subset_error(path, "name", "expected a string")

    tasks: dict[tuple[str, int], tuple[tuple[int, int], ...] | None] = {}
    for i, entry in enumerate(data["tasks"]):
        key, pairs = _subset_entry(path, f"tasks[{i}]", entry, tasks)
        tasks[key] = pairs
    return Subset(declared, path, description, tasks)


def _subset_entry(
    path: Path, where: str, entry: object, seen: Container[tuple[str, int]]
) -> tuple[tuple[str, int], tuple[tuple[int, int], ...] | None]:
    """`((repo, task_id), pairs)` of one entry of a subset's `tasks` list (pairs None: the
    entry lists none, so all of the task's pairs are meant); a task already `seen` is an
    error."""
    if not isinstance(entry, dict):
        raise _subset_error(path, where, f"expected an object, got {type(entry).__name__}")
    for key in ("repo", "task_id"):
        if key not in entry:
            raise _subset_error(path, where, f"missing key {key!r}")
    repo, task_id = entry["repo"], entry["task_id"]
    if not isinstance(repo, str) or not repo:
        raise _subset_error(path, f"{where}.repo", f"expected a non-empty string, got {repo!r}")
    if not _is_int(task_id):
        raise _subset_error(path, f"{where}.task_id", f"expected an integer, got {task_id!r}")
    if (repo, task_id) in seen:
        raise _subset_error(path, where, f"task {repo}/{task_id} is listed twice")
    if "pairs" not in entry:
        return (repo, task_id), None
    raw_pairs = entry["pairs"]
    if not isinstance(raw_pairs, list):
        raise _subset_error(path, f"{where}.pairs", f"expected a list, got {raw_pairs!r}")
    pairs: dict[tuple[int, int], None] = {}
    for j, p in enumerate(raw_pairs):
        pwhere = f"{where}.pairs[{j}]"
        if not (isinstance(p, list) and len(p) == 2 and all(_is_int(f) for f in p)):
            raise _subset_error(path, pwhere, f"expected [int, int], got {p!r}")
        if p[0] == p[1]:
            raise _subset_error(path, pwhere, f"a pair needs two distinct features, got {p!r}")
        pairs.setdefault((min(p), max(p)), None)
    return (repo, task_id), tuple(pairs)


def discover_pairs(
    dataset_dir: Path | str,
    subset: str | Subset | None = None,
    repos: str | Iterable[str] | None = None,
    mirror_dir: Path | None = None,
) -> list[Pair]:
    """Feature pairs of the dataset, sorted by (repo, task_id, a, b).

    Without `subset`: all pairs `a < b` of every task. With a subset (name or loaded `Subset`):
    exactly the pairs it lists (all pairs of a task it lists without pairs). A subset entry whose
    repository, task or features do not exist raises TaskError. `repos` restricts to those
    repositories (subset entries of other repositories are then ignored). `mirror_dir`: see
    `load_task`.
    """
    wanted = _names(repos)
    tasks = discover_tasks(dataset_dir, repos=wanted, mirror_dir=mirror_dir)
    if subset is None:
        pairs = [pair for task in tasks for pair in task.pairs()]
    else:
        sub = subset if isinstance(subset, Subset) else load_subset(dataset_dir, subset)
        pairs = _subset_pairs(dataset_dir, sub, tasks, wanted)
    pairs.sort(key=lambda p: (p.repo, p.task_id, p.feature_a, p.feature_b))
    return pairs


def _subset_pairs(
    dataset_dir: Path | str, sub: Subset, tasks: list[Task], wanted: tuple[str, ...] | None
) -> list[Pair]:
    """The pairs `sub` lists among `tasks` (entries outside `wanted` repositories skipped);
    TaskError for an entry whose repository, task or features do not exist."""
    by_key = {(t.repo, t.task_id): t for t in tasks}
    known_repos = {p.name for p in _repo_dirs(dataset_root(dataset_dir))}
    pairs: list[Pair] = []
    for (repo, task_id), listed in sub.tasks.items():
        if wanted is not None and repo not in wanted:
            continue
        if repo not in known_repos:
            raise TaskError(
                f"subset {sub.path} lists repository {repo!r}, not found in {dataset_dir}"
            )
        task = by_key.get((repo, task_id))
        if task is None:
            raise TaskError(
                f"subset {sub.path} lists task {repo}/{task_id}, not found in {dataset_dir}"
            )
        if listed is None:
            pairs.extend(task.pairs())
            continue
        for a, b in listed:
            missing = [f for f in (a, b) if f not in task.features]
            if missing:
                raise TaskError(
                    f"subset {sub.path} lists pair [{a}, {b}] of {repo}/{task_id}, but "
                    f"feature(s) {missing} do not exist (features: {sorted(task.features)})"
                )
            pairs.append(Pair(task, repo, task_id, a, b))
    return pairs
