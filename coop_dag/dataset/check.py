"""Check a CooperBench-format dataset against docs/dataset-spec.md.

`validate_dataset(DIR)` (``coop-dag dataset validate DIR``) reports *findings*: errors break a
rule every dataset must follow (the pipeline would fail or measure something wrong); warnings
break a rule only the bundled dataset must follow, or flag something worth a look. The bundled
rules become errors for the bundled dataset itself (or with ``bundled=True``). What runs:

- layout: `<repo>_task/task<N>/feature<K>/{feature.md, feature.patch, tests.patch}`, at least
  two features per task, `runner.sh`, a base repository (bundled `repo/` or a Dockerfile whose
  clone is in the mirror directory), subsets that name existing pairs;
- patches: both of every feature's patches apply to the base;
- behaviour, through the task's own `runner.sh` (REPO_DIR, PATCH_DIR, PYTHON; run locally, not
  sandboxed: this is the author's own code): with only `tests.patch` at least one test fails;
  with `tests.patch` and `feature.patch` every test passes; the base alone passes;
- merges: every pair's gold patches merged with git (`git merge-tree`), compared with
  `manifest.json`.

The merge computation, written as the manifest the spec describes
(``coop-dag dataset manifest DIR``), is `coop_dag.dataset.manifests`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from coop_dag import BUNDLED_DATASET, PACKAGE_DIR
from coop_dag.dataset.base_repo import BASE_GIT_ENV, base_files, checkout_base, git_env, git_proc
from coop_dag.dataset.discovery import SUBSETS_DIR, load_subset, load_task, repo_names, task_dirs
from coop_dag.dataset.manifests import compute_merges, load_manifest
from coop_dag.dataset.pool import NO_BASE, check_task
from coop_dag.dataset.tasks import Feature, Task, TaskError
from coop_dag.eval.evaluate import parse_pytest_summary

RUNNER_TEMPLATE = PACKAGE_DIR / "bundled" / "runner_template.sh"
FEATURE_MD_HEADINGS = (
    "**Title**:",
    "**Pull Request Details**",
    "**Description**:",
    "**Technical Background**:",
    "**Solution**:",
    "**Files Modified**",
)
DEFAULT_RUN_TIMEOUT = 300.0
# A runner written for CooperBench's Docker images, not for a local checkout.
_DOCKER_RUNNER_RE = re.compile(r"/workspace/repo\b")
_FAILED_FILE_RE = re.compile(r"^(?:FAILED|ERROR) (tests/[^\s:]+)", re.MULTILINE)


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning"
    where: str  # "<repo>/<task_id>[/feature<K>]", a subset file, or the dataset directory
    rule: str  # short rule name, as in docs/dataset-spec.md
    message: str


@dataclass
class ValidationReport:
    dataset: Path
    bundled_rules: bool
    tasks: int = 0
    features: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict:
        return {
            "dataset": str(self.dataset),
            "bundled_rules": self.bundled_rules,
            "tasks": self.tasks,
            "features": self.features,
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [asdict(f) for f in self.findings],
        }

    def format(self) -> str:
        lines = [
            f"{f.level.upper():<7} {f.where}: [{f.rule}] {f.message}"
            for f in sorted(self.findings, key=lambda f: (f.level != "error", f.where))
        ]
        rules = "bundled-dataset rules" if self.bundled_rules else "user-dataset rules"
        lines.append(
            f"{self.dataset}: {self.tasks} task(s), {self.features} feature(s) checked "
            f"({rules}): {len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# patches


def patch_files(patch: Path) -> dict[str, str]:
    """`{path: "new" | "deleted" | "modified"}` for each file a git-format patch touches."""
    out: dict[str, str] = {}
    text = patch.read_text(encoding="utf-8", errors="replace")
    for block in re.split(r"^diff --git ", text, flags=re.M)[1:]:
        header = block.split("\n@@", 1)[0]
        m = re.search(r"^\+\+\+ b/(\S+)", header, re.M) or re.search(r"^--- a/(\S+)", header, re.M)
        path = m.group(1) if m else block.split()[1].removeprefix("b/")
        if re.search(r"^new file mode", header, re.M) or "--- /dev/null" in header:
            out[path] = "new"
        elif re.search(r"^deleted file mode", header, re.M) or "+++ /dev/null" in header:
            out[path] = "deleted"
        else:
            out[path] = "modified"
    return out


# --------------------------------------------------------------------------------------------
# running a task's runner.sh


def run_runner(
    task: Task,
    repo: Path,
    patch_dir: Path,
    patches: Iterable[str],
    *,
    python: str = sys.executable,
    timeout: float = DEFAULT_RUN_TIMEOUT,
) -> tuple[int, str]:
    """`bash runner.sh PATCH...` on the checkout `repo` (REPO_DIR, PATCH_DIR, PYTHON set), then
    the checkout reset to its base commit whatever the runner did. `(exit code, output)`; a
    timeout is exit code 124."""
    repo, patch_dir = Path(repo).resolve(), Path(patch_dir).resolve()  # the runner cd's
    env = {
        **git_env(BASE_GIT_ENV),
        "REPO_DIR": str(repo),
        "PATCH_DIR": str(patch_dir),
        "PYTHON": python,
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",  # this environment's plugins are not the task's
    }
    env.pop("PYTEST_ADDOPTS", None)
    try:
        proc = subprocess.run(
            ["bash", str(task.runner.resolve()), *patches],
            cwd=patch_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code = 124
        output = f"timed out after {timeout:.0f} s\n{exc.stdout or ''}{exc.stderr or ''}"
    git_proc(["reset", "-q", "--hard", "HEAD"], repo, BASE_GIT_ENV, check=False)
    git_proc(["clean", "-qfdx"], repo, BASE_GIT_ENV, check=False)
    return code, output


def _tail(output: str, n: int = 6) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) or "(no output)"


# --------------------------------------------------------------------------------------------
# validation


class _Collector:
    def __init__(self, bundled_rules: bool) -> None:
        self.bundled_rules = bundled_rules
        self.findings: list[Finding] = []

    def error(self, where: str, rule: str, message: str) -> None:
        self.findings.append(Finding("error", where, rule, message))

    def warning(self, where: str, rule: str, message: str) -> None:
        self.findings.append(Finding("warning", where, rule, message))

    def bundled(self, where: str, rule: str, message: str) -> None:
        """A rule the bundled dataset must follow; a user's dataset gets a warning."""
        level = "error" if self.bundled_rules else "warning"
        self.findings.append(Finding(level, where, rule, message))


