"""CooperBench's coop evaluation of one feature pair: tests run locally or in the task's image.

`evaluate_pair` reproduces CooperBench's `test_merged` (cooperbench/eval/sandbox.py) and the
`eval.json` its `_evaluate_single` writes, key for key:

1. a fresh checkout of the task's base commit;
2. each agent's patch (test files filtered out, as CooperBench does) committed on its own
   branch from base — `agent1` for feature_a, `agent2` for feature_b; a patch that does not
   `git apply` (nor `git apply --3way`) is recorded as `failed`, an empty one as `skipped`;
3. `git merge` of the two branches (CooperBench's "naive" strategy); on conflicts, a retry
   with the union merge driver so the tests still have a tree to run on ("union" strategy);
4. each feature's `tests.patch` run on the merged tree through the task's `runner.sh`,
   inside the same bubblewrap sandbox agents use (no network, read-only root). A real task's
   runner, written for CooperBench's image (`cd /workspace/repo`, `pip install`), runs
   unchanged against the merged checkout bound at `/workspace/repo`, in the task's own
   environment built once from its declarations (`coop_dag.dataset.task_env`). With the docker
   backend (the cluster profile's sandbox) such a runner runs in the task's own image
   instead, as CooperBench runs it: `runner.sh tests.patch merged.patch` with the merged
   diff and the feature's tests in `/patches` (`run_in_image`, `ImageTestSettings`);
5. pytest's summary line parsed into `tests_passed` / `tests_failed`.

Tests that could not run (no environment for the task, no image or no Docker daemon, or a
runner that ended without a pytest summary) are no outcome of the agents: `error` names the
cause, and scoring leaves the pair out of the success rates and counts it in `n_eval_errors`.

`merge.status` is `clean`, `conflicts`, `identical` (both branches produce the same tree —
a merge of nothing into something) or `missing_input` (a patch failed to apply or was
empty). CooperBench reports an empty patch as `skipped` and still calls the merge clean;
here an empty patch is `missing_input` too, because a pair where one agent submitted
nothing is not a merge of the agents' joint work.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coop_dag.agent.sandbox.base import DEFAULT_MAX_OUTPUT_BYTES, CommandResult, SandboxError
from coop_dag.agent.sandbox.bwrap import DEFAULT_HIDDEN_PATHS, BwrapRunner, _prepare_home, hideable
from coop_dag.agent.sandbox.docker import task_image
from coop_dag.agent.sandbox.process import _to_result
from coop_dag.dataset.base_repo import checkout_base
from coop_dag.dataset.task_env import (
    DOCKER_PATCHES,
    DOCKER_REPO,
    TaskEnvError,
    ensure_task_env,
    needs_docker_layout,
    write_pip_shim,
)
from coop_dag.dataset.tasks import Pair, TaskError
from coop_dag.eval.image_tests import ImageTestError, ImageTestSettings, run_in_image
from coop_dag.eval.merge import (
    EVAL_GIT_ENV,
    NoOutcome,
    branch_setup,
    filter_test_files,
    merge_branches,
    normalise_patch,
)
from coop_dag.util.files import atomic_write_json
from coop_dag.util.scratch import owned_tempdir, sweep_stale

log = logging.getLogger(__name__)

DEFAULT_TEST_TIMEOUT = 600.0
MERGE_DIFF_LIMIT = 5000  # CooperBench truncates the stored merged diff to this many chars
EVAL_BACKENDS = ("local", "docker")  # the sandbox choice (COOP_DAG_SANDBOX) decides

# --------------------------------------------------------------------------- test output

_SUMMARY_LINE = re.compile(
    r"^=*\s*((?:\d+ (?:passed|failed|errors?|skipped|xfailed|xpassed|warnings?|deselected|"
    r"rerun)(?:, )?)+)(?: in [\d.]+s.*)?\s*=*\s*$",
    re.MULTILINE,
)


def has_pytest_summary(output: str) -> bool:
    """Whether pytest got as far as its final summary line (its tests ran, or none could)."""
    return bool(_SUMMARY_LINE.search(output or "")) or "no tests ran" in (output or "")


def parse_pytest_summary(output: str) -> dict[str, int]:
    """Counts from pytest's final summary line (`3 failed, 10 passed in 0.12s`).

    `failed` includes collection/fixture errors, as CooperBench counts them. The LAST
    summary-looking line wins, so test names or printed text that happen to contain
    "N passed" earlier in the output do not confuse it.
    """
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    matches = list(_SUMMARY_LINE.finditer(output or ""))
    if not matches:
        return {"passed": 0, "failed": 0}
    for n, word in re.findall(r"(\d+) (\w+)", matches[-1].group(1)):
        key = {"error": "errors", "errors": "errors"}.get(word, word)
        if key in counts:
            counts[key] += int(n)
    return {"passed": counts["passed"], "failed": counts["failed"] + counts["errors"]}


# --------------------------------------------------------------------------- results


def _feature_result(feature_id: int | None, **kw: Any) -> dict[str, Any]:
    return {
        "feature_id": feature_id,
        "passed": kw.get("passed", False),
        "exit_code": kw.get("exit_code"),
        "tests_passed": kw.get("tests_passed", 0),
        "tests_failed": kw.get("tests_failed", 0),
        "test_output": kw.get("test_output", ""),
    }


def _result(pair: Pair, **kw: Any) -> dict[str, Any]:
    f1 = kw.get("feature1") or _feature_result(pair.feature_a)
    f2 = kw.get("feature2") or _feature_result(pair.feature_b)
    return {
        "repo": pair.repo,
        "task_id": pair.task_id,
        "features": [pair.feature_a, pair.feature_b],
        "setting": "coop",
        "apply_status": kw.get("apply_status", {"agent1": "unknown", "agent2": "unknown"}),
        "merge": kw.get("merge", {"status": "error", "strategy": None, "diff": ""}),
        "feature1": f1,
        "feature2": f2,
        "both_passed": bool(f1["passed"] and f2["passed"]),
        "error": kw.get("error"),
        **({"test_env": kw["test_env"]} if kw.get("test_env") else {}),
        "evaluated_at": datetime.now(UTC).isoformat(),
    }


def write_eval(path: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Write `eval.json` atomically (:func:`coop_dag.util.files.atomic_write_json`)."""
    return atomic_write_json(path, result)


