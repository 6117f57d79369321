"""CooperBench task model: discovery of `<repo>_task/task<N>/feature<K>/` trees, feature pairs,
the train / validation / test split by repository, task files, patch checks, and
base-repository checkouts.

Bundled tasks carry their base source in `task<N>/repo/` (our extension to CooperBench's
layout); real CooperBench tasks name it in their Dockerfile (`git clone URL repo && git
checkout SHA`), resolved against a local mirror directory because nothing is fetched at run time.

Discovery follows CooperBench's `runner/tasks.py`: repository directories end in `_task`
(files and the `subsets/` directory are skipped), tasks are `task<N>/` directories, features are
`feature<K>/` directories, and a task's pairs are all `(a, b)` with `a < b` unless a subset
(`<dataset>/subsets/<name>.json`, or a subset file anywhere) lists them. Unlike CooperBench,
which skips what it cannot use, every malformed input here raises `TaskError` naming the
offending path or value. All functions are pure readers except the checkouts, which clean up
after themselves on failure, and the task checks, which work in temporary directories.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from itertools import combinations
from pathlib import Path
from urllib.parse import urlparse

from coop_dag.util.paths import extract_paths

# A bundled base commit is made with a fixed identity and date so its sha is reproducible.
BASE_GIT_ENV = {
    "GIT_AUTHOR_NAME": "coop-dag",
    "GIT_AUTHOR_EMAIL": "coop-dag@localhost",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "coop-dag",
    "GIT_COMMITTER_EMAIL": "coop-dag@localhost",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}

SPLITS = ("train", "validation", "test")

MERGE_STATUSES = ("clean", "conflicts")
NO_BASE = "base repository unavailable"  # how check_task says a task has no readable base
SUBSETS_DIR = "subsets"
REPO_SUFFIX = "_task"

# Junk that a bundled `repo/` may pick up when someone runs its tests in place; never committed,
# so the base sha depends on the sources only.
_BUNDLED_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".git")
_TASK_DIR_RE = re.compile(r"task(\d+)")
_FEATURE_DIR_RE = re.compile(r"feature(\d+)")
_FILES_MODIFIED_RE = re.compile(
    r"^\s*(?:\*\*\s*|#+\s*)Files Modified\b[^\n]*$", re.IGNORECASE | re.MULTILINE
)
_SECTION_END_RE = re.compile(r"^\s*(?:\*\*|---|#)", re.MULTILINE)


class TaskError(ValueError):
    """Bad dataset input; the message names the offending path or value."""


@dataclass(frozen=True)
class RepoSplit:
    """Whole repositories kept out of training (never single tasks): `validation` feeds the
    first-turn probe and any tuning, `test` only the held-out student and base rollouts. Every
    other repository of the dataset is `train` (teacher rollouts, TITO)."""

    validation: tuple[str, ...] = ()
    test: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("validation", "test"):
            value = getattr(self, name)
            repos = (value,) if isinstance(value, str) else tuple(value or ())
            bad = [r for r in repos if not isinstance(r, str) or not r]
            if bad:
                raise TaskError(f"{name} repositories must be non-empty names, got {bad}")
            object.__setattr__(self, name, tuple(dict.fromkeys(repos)))
        both = sorted(set(self.validation) & set(self.test))
        if both:
            raise TaskError(f"repositories {both} are in both the validation and the test split")

    @property
    def held_out(self) -> tuple[str, ...]:
        """Every repository kept out of training (validation, then test)."""
        return self.validation + self.test

    def split_of(self, repo: str) -> str:
        if repo in self.test:
            return "test"
        return "validation" if repo in self.validation else "train"


# The bundled dataset's split. It applies to the bundled dataset only (another dataset names
# its own, see coop_dag.dataset.config); change these lists when bundled repositories change.
# The bundled dataset's split (13 repositories): test has 3 repositories and 18 pairs, each
# repository with same-file pairs; validation 1 repository (6 pairs); the other 9 train.
BUNDLED_SPLIT = RepoSplit(
    validation=("throttle_task",), test=("webroute_task", "mdrender_task", "verspec_task")
)
# Older name of the bundled test repositories (the two-way split's "held out").
DEFAULT_HELD_OUT: tuple[str, ...] = BUNDLED_SPLIT.test


@dataclass(frozen=True)
class Feature:
    repo: str
    task_id: int
    feature_id: int
    dir: Path
    description: str
    # The task files: the Files Modified list when feature.md has one, else the paths its prose
    # names that exist in the base repository (`files_source` says which; "none": neither).
    files: tuple[str, ...]
    files_source: str = "files_modified"

    @property
    def feature_patch(self) -> Path:
        return self.dir / "feature.patch"

    @property
    def tests_patch(self) -> Path:
        return self.dir / "tests.patch"

    @property
    def files_modified(self) -> tuple[str, ...]:
        """Paths listed under feature.md's `**Files Modified**` heading (empty if none)."""
        return tuple(files_modified(self.description))


