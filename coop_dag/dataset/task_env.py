"""Per-task test environments for real CooperBench tasks on the local backend.

A real task's `runner.sh` is written for CooperBench's Docker image: it `cd`s to
`/workspace/repo`, reads patches from `/patches`, `pip install`s the repository and runs pytest
with the image's `python`. Locally there is no image and no network, so:

1. the task's **declared dependencies** are read from its own files — the `pip install` lines of
   its `Dockerfile` (and of a `setup.sh` next to it), where `-e .` / `".[dev]"` means the
   repository itself, whose requirements come from its packaging metadata at the base commit
   (`pyproject.toml`'s `[project]`, or `setup.cfg`); a repository whose metadata is not static
   (a `setup.py`, dynamic dependencies) is installed from a base checkout by its own build
   backend instead. No `pip install` line at all: the repository's metadata, plus pytest;
2. a virtual environment is built **once per task and declaration** with uv through the package
   registry (`--find-links /opt/wheels` when torch is asked for, so the local CPU wheel serves),
   under ``<cache root>/task-envs/<repo>-task<N>-<sha12>`` (the hash covers the requirements
   and the interpreter), built in a temporary directory and renamed into place, so a half-built
   environment is never used. Afterwards it is reused as is: no registry, no network;
3. the runner runs unchanged in the bubblewrap sandbox with the merged checkout bound at
   `/workspace/repo`, the patches at `/patches`, the environment's `python` first on PATH,
   the checkout (`src/` and its root) on PYTHONPATH, and `pip` a no-op that says why (the
   sandbox has no network, and the dependencies are already installed).

`TaskEnvError` names the task, the file and the requirement that failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from configparser import ConfigParser
from dataclasses import dataclass, field
from pathlib import Path

from coop_dag.dataset.base_repo import BaseTree, base_tree, checkout_base
from coop_dag.dataset.tasks import Task, TaskError
from coop_dag.util.files import file_lock

DOCKER_REPO = "/workspace/repo"
DOCKER_PATCHES = "/patches"
LOCAL_WHEELS = Path("/opt/wheels")
ENV_MARKER = "coop-dag-env.json"

# `pip` inside the sandbox: the environment is prebuilt and there is no network.
PIP_SHIM = """#!/bin/sh
echo "coop-dag: 'pip $*' skipped: the local backend runs this task in a prebuilt environment \
($COOP_DAG_TASK_ENV) with no network"
exit 0
"""

# pip options that take a value (skipped with it) and those that take none.
_OPTS_WITH_VALUE = {
    "-c", "--constraint", "-i", "--index-url", "--extra-index-url", "-f", "--find-links",
    "--target", "-t", "--prefix", "--root", "--python", "--cache-dir", "--src", "--trusted-host",
    "--platform", "--python-version", "--implementation", "--abi", "--progress-bar",
}  # fmt: skip
_SELF_TARGET = re.compile(r"^(?:\.|\./|/workspace/repo/?|\$\{?PWD\}?)(\[[\w,.\- ]+\])?$")
_TOOLING = {"pip", "setuptools", "wheel"}  # `pip install --upgrade pip`: not a test dependency

LogFn = Callable[[str], None]


class TaskEnvError(RuntimeError):
    """A task's test environment could not be declared or built."""


def needs_docker_layout(runner: Path) -> bool:
    """Whether a task's runner.sh expects CooperBench's image (`/workspace/repo`)."""
    try:
        return DOCKER_REPO in runner.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Declaration:
    """What a task asks to have installed: plain requirement strings, and whether (with which
    extras) the repository itself is installed."""

    requirements: tuple[str, ...] = ()
    project_extras: tuple[str, ...] | None = None  # None: the repository is not installed
    sources: tuple[str, ...] = ()  # the files read, for eval.json and the env marker
    requirement_files: tuple[str, ...] = ()  # `-r FILE` (repository paths)