# --------------------------------------------------------------------------- evaluation

_TEST = r"""
set -u
cd "$REPO_DIR"
rm -f .git/index.lock
git checkout -q --force merged && git reset -q --hard merged && git clean -qfdx || exit 12
bash "$PATCH_DIR/runner.sh" "$TESTS_PATCH"
"""


@dataclass(frozen=True)
class _TestPlace:
    """Where the features' tests run: in the task's `image` (docker backend), in the task's own
    environment `task_env` (CooperBench's layout, run locally), or neither: the runner as it
    is, with the evaluation's python."""

    task_env: Any = None
    image: str | None = None
    image_settings: ImageTestSettings | None = None

    def describe(self) -> dict[str, Any] | None:
        """eval.json's `test_env` (None for a runner that needs no environment of its own)."""
        if self.image is not None and self.image_settings is not None:
            return self.image_settings.describe(self.image)
        if self.task_env is not None:
            return {"backend": "local", **self.task_env.describe()}
        return None


def _missing_input(pair: Pair) -> str | None:
    """Why the pair cannot be evaluated at all (a tests patch or the runner missing), if so."""
    for feat in pair.features:
        if not feat.tests_patch.is_file():
            return f"Tests patch not found: {feat.tests_patch}"
    if not pair.task.runner.is_file():
        return f"runner.sh not found: {pair.task.runner}"
    return None