@dataclass(frozen=True)
class Task:
    repo: str
    task_id: int
    dir: Path
    features: dict[int, Feature] = field(hash=False)

    @property
    def key(self) -> str:
        return f"{self.repo}/{self.task_id}"

    @property
    def runner(self) -> Path:
        return self.dir / "runner.sh"

    @property
    def bundled_source(self) -> Path:
        return self.dir / "repo"

    @property
    def dockerfile(self) -> Path:
        return self.dir / "Dockerfile"

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def pairs(self) -> list[Pair]:
        """All feature pairs `(a, b)`, `a < b`, in CooperBench's order."""
        return [
            Pair(self, self.repo, self.task_id, a, b) for a, b in combinations(self.features, 2)
        ]


@dataclass(frozen=True)
class Pair:
    task: Task = field(compare=False, hash=False, repr=False)
    repo: str
    task_id: int
    feature_a: int
    feature_b: int

    @property
    def pair_id(self) -> str:
        """CooperBench's log-layout name: `<repo>/<task_id>/f<a>_f<b>`."""
        return f"{self.repo}/{self.task_id}/f{self.feature_a}_f{self.feature_b}"

    @property
    def pair_key(self) -> str:
        """The pair's key in a task's manifest.json `merges`: `f<a>_f<b>`."""
        return f"f{self.feature_a}_f{self.feature_b}"

    @property
    def features(self) -> tuple[Feature, Feature]:
        return self.task.features[self.feature_a], self.task.features[self.feature_b]


@dataclass(frozen=True)
class Subset:
    """A CooperBench subset file: which tasks, and optionally which pairs of each.

    `tasks` maps `(repo, task_id)` to its listed pairs (sorted `(a, b)`, `a < b`), or to `None`
    when the entry lists no pairs (then all of the task's pairs are meant, as in CooperBench).
    """

    name: str
    path: Path
    description: str
    tasks: dict[tuple[str, int], tuple[tuple[int, int], ...] | None] = field(hash=False)


# --------------------------------------------------------------------------------------------
# helpers


def _git(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    base_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY")
    }
    full_env = {**base_env, **(env or {})}
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=full_env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise TaskError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc.stdout.strip()


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


def _dataset_root(dataset_dir: Path | str) -> Path:
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
    return [p.name for p in _repo_dirs(_dataset_root(dataset_dir))]


def files_modified(text: str) -> list[str]:
    """Paths in the `**Files Modified**` (or `## Files Modified`) section of a feature.md, up to
    the next bold heading, `---` rule or markdown heading, via the shared path regex; `[]` when
    there is no such section."""
    match = _FILES_MODIFIED_RE.search(text or "")
    if not match:
        return []
    rest = text[match.end() :]
    end = _SECTION_END_RE.search(rest)
    return extract_paths(rest[: end.start()] if end else rest)


def task_files(
    text: str, base_files: Callable[[], frozenset[str] | None] | None = None
) -> tuple[tuple[str, ...], str]:
    """`(files, source)` of a feature.md: its Files Modified list (`"files_modified"`) when it has
    one; otherwise the paths its prose names that exist in the base repository (`"prose"`).
    Prose alone names too much (`file1.txt`, `script.py`, bare basenames of real files), so an
    unverifiable path is dropped: with the base unknown (`base_files` None or returning None)
    there is no fallback, `((), "none")`."""
    listed = files_modified(text)
    if listed:
        return tuple(listed), "files_modified"
    known = base_files() if base_files is not None else None
    prose = tuple(p for p in extract_paths(text) if known is not None and p in known)
    return (prose, "prose") if prose else ((), "none")


