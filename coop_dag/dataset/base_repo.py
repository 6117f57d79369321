"""A task's base repository: where it comes from (bundled `repo/` sources, or the Dockerfile's
`git clone URL repo && git checkout SHA` resolved against a local mirror directory, since
nothing is fetched at run time), checkouts of it, reading it in place without a checkout
(`BaseTree`, `base_files`), a temporary index that sees its tree (`base_index`), and the one
git runner of the dataset package (`run_git`, `git_proc`).

Checkouts clean up after themselves on failure; everything else only reads.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from coop_dag.dataset.tasks import TaskError

if TYPE_CHECKING:
    from coop_dag.dataset.tasks import Task

# A bundled base commit is made with a fixed identity and date so its sha is reproducible.
BASE_GIT_ENV = {
    "GIT_AUTHOR_NAME": "coop-dag",
    "GIT_AUTHOR_EMAIL": "coop-dag@localhost",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "coop-dag",
    "GIT_COMMITTER_EMAIL": "coop-dag@localhost",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}

# Junk that a bundled `repo/` may pick up when someone runs its tests in place; never committed,
# so the base sha depends on the sources only.
_BUNDLED_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".git")


# Variables that would point git at another repository than the one in `cwd`.
_GIT_LOCATION_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY")


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without `_GIT_LOCATION_VARS`, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
    return {**env, **(extra or {})}


def git_proc(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`git ARGS` in `cwd` (environment: `git_env(env)`); with `check`, TaskError on a non-zero
    exit naming the command, the directory and git's message."""
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=git_env(env), capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise TaskError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc


def run_git(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """`git ARGS`'s stripped stdout; TaskError on failure (see `git_proc`)."""
    return git_proc(args, cwd, env).stdout.strip()


def base_files(task_dir: Path, mirror_dir: Path | None = None) -> frozenset[str] | None:
    """Repo-relative paths of every file in the task's base repository: the bundled `repo/`
    tree, or the Dockerfile's commit read from the mirror (no checkout). None when the base
    cannot be read here (no bundled source, no mirror): the checkout reports why, later.

    Kept apart from `base_tree(...).files`, which also drops `*.pyc` and tests the skipped
    names on the repo-relative path only: the task files discovery computes stay as they were."""
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
        return frozenset(run_git(["ls-tree", "-r", "--name-only", sha], mirror).splitlines())
    except TaskError:
        return None


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
        run_git(["init", "-q", "-b", "main"], dest)
        run_git(["add", "-A"], dest)
        run_git(["commit", "-q", "--no-gpg-sign", "--no-verify", "-m", "base"], dest, BASE_GIT_ENV)
        return run_git(["rev-parse", "HEAD"], dest)
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
        run_git(
            ["clone", "-q", "--no-checkout", str(source.resolve()), str(dest.resolve())], source
        )
        try:
            full = run_git(["rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}"], dest)
        except TaskError:
            raise TaskError(
                f"task {task.key}: commit {sha} of {url} not found in mirror {source}"
            ) from None
        run_git(["-c", "advice.detachedHead=false", "checkout", "-q", full], dest)
        return run_git(["rev-parse", "HEAD"], dest)
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
            return run_git(["show", f"{self._sha}:{path}"], self._git_dir)
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
        listing = run_git(["ls-tree", "-r", "--name-only", sha], git_dir)
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


# --------------------------------------------------------------------------------------------
# a temporary index on the base tree (patch checks without a checkout)


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
            run_git(["read-tree", f"{sha}^{{tree}}"], mirror, env)
        except TaskError:
            raise TaskError(f"task {task.key}: commit {sha} not found in mirror {mirror}") from None
        yield mirror, env