def _test_place(
    pair: Pair,
    backend: str,
    image_settings: ImageTestSettings | None,
    mirror_dir: str | os.PathLike | None,
    task_env_root: str | os.PathLike | None,
    log: Any,
) -> _TestPlace:
    """Where the tests run (see :class:`_TestPlace`); `NoOutcome` when there is no image
    name or no environment for a task whose runner needs CooperBench's layout."""
    task = pair.task
    if not needs_docker_layout(task.runner):
        return _TestPlace()
    if backend == "docker":
        settings = image_settings or ImageTestSettings.from_env()
        try:
            image = task_image(task, settings.image_template)
        except TaskError as exc:
            raise NoOutcome(error=f"tests not run: no task image: {exc}") from None
        return _TestPlace(image=image, image_settings=settings)
    try:
        task_env = ensure_task_env(
            task,
            Path(mirror_dir) if mirror_dir else None,
            root=Path(task_env_root) if task_env_root else None,
            log=log,
        )
    except (TaskEnvError, TaskError) as exc:
        raise NoOutcome(error=f"tests not run: no test environment: {exc}") from None
    return _TestPlace(task_env=task_env)


def _stage_inputs(patches: Path, pair: Pair, patch_a: str | None, patch_b: str | None) -> None:
    """The agents' patches (test files dropped), both features' tests and the task's runner,
    where the setup and test scripts read them."""
    feat_a, feat_b = pair.features
    p1 = filter_test_files(normalise_patch(patch_a))
    p2 = filter_test_files(normalise_patch(patch_b))
    (patches / "patch1.patch").write_text(p1, encoding="utf-8")
    (patches / "patch2.patch").write_text(p2, encoding="utf-8")
    shutil.copyfile(feat_a.tests_patch, patches / "tests1.patch")
    shutil.copyfile(feat_b.tests_patch, patches / "tests2.patch")
    shutil.copyfile(pair.task.runner, patches / "runner.sh")