def base_files(task_dir: Path, mirror_dir: Path | None = None) -> frozenset[str] | None:
    """Repo-relative paths of every file in the task's base repository: the bundled `repo/`
    tree, or the Dockerfile's commit read from the mirror (no checkout). None when the base
    cannot be read here (no bundled source, no mirror): the checkout reports why, later."""
    task_dir = Path(task_dir)
    source = task_dir / "repo"
    if source.is_dir():
        return frozenset(
            p.relative_to(source).as_posix()
            for p in source.rglob("*")
            if p.is_file()
            and not any(part in ("__pycache__", ".git", ".pytest_cache") for part in p.parts)
        )
    try:
        mirror, _url, sha = _mirror_source(task_dir, mirror_dir)
        return frozenset(_git(["ls-tree", "-r", "--name-only", sha], mirror).splitlines())
    except TaskError:
        return None


# --------------------------------------------------------------------------------------------
# discovery


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
    root = _dataset_root(dataset_dir)
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
    root = _dataset_root(dataset_dir)
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
        where = f"tasks[{i}]"
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
        key = (repo, task_id)
        if key in tasks:
            raise _subset_error(path, where, f"task {repo}/{task_id} is listed twice")
        if "pairs" not in entry:
            tasks[key] = None
            continue
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
        tasks[key] = tuple(pairs)
    return Subset(declared, path, description, tasks)


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
        by_key = {(t.repo, t.task_id): t for t in tasks}
        known_repos = {p.name for p in _repo_dirs(_dataset_root(dataset_dir))}
        pairs = []
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
    pairs.sort(key=lambda p: (p.repo, p.task_id, p.feature_a, p.feature_b))
    return pairs


def check_split(split: RepoSplit, known_repos: Iterable[str], where: Path | str) -> None:
    """Every validation and test repository is one of `known_repos` (a typo would silently
    leak an evaluation repository into training); TaskError naming the split otherwise."""
    known = set(known_repos)
    for name in ("validation", "test"):
        unknown = [r for r in getattr(split, name) if r not in known]
        if unknown:
            raise TaskError(
                f"unknown {name} repositories {unknown}: not in {where} "
                f"(repositories: {', '.join(sorted(known)) or 'none'})"
            )


def split_pairs(pairs: Sequence[Pair], split: RepoSplit) -> dict[str, list[Pair]]:
    """`{"train": [...], "validation": [...], "test": [...]}` by repository: whole repositories
    move, so no task (and no repository) is ever in two splits. Order is kept."""
    out: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    for pair in pairs:
        out[split.split_of(pair.repo)].append(pair)
    return out


# --------------------------------------------------------------------------------------------
# manifests and the task-pool summary