def _check_feature_text(task: Task, mirror_dir: Path | None, out: _Collector) -> None:
    in_base = base_files(task.dir, mirror_dir)
    for fid, feature in task.features.items():
        where = f"{task.key}/feature{fid}"
        for patch in (feature.feature_patch, feature.tests_patch):
            if not patch.is_file():
                out.error(where, "layout", f"missing {patch.name}")
        text = feature.description
        positions = [text.find(h) for h in FEATURE_MD_HEADINGS]
        if -1 in positions or positions != sorted(positions):
            missing = [h for h, p in zip(FEATURE_MD_HEADINGS, positions, strict=True) if p < 0]
            out.bundled(
                where,
                "feature-md",
                f"feature.md headings missing or out of order (missing: {missing or 'none'})",
            )
        listed = feature.files_modified
        if not listed:
            out.bundled(
                where,
                "files-modified",
                "feature.md has no Files Modified list: task files fall back to prose paths "
                f"that exist in the base ({list(feature.files) or 'none found'})",
            )
        if not feature.feature_patch.is_file() or not feature.tests_patch.is_file():
            continue
        changed = patch_files(feature.feature_patch)
        if listed and set(listed) != set(changed):
            out.bundled(
                where,
                "files-modified",
                f"Files Modified {sorted(listed)} != files feature.patch changes {sorted(changed)}",
            )
        for path in listed:
            created = changed.get(path) == "new" and not out.bundled_rules
            if in_base is not None and path not in in_base and not created:
                out.bundled(where, "files-modified", f"Files Modified path not in base: {path}")
        if any(p.startswith("tests/") for p in changed):
            out.bundled(where, "patches", f"feature.patch touches tests: {sorted(changed)}")
        added = patch_files(feature.tests_patch)
        if not added or any(k != "new" or not p.startswith("tests/") for p, k in added.items()):
            out.bundled(where, "patches", f"tests.patch must only add new tests/ files: {added}")


