"""CooperBench task model: `Task`, `Feature`, `Pair`, `Subset`, a feature's task files, and
the train / validation / test split by repository (`RepoSplit`, `BUNDLED_SPLIT`).

Bundled tasks carry their base source in `task<N>/repo/` (our extension to CooperBench's
layout); real CooperBench tasks name it in their Dockerfile (see `coop_dag.dataset.base_repo`).
The rest of the dataset package builds on this module: discovery (`discovery.py`), the base
repository (`base_repo.py`), manifests (`manifests.py`), the task pool (`pool.py`), the
validator (`check.py`). Every malformed input raises `TaskError` naming the offending path or
value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from coop_dag.util.paths import extract_paths

SPLITS = ("train", "validation", "test")

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
# task files


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


# --------------------------------------------------------------------------------------------
# the split


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
