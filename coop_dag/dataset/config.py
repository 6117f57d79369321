"""Where tasks come from, resolved one way for the CLI, the Dagster resources and the UI.

Every setting is taken from the first of: an explicit value (a `coop-dag` flag, or the
`dataset` resource's config in code or the launchpad), its environment variable, its default.
An empty value counts as unset.

- dataset directory: ``COOP_DAG_DATASET``; default the bundled dataset;
- subset: ``COOP_DAG_SUBSET``, a name under ``<dataset>/subsets/`` or the path of a subset
  file anywhere; default all pairs;
- mirror directory (offline clones, ``<owner>/<name>.git``): ``COOP_DAG_MIRROR_DIR``;
- validation repositories (probe, tuning): ``COOP_DAG_VALIDATION_REPOS``;
- test repositories (held-out rollouts only): ``COOP_DAG_TEST_REPOS`` (older name
  ``COOP_DAG_HELD_OUT``); both split defaults are ``tasks.BUNDLED_SPLIT``, for the bundled
  dataset only.

Repository lists are comma-separated in the environment. The bundled split names bundled
repositories, so it applies to the bundled dataset only: another dataset names its own
validation and test repositories, or fails here saying which settings to use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from coop_dag import BUNDLED_DATASET
from coop_dag.dataset.discovery import is_subset_path, repo_names, subset_file
from coop_dag.dataset.tasks import BUNDLED_SPLIT, RepoSplit, TaskError, check_split

ENV_DATASET = "COOP_DAG_DATASET"
ENV_SUBSET = "COOP_DAG_SUBSET"
ENV_MIRROR = "COOP_DAG_MIRROR_DIR"
ENV_VALIDATION = "COOP_DAG_VALIDATION_REPOS"
ENV_TEST = "COOP_DAG_TEST_REPOS"
ENV_HELD_OUT = "COOP_DAG_HELD_OUT"  # the two-way split's name for the test repositories

ENV_VARS: dict[str, str] = {
    ENV_DATASET: "CooperBench-format dataset directory (default: the bundled dataset)",
    ENV_SUBSET: "subset name under <dataset>/subsets/, or a path to a subset JSON file",
    ENV_MIRROR: "local git mirrors of real tasks' repositories (<owner>/<name>.git)",
    ENV_VALIDATION: "comma-separated validation repositories (first-turn probe, tuning)",
    ENV_TEST: "comma-separated test repositories (held-out student and base rollouts only)",
    ENV_HELD_OUT: f"older name of {ENV_TEST}",
}


def parse_repos(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Repository names from a comma-separated string or a list (blanks dropped, order kept)."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(dict.fromkeys(str(r).strip() for r in items if str(r).strip()))


def is_bundled(root: Path | str) -> bool:
    return Path(root).resolve() == BUNDLED_DATASET.resolve()


@dataclass(frozen=True)
class DatasetConfig:
    """A resolved task source. `sources` says where each setting came from (for messages)."""

    root: Path
    subset: str | None
    mirror_dir: Path | None
    split: RepoSplit
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def bundled(self) -> bool:
        return is_bundled(self.root)

    @property
    def validation(self) -> list[str]:
        return list(self.split.validation)

    @property
    def test(self) -> list[str]:
        return list(self.split.test)

    def describe(self) -> dict[str, object]:
        """Facts for metadata and lineage."""
        return {
            "dataset_dir": str(self.root),
            "subset": self.subset,
            "mirror_dir": str(self.mirror_dir) if self.mirror_dir else None,
            "validation_repos": self.validation,
            "test_repos": self.test,
        }


def _pick(explicit: str, env: Mapping[str, str], name: str, flag: str) -> tuple[str, str]:
    if explicit and str(explicit).strip():
        return str(explicit).strip(), flag
    value = env.get(name, "").strip()
    return (value, name) if value else ("", "default")


def _repos(
    explicit: str | Iterable[str] | None,
    env: Mapping[str, str],
    names: tuple[str, ...],
    flag: str,
) -> tuple[tuple[str, ...] | None, str]:
    """`(repos, source)` from the explicit value, else the first set variable of `names`
    (None: unset). Two variables set to different lists is an error naming both."""
    repos = parse_repos(explicit)
    if repos:
        return repos, flag
    found = [(n, parse_repos(env.get(n))) for n in names if parse_repos(env.get(n))]
    if len({r for _, r in found}) > 1:
        raise TaskError(
            " and ".join(f"{n}={','.join(r)}" for n, r in found) + " disagree: set one of them"
        )
    return (found[0][1], found[0][0]) if found else (None, "default")


def resolve_mirror(
    mirror_dir: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    flag: str = "mirror_dir",
) -> tuple[Path | None, str]:
    """`(mirror directory or None, where it came from)`; TaskError when it does not exist."""
    env = os.environ if env is None else env
    value, source = _pick(str(mirror_dir or ""), env, ENV_MIRROR, flag)
    path = Path(value).expanduser().resolve() if value else None
    if path is not None and not path.is_dir():
        raise TaskError(f"mirror directory not found: {path} (from {source})")
    return path, source


def resolve_dataset_config(
    *,
    dataset_dir: str | os.PathLike | None = None,
    subset: str | None = None,
    mirror_dir: str | os.PathLike | None = None,
    validation_repos: str | Iterable[str] | None = None,
    test_repos: str | Iterable[str] | None = None,
    env: Mapping[str, str] | None = None,
    require_split: bool = True,
    flag_names: Mapping[str, str] | None = None,
) -> DatasetConfig:
    """Resolve the task source (see the module docstring for the order and the variables).

    Checks what can be checked without reading tasks: the dataset directory exists, a subset
    exists (a relative subset path is made absolute here, so it means the same to every
    process), split repositories are repositories of the dataset and not in both splits. With
    `require_split` (the pipeline), validation and test must both be non-empty: the probe needs
    validation repositories and the held-out rollouts test ones; without it (listing tasks) an
    unset split leaves every pair in train. `flag_names` maps setting -> how the caller calls
    its explicit value (`--test`, `test_repos`), for messages.
    """
    env = os.environ if env is None else env
    flags = {
        "dataset": "dataset_dir",
        "subset": "subset",
        "mirror": "mirror_dir",
        "validation": "validation_repos",
        "test": "test_repos",
        **(flag_names or {}),
    }
    sources: dict[str, str] = {}
    root, sources["dataset"] = _resolve_root(dataset_dir, env, flags["dataset"])
    sub, sources["subset"] = _resolve_subset(root, subset, env, flags["subset"])
    mirror_path, sources["mirror"] = resolve_mirror(mirror_dir, env, flags["mirror"])
    split = _resolve_split(
        root, validation_repos, test_repos, env, flags, sources, require_split=require_split
    )
    return DatasetConfig(root, sub or None, mirror_path, split, sources)


def _resolve_root(
    dataset_dir: str | os.PathLike | None, env: Mapping[str, str], flag: str
) -> tuple[Path, str]:
    """`(dataset directory, where it came from)`; TaskError when it does not exist."""
    value, source = _pick(str(dataset_dir or ""), env, ENV_DATASET, flag)
    # Absolute, like a subset path: the same meaning for every process, whatever its cwd.
    root = Path(value).expanduser().absolute() if value else BUNDLED_DATASET
    if not root.is_dir():
        raise TaskError(f"dataset directory not found: {root} (from {source})")
    return root, source


def _resolve_subset(
    root: Path, subset: str | None, env: Mapping[str, str], flag: str
) -> tuple[str, str]:
    """`(subset name or absolute subset path, "" for all pairs; where it came from)`;
    TaskError when the subset does not exist."""
    sub, source = _pick(subset or "", env, ENV_SUBSET, flag)
    if sub:
        try:
            path = subset_file(root, sub)
        except TaskError as exc:
            raise TaskError(f"{exc} (from {source})") from None
        if is_subset_path(sub):
            sub = str(path.resolve())
    return sub, source


def _resolve_split(
    root: Path,
    validation_repos: str | Iterable[str] | None,
    test_repos: str | Iterable[str] | None,
    env: Mapping[str, str],
    flags: Mapping[str, str],
    sources: dict[str, str],
    *,
    require_split: bool,
) -> RepoSplit:
    """The validation / test split (see `resolve_dataset_config`); records where each list came
    from in `sources`."""
    validation, sources["validation"] = _repos(
        validation_repos, env, (ENV_VALIDATION,), flags["validation"]
    )
    test, sources["test"] = _repos(test_repos, env, (ENV_TEST, ENV_HELD_OUT), flags["test"])
    bundled = is_bundled(root)
    if validation is None and bundled:
        validation, sources["validation"] = BUNDLED_SPLIT.validation, "bundled default"
    if test is None and bundled:
        test, sources["test"] = BUNDLED_SPLIT.test, "bundled default"
    if require_split:
        _require_split(root, validation, test, flags)
    try:
        split = RepoSplit(validation or (), test or ())
    except TaskError as exc:
        raise TaskError(
            f"{exc} (validation from {sources['validation']}, test from {sources['test']})"
        ) from None
    try:
        check_split(split, repo_names(root), root)
    except TaskError as exc:
        raise TaskError(
            f"{exc}; validation from {sources['validation']}, test from {sources['test']}"
        ) from None
    return split


def _require_split(
    root: Path,
    validation: tuple[str, ...] | None,
    test: tuple[str, ...] | None,
    flags: Mapping[str, str],
) -> None:
    """TaskError naming the settings to use when the validation or test list is empty."""
    unset = [
        (what, flags[what], env_name)
        for what, repos, env_name in (
            ("validation", validation, ENV_VALIDATION),
            ("test", test, ENV_TEST),
        )
        if not repos
    ]
    if unset:
        raise TaskError(
            f"dataset {root} has no "
            + " and no ".join(f"{what} repositories" for what, _, _ in unset)
            + ": name them with "
            + "; ".join(f"{env_name} or the dataset config's {flag}" for _, flag, env_name in unset)
            + " (the bundled split applies to the bundled dataset only; validation feeds the"
            " first-turn probe, test the held-out rollouts)"
        )