def _check_behaviour(
    task: Task,
    mirror_dir: Path | None,
    out: _Collector,
    python: str,
    timeout: float,
    log: Callable[[str], None],
) -> None:
    runner_text = task.runner.read_text(encoding="utf-8", errors="replace")
    if _DOCKER_RUNNER_RE.search(runner_text) and "REPO_DIR" not in runner_text:
        out.error(
            task.key,
            "runner",
            "runner.sh expects CooperBench's Docker layout (/workspace/repo); tests run on a "
            "local checkout need a runner that honours REPO_DIR, PATCH_DIR and PYTHON "
            "(docs/dataset-spec.md, coop_dag/bundled/runner_template.sh); behaviour not checked",
        )
        return
    run = partial(run_runner, task, python=python, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="coop-dag-validate-") as tmp:
        repo = Path(tmp) / "repo"
        try:
            checkout_base(task, repo, mirror_dir)
        except TaskError as exc:
            out.error(task.key, "base", f"base checkout failed: {exc}")
            return
        empty = Path(tmp) / "empty.patch"
        empty.write_text("")
        log(f"{task.key}: base")
        code, output = run(repo, Path(tmp), [str(empty)])
        if code != 0 or parse_pytest_summary(output)["passed"] == 0:
            out.bundled(
                task.key, "base-passes", f"base tests do not pass (exit {code}): {_tail(output)}"
            )
        for fid, feature in task.features.items():
            where = f"{task.key}/feature{fid}"
            if not (feature.feature_patch.is_file() and feature.tests_patch.is_file()):
                continue
            log(f"{where}: tests.patch, then tests.patch + feature.patch")
            _check_feature_behaviour(feature, where, partial(run, repo, feature.dir), out)


def _check_feature_behaviour(
    feature: Feature,
    where: str,
    run: Callable[[list[str]], tuple[int, str]],
    out: _Collector,
) -> None:
    """One feature's tests through `run` (its runner on the base checkout, given the patches):
    with only tests.patch some test fails (and only the new tests), with both patches all pass."""
    code, output = run(["tests.patch"])
    counts = parse_pytest_summary(output)
    if code == 0 or counts["failed"] == 0:
        out.error(
            where,
            "tests-fail-without-feature",
            f"with only tests.patch no test fails (exit {code}, {counts}): the tests do "
            f"not test the feature; {_tail(output)}",
        )
    else:
        new_tests = {p for p, k in patch_files(feature.tests_patch).items() if k == "new"}
        failed = set(_FAILED_FILE_RE.findall(output))
        if new_tests and failed - new_tests:
            out.bundled(
                where,
                "tests-fail-without-feature",
                f"tests.patch alone breaks other tests: {sorted(failed - new_tests)}",
            )
    code, output = run(["tests.patch", "feature.patch"])
    counts = parse_pytest_summary(output)
    if code != 0 or counts["passed"] == 0 or counts["failed"]:
        out.error(
            where,
            "tests-pass-with-feature",
            f"with tests.patch and feature.patch the tests do not all pass (exit {code}, "
            f"{counts}): {_tail(output)}",
        )


def _check_merges(task: Task, mirror_dir: Path | None, out: _Collector) -> None:
    try:
        manifest = load_manifest(task)
    except TaskError as exc:
        out.error(task.key, "manifest", str(exc))
        return
    try:
        merges = compute_merges(task, mirror_dir)
    except TaskError as exc:
        out.error(task.key, "merges", f"cannot merge the gold patches: {exc}")
        return
    statuses = set(merges.values())
    if out.bundled_rules and ("conflicts" not in statuses or "clean" not in statuses):
        out.error(
            task.key, "merges", f"needs a clean and a conflicting pair, got {sorted(statuses)}"
        )
    if manifest is None:
        out.bundled(
            task.key,
            "manifest",
            "no manifest.json: pairs' merge results are unknown to the task pool "
            "(`coop-dag dataset manifest DIR` writes it)",
        )
        return
    if manifest.get("features") not in (None, sorted(task.features)):
        out.error(
            task.key,
            "manifest",
            f"manifest features {manifest['features']} != feature directories "
            f"{sorted(task.features)}",
        )
    recorded = manifest.get("merges", {})
    wrong = {k: (recorded.get(k), v) for k, v in merges.items() if recorded.get(k) != v}
    extra = sorted(set(recorded) - set(merges))
    if wrong or extra:
        detail = ", ".join(f"{k}: manifest {a!r}, git {b!r}" for k, (a, b) in sorted(wrong.items()))
        out.error(
            task.key,
            "manifest",
            f"merge results differ from git's: {detail or 'none'}"
            + (f"; unknown pairs {extra}" if extra else "")
            + " (`coop-dag dataset manifest DIR` recomputes them)",
        )