def _commands(text: str) -> Iterator[list[str]]:
    """Shell words of each simple command in Dockerfile RUN lines / a shell script: line
    continuations joined, split on `&&`, `||`, `;`."""
    joined = re.sub(r"\\\s*\n", " ", text)
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"^RUN\s+", "", line)
        for part in re.split(r"&&|\|\||;", line):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:
                continue
            if words:
                yield words


def _pip_args(words: list[str]) -> list[str] | None:
    """The arguments of a `pip install` (also `pip3`, `python -m pip`, `uv pip`), else None."""
    for i in range(len(words) - 1):
        head, nxt = words[i], words[i + 1]
        is_pip = os.path.basename(head) in ("pip", "pip3") or (
            head == "pip" and i > 0 and words[i - 1] in ("-m", "uv")
        )
        if is_pip and nxt == "install":
            return words[i + 2 :]
    return None


def parse_declarations(text: str, source: str) -> Declaration:
    """Requirements of every `pip install` in `text` (a Dockerfile or setup.sh)."""
    reqs: list[str] = []
    req_files: list[str] = []
    extras: list[str] | None = None
    for words in _commands(text):
        args = _pip_args(words)
        if args is None:
            continue
        i = 0
        while i < len(args):
            arg = args[i]
            if arg in ("-e", "--editable", "-r", "--requirement") and i + 1 < len(args):
                value = args[i + 1]
                i += 2
                if arg in ("-r", "--requirement"):
                    req_files.append(value.removeprefix(DOCKER_REPO + "/").removeprefix("./"))
                    continue
                arg = value
            elif arg in _OPTS_WITH_VALUE:
                i += 2
                continue
            elif arg.startswith("-"):
                i += 1
                continue
            else:
                i += 1
            m = _SELF_TARGET.match(arg)
            if m:
                extras = (extras or []) + [
                    e.strip() for e in (m.group(1) or "").strip("[]").split(",") if e.strip()
                ]
            elif re.split(r"[\[<>=!~; ]", arg, maxsplit=1)[0].lower() not in _TOOLING:
                reqs.append(arg)
    return Declaration(
        tuple(reqs),
        None if extras is None else tuple(dict.fromkeys(extras)),
        (source,),
        tuple(req_files),
    )


def task_declaration(task: Task) -> Declaration:
    """The task's `pip install` lines: its Dockerfile, then `setup.sh` (either may be absent)."""
    reqs: list[str] = []
    files: list[str] = []
    sources: list[str] = []
    extras: list[str] | None = None
    for name in ("Dockerfile", "setup.sh"):
        path = task.dir / name
        if not path.is_file():
            continue
        d = parse_declarations(path.read_text(encoding="utf-8", errors="replace"), name)
        reqs += d.requirements
        files += d.requirement_files
        sources.append(name)
        if d.project_extras is not None:
            extras = (extras or []) + list(d.project_extras)
    if not reqs and extras is None and not files:
        extras = []  # nothing declared: the repository's own metadata
        sources.append("packaging metadata (no pip install line)")
    return Declaration(
        tuple(dict.fromkeys(reqs)),
        None if extras is None else tuple(dict.fromkeys(extras)),
        tuple(sources),
        tuple(dict.fromkeys(files)),
    )


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    """The normalised project name of a requirement string (`Foo_Bar[x]>=1` -> `foo-bar`)."""
    return _norm(re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0])


def _expand_extras(name: str, deps: list[str], optional: dict, extras: tuple[str, ...]) -> list:
    """`deps` plus each extra's requirements; an extra naming the project itself
    (`pkg[test]` inside `dev`) is expanded in place."""
    out = list(deps)
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise TaskEnvError(f"extra [{extra}] is not in the project's optional dependencies")
        for req in optional[extra]:
            m = re.match(r"^\s*([\w.\-]+)\s*\[([^\]]+)\]\s*$", req)
            if m and _norm(m.group(1)) == _norm(name):
                todo += [e.strip() for e in m.group(2).split(",")]
            else:
                out.append(req)
    return out