def _sandbox(
    edir: Path,
    work_root: Path,
    task_env: Any,
    base_sha: str,
    *,
    python: str,
    pytest_plugin_autoload: bool,
    env: dict[str, str] | None,
    allow_unsandboxed: bool,
    max_output_bytes: int | None,
) -> BwrapRunner:
    """The bubblewrap runner of the setup, merge and local test scripts. Only the checkout and
    a scratch HOME are writable: code under test cannot rewrite the other feature's
    tests.patch or the runner between the two runs."""
    repo, patches, home = edir / "repo", edir / "patches", edir / "home"
    ro_binds: list[Any] = [patches]
    writable: list[Any] = []
    extra_path: list[Path] = []
    layout_env: dict[str, str] = {}
    if task_env is not None:  # CooperBench's image layout, on the merged checkout
        shim = write_pip_shim(edir / "shim")
        ro_binds += [(patches, DOCKER_PATCHES), shim]
        writable.append((repo, DOCKER_REPO))
        extra_path.append(shim)
        layout_env = {
            "COOP_DAG_TASK_ENV": str(task_env.path),
            "PYTHONPATH": f"{DOCKER_REPO}/src:{DOCKER_REPO}",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    return BwrapRunner(
        repo,
        home,
        ro_binds=ro_binds,
        writable=writable,
        extra_path=extra_path,
        hidden=[*DEFAULT_HIDDEN_PATHS, *hideable(work_root.resolve())],
        env={
            **EVAL_GIT_ENV,
            "REPO_DIR": str(repo),
            "PATCH_DIR": DOCKER_PATCHES if task_env is not None else str(patches),
            "PYTHON": python,
            "BASE_SHA": base_sha,
            **({} if pytest_plugin_autoload else {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}),
            **layout_env,
            **(env or {}),
        },
        python=python,
        allow_unsandboxed=allow_unsandboxed,
        max_output_bytes=max_output_bytes,
    )


def _tests_in_image(
    place: _TestPlace,
    staged: Path,
    tests_patch: Path,
    merged_diff: str,
    timeout: float,
    max_output_bytes: int | None,
) -> CommandResult:
    """CooperBench's call, in the task's image: ``runner.sh tests.patch merged.patch``."""
    assert place.image is not None and place.image_settings is not None
    staged.mkdir(parents=True)
    shutil.copyfile(tests_patch, staged / "tests.patch")
    patch_args = ["tests.patch"]
    if merged_diff.strip():  # nothing merged: the runner gets the tests alone
        (staged / "merged.patch").write_text(merged_diff, encoding="utf-8")
        patch_args.append("merged.patch")
    for path in (staged, *staged.iterdir()):  # whichever user the image runs as
        path.chmod(0o755 if path.is_dir() else 0o644)
    return run_in_image(
        place.image,
        staged,
        patch_args,
        timeout,
        place.image_settings,
        max_output_bytes=max_output_bytes,
    )


def _feature_outcome(feature_id: int, run: CommandResult) -> tuple[dict[str, Any], str | None]:
    """A feature's eval.json entry from its test run, and why its tests did not run (no pytest
    summary and no timeout), if so."""
    counts = parse_pytest_summary(run.output)
    not_run = None
    if not run.timed_out and not has_pytest_summary(run.output):
        tail = " | ".join(run.output.strip().splitlines()[-6:])
        not_run = (
            f"feature {feature_id}'s tests did not run (runner.sh exited "
            f"{run.returncode} with no pytest summary): {tail[-600:]}"
        )
    result = _feature_result(
        feature_id,
        passed=run.returncode == 0 and counts["passed"] > 0,
        exit_code=run.returncode,
        tests_passed=counts["passed"],
        tests_failed=counts["failed"],
        test_output=run.output,
    )
    return result, not_run


def _merge_and_test(
    pair: Pair,
    edir: Path,
    runner: BwrapRunner,
    place: _TestPlace,
    base_sha: str,
    *,
    timeout: float,
    union_fallback: bool,
    max_output_bytes: int | None,
) -> dict[str, Any]:
    """Steps 2-5 of the module docstring on a checked-out base: branches, merge, merged diff,
    each feature's tests. Returns the eval.json dict; `NoOutcome` where a step fails."""
    repo = edir / "repo"
    apply_status, identical = branch_setup(runner, repo, timeout)
    merge_status, strategy = merge_branches(
        runner, repo, timeout,
        union_fallback=union_fallback, apply_status=apply_status, identical_trees=identical,
    )  # fmt: skip
    diff = runner.run(
        f"git diff --binary {base_sha} merged",
        120.0,
        chdir=repo,
        merge_stderr=False,
        max_output_bytes=None,  # whole: in a task image it is the merged.patch applied
    )
    merged_diff = diff.stdout
    merged = {"status": merge_status, "strategy": strategy, "diff": merged_diff[:MERGE_DIFF_LIMIT]}
    so_far = {"apply_status": apply_status, "merge": merged, "test_env": place.describe()}
    if place.image is not None and diff.returncode != 0:
        why = f"cannot diff the merged tree: {diff.stderr.strip()[-600:]}"
        raise NoOutcome(**so_far, error=f"tests not run: {why}")

    feats, not_run = [], []
    for n, feat in ((1, pair.features[0]), (2, pair.features[1])):
        if place.image is not None:  # CooperBench: runner.sh tests.patch merged.patch, in the image
            staged = edir / "image" / f"feature{n}"
            try:
                run = _tests_in_image(
                    place, staged, feat.tests_patch, merged_diff, timeout, max_output_bytes
                )
            except ImageTestError as exc:
                where = f"feature {feat.feature_id} in {place.image}"
                raise NoOutcome(**so_far, error=f"tests not run: {where}: {exc}") from None
        else:
            proc = runner.run(f"TESTS_PATCH=tests{n}.patch\n{_TEST}", timeout, chdir=repo)
            run = _to_result(proc, timeout)  # on timeout the output says so
        outcome, why = _feature_outcome(feat.feature_id, run)
        feats.append(outcome)
        not_run += [why] if why else []
    error = f"tests not run: {'; '.join(not_run)}" if not_run else None
    return _result(pair, feature1=feats[0], feature2=feats[1], error=error, **so_far)


def evaluate_pair(
    pair: Pair,
    patch_a: str | None,
    patch_b: str | None,
    work_dir: str | os.PathLike,
    *,
    python: str = sys.executable,
    timeout: float = DEFAULT_TEST_TIMEOUT,
    mirror_dir: str | os.PathLike | None = None,
    union_fallback: bool = True,
    keep: bool = False,
    allow_unsandboxed: bool = False,
    max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES,
    pytest_plugin_autoload: bool = False,
    env: dict[str, str] | None = None,
    task_env_root: str | os.PathLike | None = None,
    log: Any = None,
    backend: str = "local",
    image_settings: ImageTestSettings | None = None,
) -> dict[str, Any]:
    """Merge two agents' patches and run both features' tests on the result.

    `patch_a` is the agent working on `pair.feature_a` (CooperBench's agent1/feature1),
    `patch_b` on `pair.feature_b`. Work happens in a fresh directory under `work_dir`
    (removed afterwards unless `keep`). Never raises for bad patches; a missing bwrap
    raises `SandboxError` unless `allow_unsandboxed`. Returns the eval.json dict.

    Bundled tasks need pytest only, so pytest's entry-point plugins from the interpreter's
    environment (≈1 s of start-up per run here) are not loaded unless
    `pytest_plugin_autoload`. `env` adds variables to the test environment.

    A task whose runner expects CooperBench's image gets its own environment (built once
    under `task_env_root`, default the cache root; see `coop_dag.dataset.task_env`), whose python
    runs its tests with entry-point plugins on (they are the task's own). With
    `backend="docker"` (the sandbox choice of the cluster profile) such a task's tests run
    in its Docker image instead, as CooperBench runs them (:func:`run_in_image`, settings
    from `image_settings`, default :meth:`ImageTestSettings.from_env`); the patches are still
    merged here. Tasks whose runner needs no image run locally under either backend.
    """
    if backend not in EVAL_BACKENDS:
        raise ValueError(f"evaluation backend {backend!r}: expected one of {EVAL_BACKENDS}")
    missing = _missing_input(pair)
    if missing:
        return _result(pair, error=missing)
    try:
        place = _test_place(pair, backend, image_settings, mirror_dir, task_env_root, log)
    except NoOutcome as stop:
        return _result(pair, **stop.fields)
    if place.task_env is not None:  # the task's own python, with its own pytest plugins
        python = str(place.task_env.python)
        pytest_plugin_autoload = True

    work_root = Path(work_dir)
    work_root.mkdir(parents=True, exist_ok=True)
    sweep_stale("eval-", work_root)  # evaluations a killed process left here
    edir = owned_tempdir(f"eval-{pair.repo}-{pair.task_id}-", work_root)
    try:
        (edir / "patches").mkdir()
        _prepare_home(edir / "home")
        try:
            base_sha = checkout_base(
                pair.task, edir / "repo", Path(mirror_dir) if mirror_dir else None
            )
        except TaskError as exc:
            return _result(pair, error=f"base checkout failed: {exc}")
        _stage_inputs(edir / "patches", pair, patch_a, patch_b)
        runner = _sandbox(
            edir, work_root, place.task_env, base_sha,
            python=python, pytest_plugin_autoload=pytest_plugin_autoload, env=env,
            allow_unsandboxed=allow_unsandboxed, max_output_bytes=max_output_bytes,
        )  # fmt: skip
        return _merge_and_test(
            pair, edir, runner, place, base_sha,
            timeout=timeout, union_fallback=union_fallback, max_output_bytes=max_output_bytes,
        )  # fmt: skip
    except NoOutcome as stop:
        return _result(pair, **stop.fields)
    except SandboxError:
        raise
    except Exception as exc:  # CooperBench records errors instead of crashing the batch
        return _result(pair, error=f"{type(exc).__name__}: {exc}")
    finally:
        if not keep:
            shutil.rmtree(edir, ignore_errors=True)