def _check_task(
    repo: str,
    task_dir: Path,
    mirror_dir: Path | None,
    out: _Collector,
    run_tests: bool,
    python: str,
    timeout: float,
    log: Callable[[str], None],
) -> Task | None:
    where = f"{repo}/{task_dir.name.removeprefix('task')}"
    try:
        task = load_task(repo, task_dir, mirror_dir)
    except TaskError as exc:
        out.error(where, "layout", str(exc))
        return None
    if not task.runner.is_file():
        out.error(task.key, "runner", f"missing runner.sh ({task.runner})")
    elif out.bundled_rules and task.runner.read_bytes() != RUNNER_TEMPLATE.read_bytes():
        out.error(task.key, "runner", f"runner.sh differs from {RUNNER_TEMPLATE}")
    if len(task.features) < 4:
        out.bundled(task.key, "layout", f"{len(task.features)} features, the spec asks for 4+")
    if out.bundled_rules and not task.bundled_source.is_dir():
        out.error(task.key, "base", f"bundled tasks carry their source in {task.bundled_source}")
    _check_feature_text(task, mirror_dir, out)
    problems = check_task(task, mirror_dir)
    for fid, reasons in problems.items():
        for reason in reasons:
            if reason.startswith("missing "):
                continue  # reported above as a layout/runner error
            no_base = reason.startswith(NO_BASE)
            where = task.key if fid is None else f"{task.key}/feature{fid}"
            out.error(where, "base" if no_base else "patches", reason)
    if any(r.startswith(NO_BASE) for r in problems.get(None, [])):
        return task  # nothing more can run without a base
    patches_ok = not any(fid is not None for fid in problems)
    if run_tests and task.runner.is_file() and patches_ok:
        _check_behaviour(task, mirror_dir, out, python, timeout, log)
    if patches_ok:
        _check_merges(task, mirror_dir, out)
    return task


def validate_dataset(
    dataset_dir: Path | str,
    *,
    mirror_dir: Path | None = None,
    bundled: bool | None = None,
    run_tests: bool = True,
    python: str = sys.executable,
    timeout: float = DEFAULT_RUN_TIMEOUT,
    jobs: int = 1,
    log: Callable[[str], None] = lambda _msg: None,
) -> ValidationReport:
    """Check every task of the dataset (nothing stops at the first problem). `bundled`: apply
    the bundled-only rules as errors (default: only to the bundled dataset itself).
    `run_tests=False` skips the runner (layout, patches and merges only). `jobs` tasks are
    checked at once."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise TaskError(f"dataset directory not found: {root}")
    bundled_rules = root.resolve() == BUNDLED_DATASET.resolve() if bundled is None else bundled
    out = _Collector(bundled_rules)
    report = ValidationReport(root, bundled_rules)
    dirs = task_dirs(root)
    if not dirs:
        out.error(str(root), "layout", "no <repo>_task/task<N>/ directory")
    for repo in repo_names(root):
        for child in sorted((root / repo).iterdir()):
            if child.is_dir() and not child.name.startswith("task"):
                out.warning(f"{repo}/{child.name}", "layout", "not a task<N> directory: ignored")

    def one(item: tuple[str, Path]) -> Task | None:
        return _check_task(*item, mirror_dir, out, run_tests, python, timeout, log)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        loaded = list(pool.map(one, dirs))
    tasks = [t for t in loaded if t is not None]
    report.tasks = len(dirs)
    report.features = sum(len(t.features) for t in tasks)
    unloadable = {
        (repo, d.name.removeprefix("task"))
        for (repo, d), t in zip(dirs, loaded, strict=True)
        if t is None
    }
    for path in sorted((root / SUBSETS_DIR).glob("*.json")):
        _check_subset(root, path, {(t.repo, t.task_id): t for t in tasks}, unloadable, out)
    report.findings = out.findings
    return report


def _check_subset(
    root: Path,
    path: Path,
    tasks: dict[tuple[str, int], Task],
    unloadable: set[tuple[str, str]],
    out: _Collector,
) -> None:
    """Every task and pair a subset lists exists (tasks that failed to load are reported on
    their own, not again here)."""
    where = str(path.relative_to(root))
    try:
        subset = load_subset(root, str(path))
    except TaskError as exc:
        out.error(where, "subsets", str(exc))
        return
    for (repo, task_id), listed in subset.tasks.items():
        task = tasks.get((repo, task_id))
        if task is None:
            if (repo, str(task_id)) not in unloadable:
                out.error(where, "subsets", f"lists task {repo}/{task_id}, not in the dataset")
            continue
        for a, b in listed or ():
            missing = [f for f in (a, b) if f not in task.features]
            if missing:
                out.error(
                    where, "subsets", f"lists pair [{a}, {b}] of {task.key}: no feature {missing}"
                )