def static_project_requirements(read: Callable[[str], str | None], extras: tuple[str, ...]):
    """The repository's requirements (with `extras`) from static metadata: `pyproject.toml`'s
    `[project]` or `setup.cfg`'s `[options]`. None when they are not static."""
    text = read("pyproject.toml")
    if text is not None:
        project = tomllib.loads(text).get("project") or {}
        dynamic = set(project.get("dynamic") or [])
        if project and not dynamic & {"dependencies", "optional-dependencies"}:
            return _expand_extras(
                str(project.get("name", "")),
                list(project.get("dependencies") or []),
                dict(project.get("optional-dependencies") or {}),
                extras,
            )
    text = read("setup.cfg")
    if text is not None and read("setup.py") in (None, ""):
        cfg = ConfigParser()
        cfg.read_string(text)
        if cfg.has_option("options", "install_requires") or cfg.has_section("options"):

            def lines(value: str) -> list[str]:
                return [v.strip() for v in value.splitlines() if v.strip()]

            optional = (
                {k: lines(v) for k, v in cfg.items("options.extras_require")}
                if cfg.has_section("options.extras_require")
                else {}
            )
            return _expand_extras(
                cfg.get("metadata", "name", fallback=""),
                lines(cfg.get("options", "install_requires", fallback="")),
                optional,
                extras,
            )
    return None


# --------------------------------------------------------------------------- environments


@dataclass
class TaskEnv:
    """A built environment: its python, what it holds, whether this call built it."""

    path: Path
    requirements: list[str]
    key: str
    built_now: bool = False
    install_project: str | None = None  # "<extras>" when the repository was built from source
    info: dict = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def describe(self) -> dict:
        return {
            "path": str(self.path),
            "key": self.key,
            "requirements": self.requirements,
            "built_now": self.built_now,
            "sources": self.info.get("sources", []),
        }


def env_cache_root() -> Path:
    from coop_dag.training.student_cache import cache_root

    return cache_root() / "task-envs"


def find_uv() -> str:
    """uv next to this interpreter (the core venv has it), else on PATH."""
    here = Path(sys.executable).parent / "uv"
    if here.is_file():
        return str(here)
    found = shutil.which("uv")
    if not found:
        raise TaskEnvError("uv not found next to the interpreter nor on PATH (install uv)")
    return found


def _run(argv: list[str], what: str, timeout: float) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TaskEnvError(f"{what}: timed out after {timeout:.0f}s") from None
    except OSError as exc:
        raise TaskEnvError(f"{what}: {exc}") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise TaskEnvError(f"{what}: exit {proc.returncode}\n{tail}")
    return proc.stdout + proc.stderr