def load_manifest(task: Task) -> dict | None:
    """The bundled `task<N>/manifest.json` (see docs/dataset-spec.md), validated; None if absent."""
    path = task.manifest_path
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TaskError(f"malformed manifest {path}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TaskError(f"malformed manifest {path}: expected an object")
    merges = data.get("merges", {})
    if not isinstance(merges, dict):
        raise TaskError(f"malformed manifest {path}: 'merges' must be an object")
    for key, status in merges.items():
        if not re.fullmatch(r"f\d+_f\d+", str(key)):
            raise TaskError(f"malformed manifest {path}: merges key {key!r} is not f<a>_f<b>")
        if status not in MERGE_STATUSES:
            raise TaskError(
                f"malformed manifest {path}: merges[{key!r}] = {status!r}, "
                f"expected one of {MERGE_STATUSES}"
            )
    if "repo" in data and data["repo"] != task.repo:
        raise TaskError(f"manifest {path} names repo {data['repo']!r}, expected {task.repo!r}")
    if "task_id" in data and data["task_id"] != task.task_id:
        raise TaskError(
            f"manifest {path} names task_id {data['task_id']!r}, expected {task.task_id}"
        )
    return data


def task_pool_summary(
    dataset_dir: Path | str,
    split: RepoSplit,
    subset: str | Subset | None = None,
    *,
    mirror_dir: Path | None = None,
    check_patches: bool = True,
) -> dict:
    """A JSON-serialisable description of the task pool: every accepted pair with its split
    (`train` / `validation` / `test`), each feature's task files (and where they came from),
    pairs per repository and split, each pair's gold merge status from the task manifest when
    present, and the tasks and features rejected by `check_task` with the reason (their pairs
    are left out; `check_patches=False` skips the check).

    Split names must be repositories of the dataset (TaskError otherwise); a split repository
    with no pair in the chosen subset simply contributes no pairs. TaskError too when nothing
    survives the check.
    """
    root = _dataset_root(dataset_dir)
    check_split(split, repo_names(root), root)
    found = discover_pairs(root, subset=subset, mirror_dir=mirror_dir)

    rejected: list[dict] = []
    bad: set[tuple[str, int, int | None]] = set()
    if check_patches:
        tasks = {(p.repo, p.task_id): p.task for p in found}
        used = {(p.repo, p.task_id): set() for p in found}
        for p in found:
            used[(p.repo, p.task_id)].update((p.feature_a, p.feature_b))
        for key, task in tasks.items():
            for fid, reasons in check_task(task, mirror_dir, features=used[key]).items():
                bad.add((task.repo, task.task_id, fid))
                where = task.key if fid is None else f"{task.key}/feature{fid}"
                rejected += [{"where": where, "reason": r} for r in reasons]
    pairs = [
        p
        for p in found
        if not {(p.repo, p.task_id, None), (p.repo, p.task_id, p.feature_a),
                (p.repo, p.task_id, p.feature_b)} & bad
    ]  # fmt: skip
    if found and not pairs:
        raise TaskError(
            f"no task of {root} passed the task checks: "
            + "; ".join(f"{r['where']}: {r['reason']}" for r in rejected[:5])
        )
    by_split = split_pairs(pairs, split)

    manifests: dict[tuple[str, int], dict | None] = {}
    records = []
    features_seen: dict[tuple[str, int, int], Feature] = {}
    merge_counts = {"clean": 0, "conflicts": 0, "unknown": 0}
    for pair in pairs:
        key = (pair.repo, pair.task_id)
        if key not in manifests:
            manifests[key] = load_manifest(pair.task)
        manifest = manifests[key]
        merge = (manifest or {}).get("merges", {}).get(pair.pair_key)
        merge_counts[merge or "unknown"] += 1
        fa, fb = pair.features
        for f in (fa, fb):
            features_seen[(f.repo, f.task_id, f.feature_id)] = f
        records.append(
            {
                "pair_id": pair.pair_id,
                "repo": pair.repo,
                "task_id": pair.task_id,
                "feature_a": pair.feature_a,
                "feature_b": pair.feature_b,
                "split": split.split_of(pair.repo),
                "files_a": list(fa.files),
                "files_b": list(fb.files),
                "merge": merge,
            }
        )
    pairs_per_repo: dict[str, int] = {}
    for pair in pairs:
        pairs_per_repo[pair.repo] = pairs_per_repo.get(pair.repo, 0) + 1
    sub_name = subset.name if isinstance(subset, Subset) else subset
    return {
        "dataset_dir": str(root),
        "subset": sub_name,
        "n_tasks": len(manifests),
        "n_pairs": len(records),
        **{f"n_{name}_pairs": len(by_split[name]) for name in SPLITS},
        "repos": sorted(pairs_per_repo),
        "validation_repos": list(split.validation),
        "test_repos": list(split.test),
        "held_out_repos": list(split.test),  # older name of the test repositories
        "pairs_per_repo": pairs_per_repo,
        "features": {
            f"{repo}/{task_id}/feature{fid}": {"files": list(f.files), "source": f.files_source}
            for (repo, task_id, fid), f in sorted(features_seen.items())
        },
        "features_without_paths": [
            f"{repo}/{task_id}/feature{fid}"
            for (repo, task_id, fid), f in sorted(features_seen.items())
            if not f.files
        ],
        "rejected": rejected,
        "n_rejected_pairs": len(found) - len(pairs),
        "merge_status": merge_counts,
        "pairs": records,
    }


def pair_ids_in(summary: dict, split_name: str) -> list[str]:
    """The pair ids of one split (`train`, `validation`, `test`) of a `task_pool_summary`."""
    if split_name not in SPLITS:
        raise TaskError(f"unknown split {split_name!r}, expected one of {SPLITS}")
    return [p["pair_id"] for p in summary["pairs"] if p["split"] == split_name]


def require_pairs(summary: dict, split_name: str = "train") -> list[str]:
    """The pair ids of one split of a task pool, or TaskError saying why there are none."""
    ids = pair_ids_in(summary, split_name)
    if ids:
        return ids
    where = summary["dataset_dir"] + (f" (subset {summary['subset']})" if summary["subset"] else "")
    rejected = f"{summary['n_rejected_pairs']} rejected by the task checks"
    if split_name == "train":
        raise TaskError(
            f"no training pairs in {where}: its {summary['n_pairs']} pair(s) are all in "
            f"validation repositories {summary['validation_repos']} or test repositories "
            f"{summary['test_repos']} ({rejected}); training needs at least one repository "
            "outside both splits"
        )
    repos = summary[f"{split_name}_repos"]
    raise TaskError(
        f"no {split_name} pairs in {where}: none of its {summary['n_pairs']} pair(s) comes from "
        f"the {split_name} repositories {repos} ({rejected})"
    )


def require_train_pairs(summary: dict) -> list[str]:
    """The training pair ids of a task pool, or TaskError saying why there are none."""
    return require_pairs(summary, "train")


# --------------------------------------------------------------------------------------------
# task checks (what task_pool accepts)


def _patch_problem(patch: Path, cwd: Path, env: dict[str, str]) -> str | None:
    """Why `patch` cannot be used on the base at `cwd`/`env` (None: it applies)."""
    if not patch.is_file():
        return f"missing {patch.name} ({patch})"
    if not patch.read_text(encoding="utf-8", errors="replace").strip():
        return f"empty {patch.name} ({patch})"
    args = ["apply", "--check", "--cached", "--whitespace=nowarn", str(patch.resolve())]
    try:
        _git(args, cwd, env)
    except TaskError as exc:
        stderr = str(exc).split(f"failed in {cwd}: ", 1)[-1]
        return f"{patch.name} does not apply to the base: {' '.join(stderr.split())[:300]}"
    return None


@contextmanager
def base_index(task: Task, mirror_dir: Path | None = None) -> Iterator[tuple[Path, dict]]:
    """`(cwd, env)` in which git commands with `--cached` see the task's base tree: a temporary
    bundled checkout, or the mirror itself with a temporary index file (nothing is written to
    the mirror; `git apply --check --cached` only reads)."""
    with tempfile.TemporaryDirectory(prefix="coop-dag-base-") as tmp:
        if task.bundled_source.is_dir():
            repo = Path(tmp) / "repo"
            checkout_base(task, repo)
            yield repo, {}
            return
        mirror, _url, sha = _mirror_source(task.dir, mirror_dir)
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        try:
            _git(["read-tree", f"{sha}^{{tree}}"], mirror, env)
        except TaskError:
            raise TaskError(f"task {task.key}: commit {sha} not found in mirror {mirror}") from None
        yield mirror, env


def check_task(
    task: Task, mirror_dir: Path | None = None, features: Iterable[int] | None = None
) -> dict[int | None, list[str]]:
    """What makes a task unusable, `{None: [...]}` for the whole task (no runner.sh, no base)
    and `{feature_id: [...]}` per feature (feature.patch or tests.patch missing, empty or not
    applying to the base); `{}` when everything checked is fine. `features` limits the
    per-feature checks (default: all)."""
    problems: dict[int | None, list[str]] = {}
    if not task.runner.is_file():
        problems[None] = [f"missing runner.sh ({task.runner})"]
    wanted = sorted(task.features if features is None else features)
    try:
        with base_index(task, mirror_dir) as (cwd, env):
            for fid in wanted:
                feature = task.features[fid]
                found = [
                    why
                    for patch in (feature.feature_patch, feature.tests_patch)
                    if (why := _patch_problem(patch, cwd, env))
                ]
                if found:
                    problems[fid] = found
    except TaskError as exc:
        problems.setdefault(None, []).append(f"{NO_BASE}: {exc}")
    return problems


# --------------------------------------------------------------------------------------------
# checkouts


def _prepare_dest(dest: Path) -> bool:
    """Check `dest` is absent or empty; return whether it existed before."""
    if dest.exists():
        if not dest.is_dir():
            raise TaskError(f"checkout destination is not a directory: {dest}")
        if any(dest.iterdir()):
            raise TaskError(f"checkout destination is not empty: {dest}")
        return True
    return False


def _undo_dest(dest: Path, existed: bool) -> None:
    """Remove whatever a failed checkout wrote, leaving `dest` as it was (absent or empty)."""
    if not dest.exists():
        return
    if not existed:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def checkout_base(task: Task, dest: Path, mirror_dir: Path | None = None) -> str:
    """Materialise the task's base repository at its base commit in `dest`; return the sha.

    `dest` must not exist or be empty. Bundled sources become a deterministic one-commit repo;
    other tasks are cloned from `mirror_dir` (see `checkout_from_mirror`). On failure `dest` is
    left as it was found.
    """
    dest = Path(dest)
    if not task.bundled_source.is_dir():
        return checkout_from_mirror(task, dest, mirror_dir)
    existed = _prepare_dest(dest)
    try:
        shutil.copytree(task.bundled_source, dest, dirs_exist_ok=True, ignore=_BUNDLED_IGNORE)
        _git(["init", "-q", "-b", "main"], dest)
        _git(["add", "-A"], dest)
        _git(["commit", "-q", "--no-gpg-sign", "--no-verify", "-m", "base"], dest, BASE_GIT_ENV)
        return _git(["rev-parse", "HEAD"], dest)
    except BaseException:
        _undo_dest(dest, existed)
        raise


# Options of `git clone` that consume the following token.
_CLONE_VALUE_OPTS = {
    "-b", "--branch", "-o", "--origin", "--depth", "-c", "--config", "--reference",
    "--reference-if-able", "-j", "--jobs", "-u", "--upload-pack", "--template",
    "--separate-git-dir", "--shallow-since", "--shallow-exclude", "--filter",
}  # fmt: skip
_CHECKOUT_RE = re.compile(
    r"\bgit\s+(?:-C\s+\S+\s+)?checkout\s+(?:(?:-q|--quiet|-f|--force|--detach)\s+)*"
    r"([0-9a-fA-F]{7,40})\b"
)


def parse_dockerfile(text: str) -> tuple[str | None, str | None]:
    """`(url, sha)` from a CooperBench Dockerfile's `git clone <url> repo` and
    `git checkout <sha>` commands; either is None when absent."""
    joined = re.sub(r"\\\r?\n", " ", text)
    url = None
    for m in re.finditer(r"\bgit\s+clone\s+([^;&|\n]+)", joined):
        try:
            tokens = shlex.split(m.group(1))
        except ValueError:
            tokens = m.group(1).split()
        positional, skip = [], False
        for tok in tokens:
            if skip:
                skip = False
            elif tok.startswith("-"):
                skip = tok in _CLONE_VALUE_OPTS
            else:
                positional.append(tok)
        if len(positional) >= 2 and positional[1].rstrip("/") in ("repo", "./repo"):
            url = positional[0]
            tail = joined[m.end() :]
            sha = _CHECKOUT_RE.search(tail)
            return url, sha.group(1) if sha else None
    return None, None


def _owner_name(url: str) -> tuple[str | None, str]:
    """`(owner, name)` of a clone URL (https, ssh, scp-like `git@host:owner/name`, or path)."""
    if "://" in url:
        path = urlparse(url).path
    elif re.match(r"^[\w.-]+@[\w.-]+:", url):
        path = url.split(":", 1)[1]
    else:
        path = url
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        raise TaskError(f"cannot parse a repository name from clone URL {url!r}")
    name = parts[-1].removesuffix(".git")
    owner = parts[-2] if len(parts) >= 2 else None
    return owner, name


def mirror_candidates(url: str, mirror_dir: Path) -> list[Path]:
    """Where a clone URL may live in a mirror directory, in lookup order:
    `<owner>/<name>.git`, `<owner>/<name>`, `<name>.git`, `<name>`."""
    owner, name = _owner_name(url)
    mirror_dir = Path(mirror_dir)
    out = []
    if owner:
        out += [mirror_dir / owner / f"{name}.git", mirror_dir / owner / name]
    out += [mirror_dir / f"{name}.git", mirror_dir / name]
    return out


def _mirror_source(task_dir: Path, mirror_dir: Path | None) -> tuple[Path, str, str]:
    """`(mirror, url, sha)` of a real task: its Dockerfile's clone URL found in `mirror_dir`
    (see `mirror_candidates`) and the commit it checks out. TaskError names what is missing."""
    task_dir = Path(task_dir)
    key = f"{task_dir.parent.name}/{task_dir.name.removeprefix('task')}"
    dockerfile, bundled = task_dir / "Dockerfile", task_dir / "repo"
    if not dockerfile.is_file():
        raise TaskError(
            f"task {key} has neither bundled source ({bundled}) nor a Dockerfile ({dockerfile})"
        )
    url, sha = parse_dockerfile(dockerfile.read_text(encoding="utf-8"))
    if url is None:
        raise TaskError(f"task {key}: no `git clone <url> repo` line in {dockerfile}")
    if sha is None:
        raise TaskError(
            f"task {key}: no `git checkout <sha>` after the clone of {url} in {dockerfile}"
        )
    if mirror_dir is None:
        raise TaskError(
            f"task {key} has no bundled source ({bundled}) and no mirror "
            f"directory was given to clone {url} from"
        )
    mirror_dir = Path(mirror_dir)
    if not mirror_dir.is_dir():
        raise TaskError(f"task {key}: mirror directory {mirror_dir} not found (needed for {url})")
    candidates = mirror_candidates(url, mirror_dir)
    source = next((c for c in candidates if c.is_dir()), None)
    if source is None:
        raise TaskError(
            f"task {key}: no mirror of {url} in {mirror_dir} "
            f"(tried {', '.join(str(c) for c in candidates)})"
        )
    return source, url, sha


def checkout_from_mirror(task: Task, dest: Path, mirror_dir: Path | None) -> str:
    """Real CooperBench task: clone its Dockerfile's URL from a local mirror at its sha.

    The Dockerfile's `git clone <url> repo` URL is looked up in `mirror_dir` (see
    `mirror_candidates`), cloned into `dest` (absent or empty) and checked out (detached) at the
    Dockerfile's `git checkout <sha>`. Returns the full sha. Nothing is fetched from a network.
    """
    dest = Path(dest)
    source, url, sha = _mirror_source(task.dir, mirror_dir)
    existed = _prepare_dest(dest)
    try:
        _git(["clone", "-q", "--no-checkout", str(source.resolve()), str(dest.resolve())], source)
        try:
            full = _git(["rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}"], dest)
        except TaskError:
            raise TaskError(
                f"task {task.key}: commit {sha} of {url} not found in mirror {source}"
            ) from None
        _git(["-c", "advice.detachedHead=false", "checkout", "-q", full], dest)
        return _git(["rev-parse", "HEAD"], dest)
    except BaseException:
        _undo_dest(dest, existed)
        raise


# --------------------------------------------------------------------------------------------
# reading the base repository without a checkout (scoring: "does this path exist?")


@dataclass(frozen=True)
class BaseTree:
    """The files of a task's base repository, read in place: the bundled `repo/` directory, or
    the Dockerfile's commit in a local mirror (`git ls-tree`/`git show`, nothing checked out)."""

    task_dir: Path
    files: frozenset[str]
    source: str  # "bundled:<dir>" or "mirror:<git dir>@<sha>"
    kind: str = "bundled"  # "bundled" or "mirror@<sha>": where from, without this machine's paths
    _git_dir: Path | None = None
    _sha: str | None = None

    def read(self, path: str) -> str | None:
        """The base version of `path` (None when it is not in the tree or cannot be read)."""
        if path not in self.files:
            return None
        try:
            if self._git_dir is None:
                return (self.task_dir / "repo" / path).read_text(encoding="utf-8", errors="replace")
            return _git(["show", f"{self._sha}:{path}"], self._git_dir)
        except (OSError, TaskError):
            return None


def base_tree(task_dir: Path | str, mirror_dir: Path | str | None = None) -> BaseTree | None:
    """The base repository of the task in `task_dir`, or None when neither its bundled source
    nor (with `mirror_dir`) a mirror of its Dockerfile's clone URL at the checkout sha is here."""
    task_dir = Path(task_dir)
    source = task_dir / "repo"
    if source.is_dir():
        files = set()
        for path in source.rglob("*"):
            rel = path.relative_to(source)
            if (
                path.is_file()
                and not _BUNDLED_IGNORE(str(path.parent), [path.name])
                and not any(part in ("__pycache__", ".pytest_cache", ".git") for part in rel.parts)
            ):
                files.add(rel.as_posix())
        return BaseTree(task_dir, frozenset(files), f"bundled:{source}")
    dockerfile = task_dir / "Dockerfile"
    if mirror_dir is None or not dockerfile.is_file():
        return None
    url, sha = parse_dockerfile(dockerfile.read_text(encoding="utf-8"))
    if url is None or sha is None:
        return None
    git_dir = next((c for c in mirror_candidates(url, Path(mirror_dir)) if c.is_dir()), None)
    if git_dir is None:
        return None
    try:
        listing = _git(["ls-tree", "-r", "--name-only", sha], git_dir)
    except TaskError:
        return None
    return BaseTree(
        task_dir,
        frozenset(listing.splitlines()),
        f"mirror:{git_dir}@{sha}",
        f"mirror@{sha}",
        git_dir,
        sha,
    )