def ensure_task_env(
    task: Task,
    mirror_dir: Path | None = None,
    *,
    root: Path | None = None,
    timeout: float = 1800.0,
    log: LogFn | None = None,
) -> TaskEnv:
    """The task's test environment (see the module docstring): reused when built before,
    otherwise built now with uv. TaskEnvError says which declaration or install failed."""
    say = log or (lambda _m: None)
    decl = task_declaration(task)
    tree = base_tree(task.dir, mirror_dir)
    where = f"task {task.key}"
    reqs, build_project = _requirements(decl, tree, where)
    torch = any(_req_name(r) == "torch" for r in reqs)
    find_links = [str(LOCAL_WHEELS)] if torch and LOCAL_WHEELS.is_dir() else []
    identity = {
        "requirements": sorted(reqs),
        "build_project": None if build_project is None else [tree.kind, *build_project],
        "python": ".".join(map(str, sys.version_info[:3])),
        "find_links": find_links,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(root) if root else env_cache_root()
    final = root / f"{task.repo}-task{task.task_id}-{key}"
    info = {**identity, "task": task.key, "sources": list(decl.sources)}
    env = TaskEnv(
        final, reqs, key, False, None if build_project is None else ",".join(build_project), info
    )
    if (final / ENV_MARKER).is_file():
        return env  # built before: nothing is installed, nothing is fetched
    with file_lock(root / f".{final.name}.lock"):
        if (final / ENV_MARKER).is_file():
            return env
        _build_env(task, mirror_dir, env, build_project, find_links, timeout, say)
    env.built_now = True
    say(f"{where}: test environment ready at {final}")
    return env


def _requirements(
    decl: Declaration, tree: BaseTree | None, where: str
) -> tuple[list[str], tuple[str, ...] | None]:
    """`(requirements, build_project)`: the declared requirements, those of its `-r` files and
    of the repository's static metadata, plus pytest; `build_project` (the extras) when the
    repository must be built from a base checkout instead (a setup.py, dynamic metadata)."""
    reqs = list(decl.requirements)
    for rel in decl.requirement_files:
        text = tree.read(rel) if tree else None
        if text is None:
            raise TaskEnvError(
                f"{where}: requirements file {rel} (from `pip install -r`) not found"
            )
        reqs += [
            line.split("#", 1)[0].strip()
            for line in text.splitlines()
            if line.split("#", 1)[0].strip() and not line.strip().startswith("-")
        ]
    build_project: tuple[str, ...] | None = None
    if decl.project_extras is not None:
        if tree is None:
            raise TaskEnvError(f"{where}: its base repository cannot be read (no mirror?)")
        try:
            static = static_project_requirements(tree.read, decl.project_extras)
        except (TaskEnvError, tomllib.TOMLDecodeError) as exc:
            raise TaskEnvError(f"{where}: packaging metadata: {exc}") from None
        if static is None:
            build_project = decl.project_extras  # setup.py / dynamic: its build backend decides
        else:
            reqs += static
    if not any(_req_name(r) == "pytest" for r in reqs):
        reqs.append("pytest")  # runners run `python -m pytest`
    return list(dict.fromkeys(reqs)), build_project


def _build_env(
    task: Task,
    mirror_dir: Path | None,
    env: TaskEnv,
    build_project: tuple[str, ...] | None,
    find_links: list[str],
    timeout: float,
    say: LogFn,
) -> None:
    """Build `env` with uv in a temporary directory next to it and rename it into place (the
    caller holds the lock), so a half-built environment is never used."""
    where, final, reqs = f"task {task.key}", env.path, env.requirements
    uv = find_uv()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    started = time.time()
    try:
        say(f"{where}: building its test environment ({len(reqs)} requirements) with uv")
        _run(
            [uv, "venv", "-q", "--relocatable", "--python", sys.executable, str(tmp / "env")],
            f"{where}: uv venv",
            timeout,
        )
        install = [uv, "pip", "install", "-q", "--python", str(tmp / "env" / "bin" / "python")]
        install += [a for fl in find_links for a in ("--find-links", fl)]
        _run(install + reqs, f"{where}: uv pip install {' '.join(reqs)}", timeout)
        if build_project is not None:
            src = tmp / "base"
            try:
                checkout_base(task, src, mirror_dir)
            except TaskError as exc:
                raise TaskEnvError(f"{where}: {exc}") from None
            target = str(src) + (f"[{','.join(build_project)}]" if build_project else "")
            _run(install + [target], f"{where}: uv pip install <base checkout>", timeout)
            shutil.rmtree(src, ignore_errors=True)
        env.info["build_seconds"] = round(time.time() - started, 1)
        (tmp / "env" / ENV_MARKER).write_text(json.dumps(env.info, indent=2) + "\n")
        os.replace(tmp / "env", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_pip_shim(directory: Path) -> Path:
    """A directory with `pip` / `pip3` no-ops (see PIP_SHIM), for PATH inside the sandbox."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("pip", "pip3"):
        path = directory / name
        path.write_text(PIP_SHIM)
        path.chmod(0o755)
    return directory
