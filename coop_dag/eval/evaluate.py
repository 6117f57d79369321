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
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coop_dag.agent.sandbox.base import DEFAULT_MAX_OUTPUT_BYTES, CommandResult, SandboxError
from coop_dag.agent.sandbox.bwrap import DEFAULT_HIDDEN_PATHS, BwrapRunner, _prepare_home, hideable
from coop_dag.agent.sandbox.docker import (
    docker_cp_argv,
    docker_create_argv,
    docker_rm_argv,
    docker_start_argv,
    task_image,
)
from coop_dag.agent.sandbox.process import _run_process, _to_result
from coop_dag.dataset.task_env import (
    DOCKER_PATCHES,
    DOCKER_REPO,
    TaskEnvError,
    ensure_task_env,
    needs_docker_layout,
    write_pip_shim,
)
from coop_dag.dataset.tasks import Pair, TaskError, checkout_base
from coop_dag.util.files import atomic_write_json
from coop_dag.util.scratch import owned_tempdir, sweep_stale

log = logging.getLogger(__name__)

DEFAULT_TEST_TIMEOUT = 600.0
MERGE_DIFF_LIMIT = 5000  # CooperBench truncates the stored merged diff to this many chars
EVAL_BACKENDS = ("local", "docker")  # the sandbox choice (COOP_DAG_SANDBOX) decides

# Fixed identity so eval commits never depend on the host's git config.
_EVAL_GIT_ENV = {
    "GIT_AUTHOR_NAME": "coop-dag eval",
    "GIT_AUTHOR_EMAIL": "eval@coop-dag.localhost",
    "GIT_COMMITTER_NAME": "coop-dag eval",
    "GIT_COMMITTER_EMAIL": "eval@coop-dag.localhost",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
}


# --------------------------------------------------------------------------- patches


def is_test_path_header(line: str) -> bool:
    """CooperBench's rule for which `diff --git` sections are test files."""
    return any(s in line for s in ("/test_", "/tests/", "_test.py", "/test/", "tests.py"))


def filter_test_files(patch: str) -> str:
    """Drop every file section of `patch` that touches a test file (CooperBench does this
    before merging: the evaluation's own tests.patch must apply on top)."""
    if not patch:
        return patch
    kept: list[str] = []
    skipping = False
    for line in patch.split("\n"):
        if line.startswith("diff --git"):
            skipping = is_test_path_header(line)
        if not skipping:
            kept.append(line)
    out = "\n".join(kept)
    if out.strip() == "":
        return ""
    return out if out.endswith("\n") else out + "\n"


def normalise_patch(patch: str | None) -> str:
    """Empty or whitespace-only → ""; otherwise ensure the trailing newline git needs."""
    if not patch or not patch.strip():
        return ""
    return patch if patch.endswith("\n") else patch + "\n"


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


# --------------------------------------------------------------------------- task images

IMAGE_RUNNER = "/usr/local/bin/runner.sh"  # where CooperBench's images keep the task's runner
IMAGE_PATCHES = "/patches"  # where the runner reads its patch arguments

# With no network, `pip` (and `pip3`) in the runner -- CooperBench's `pip install -e ".[dev]"`,
# which the image's Dockerfile already ran -- is a bash function that says why it did nothing;
# exported, so the runner's own bash sees it. The runner itself runs unchanged.
_OFFLINE_RUNNER = (
    "pip() { echo \"coop-dag: 'pip $*' skipped: no network in the evaluation container "
    "(COOP_DAG_EVAL_NETWORK=none); the image's installed environment is used\"; }; "
    'pip3() { pip "$@"; }; export -f pip pip3; '
    f'exec bash {IMAGE_RUNNER} "$@"'
)


def _env(env: Mapping[str, str], key: str, default: str) -> str:
    value = (env.get(key) or "").strip()
    return value or default


@dataclass(frozen=True)
class ImageTestSettings:
    """How a task's tests run in its Docker image (the docker evaluation backend).

    One container per feature, created from the task's image (:func:`task_image`), the
    feature's ``tests.patch`` and the merged ``merged.patch`` copied into ``/patches``, then
    ``bash /usr/local/bin/runner.sh tests.patch merged.patch`` -- CooperBench's call. The
    container is bounded in memory and CPUs, removed afterwards, and killed by name when the
    tests outlive their timeout. Without a network (the default), `pip` in the runner does
    nothing and says so (the image has the task's environment installed); with one
    (``COOP_DAG_EVAL_NETWORK=bridge``: CooperBench's setting), the runner installs as it does
    in CooperBench.
    """

    network: str = "none"  # COOP_DAG_EVAL_NETWORK
    memory: str = "4g"  # COOP_DAG_EVAL_MEMORY (docker --memory)
    cpus: str = "2"  # COOP_DAG_EVAL_CPUS (docker --cpus)
    image_template: str | None = None  # COOP_DAG_TASK_IMAGE; None: CooperBench's names
    pull_timeout: float = 600.0  # `docker create` pulls a missing image
    executable: str = "docker"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ImageTestSettings:
        env = os.environ if env is None else env
        return cls(
            network=_env(env, "COOP_DAG_EVAL_NETWORK", cls.network),
            memory=_env(env, "COOP_DAG_EVAL_MEMORY", cls.memory),
            cpus=_env(env, "COOP_DAG_EVAL_CPUS", cls.cpus),
            image_template=_env(env, "COOP_DAG_TASK_IMAGE", "") or None,
        )

    @property
    def offline(self) -> bool:
        return self.network == "none"

    def command(self, patch_args: Sequence[str]) -> list[str]:
        """Arguments of the container's `/bin/bash` (its entrypoint)."""
        if self.offline:
            return ["-c", _OFFLINE_RUNNER, "runner.sh", *patch_args]
        return [IMAGE_RUNNER, *patch_args]

    def create_argv(self, image: str, name: str, patch_args: Sequence[str]) -> list[str]:
        return docker_create_argv(
            image,
            name,
            self.command(patch_args),
            network=self.network,
            run_args=("--rm", "--memory", self.memory, "--cpus", self.cpus),
            executable=self.executable,
        )

    def describe(self, image: str) -> dict[str, Any]:
        """`eval.json`'s `test_env` for tests run in `image`."""
        out = {"backend": "docker", "image": image, "runner": IMAGE_RUNNER}
        out.update({k: v for k, v in asdict(self).items() if k in ("network", "memory", "cpus")})
        if self.offline:
            out["pip"] = "skipped (no network): the image's installed environment"
        return out


class ImageTestError(RuntimeError):
    """Docker could not run the tests (no image, no daemon, a failed copy): no outcome."""


def run_in_image(
    image: str,
    patches: Path,
    patch_args: Sequence[str],
    timeout: float,
    settings: ImageTestSettings,
    *,
    max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES,
) -> CommandResult:
    """Run the task's runner once in a fresh container of `image`, with `patches`' files at
    ``/patches``; the runner's output (stdout and stderr) and exit code. Raises
    :class:`ImageTestError` when docker fails before the runner starts. The container goes
    whatever happens (``docker rm -f`` by name: also what kills it after `timeout`)."""
    name = f"coop-dag-eval-{uuid.uuid4().hex[:10]}"
    host_env = dict(os.environ)  # the docker CLI needs DOCKER_HOST etc.

    def docker(argv: list[str], what: str, limit: float) -> None:
        p = _run_process(argv, env=host_env, cwd=None, timeout=limit, merge_stderr=False)
        if p.returncode != 0:
            why = "timed out" if p.timed_out else f"exit {p.returncode}"
            detail = (p.stderr.strip() or p.stdout.strip())[-1500:]
            raise ImageTestError(f"{what} failed ({why}): {detail}")

    try:
        # files go in by `docker cp`, not a bind mount: a daemon reached through a mounted
        # socket (the compose run containers) sees its host's paths, not this process's
        docker(settings.create_argv(image, name, patch_args), f"docker create {image}",
               settings.pull_timeout)  # fmt: skip
        docker(docker_cp_argv(f"{patches}/.", name, IMAGE_PATCHES, settings.executable),
               f"copying the patches into {name}", 120.0)  # fmt: skip
        run = _run_process(
            docker_start_argv(name, settings.executable),
            env=host_env,
            cwd=None,
            timeout=timeout,
            merge_stderr=True,
            max_output_bytes=max_output_bytes,
        )
        return _to_result(run, timeout)
    except SandboxError as exc:  # no docker CLI at all
        raise ImageTestError(str(exc)) from None
    finally:
        try:
            _run_process(
                docker_rm_argv(name, settings.executable), env=host_env, cwd=None, timeout=60.0
            )
        except SandboxError as exc:
            log.warning("could not remove container %s: %s", name, exc)


# --------------------------------------------------------------------------- evaluation

_SETUP = r"""
set -u
cd "$REPO_DIR"
git checkout -q -B base "$BASE_SHA"
apply_patch() {
    local n=$1 file="$PATCH_DIR/patch$1.patch"
    if [ ! -s "$file" ]; then echo "PATCH${n}_SKIPPED"; return; fi
    if git apply --whitespace=nowarn "$file" 2>&1; then echo "PATCH${n}_APPLIED"
    elif git apply --3way --whitespace=nowarn "$file" 2>&1; then echo "PATCH${n}_APPLIED"
    else git reset -q --hard "$BASE_SHA"; git clean -qfdx; echo "PATCH${n}_FAILED"; fi
}
for n in 1 2; do
    git checkout -q -B "agent$n" "$BASE_SHA" || exit 10
    apply_patch "$n"
    git add -A && git commit -q --no-verify --allow-empty -m "agent $n" || exit 11
done
echo "TREES $(git rev-parse 'agent1^{tree}') $(git rev-parse 'agent2^{tree}')"
echo SETUP_COMPLETE
"""

_MERGE = r"""
set -u
cd "$REPO_DIR"
git checkout -q -B merged agent2 || exit 10
if git merge --no-ff --no-verify -m "merge agent1 into agent2" agent1 2>&1; then
    echo MERGE_STATUS=clean
    exit 0
fi
echo MERGE_STATUS=conflicts
git merge --abort 2>/dev/null || git reset -q --hard agent2
git checkout -q -B merged agent2
# CooperBench's fallback: union merge driver, so conflicting hunks keep both sides.
attrs="$(git rev-parse --git-path info/attributes)"
mkdir -p "$(dirname "$attrs")"
echo "* merge=union" > "$attrs"
if git merge --no-ff --no-verify -m "union merge agent1 into agent2" agent1 2>&1; then
    rm -f "$attrs"; echo UNION_STATUS=clean; exit 0
fi
rm -f "$attrs"
git merge --abort 2>/dev/null || git reset -q --hard agent2
echo UNION_STATUS=conflicts
"""

_TEST = r"""
set -u
cd "$REPO_DIR"
rm -f .git/index.lock
git checkout -q --force merged && git reset -q --hard merged && git clean -qfdx || exit 12
bash "$PATCH_DIR/runner.sh" "$TESTS_PATCH"
"""


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
    task = pair.task
    feat_a, feat_b = pair.features
    for feat in (feat_a, feat_b):
        if not feat.tests_patch.is_file():
            return _result(pair, error=f"Tests patch not found: {feat.tests_patch}")
    if not task.runner.is_file():
        return _result(pair, error=f"runner.sh not found: {task.runner}")
    docker = needs_docker_layout(task.runner)
    task_env = None
    image: str | None = None
    image_env: dict[str, Any] | None = None
    if docker and backend == "docker":
        image_settings = image_settings or ImageTestSettings.from_env()
        try:
            image = task_image(task, image_settings.image_template)
        except TaskError as exc:
            return _result(pair, error=f"tests not run: no task image: {exc}")
        image_env = image_settings.describe(image)
    elif docker:
        try:
            task_env = ensure_task_env(
                task,
                Path(mirror_dir) if mirror_dir else None,
                root=Path(task_env_root) if task_env_root else None,
                log=log,
            )
        except (TaskEnvError, TaskError) as exc:
            return _result(pair, error=f"tests not run: no test environment: {exc}")
        python = str(task_env.python)
        pytest_plugin_autoload = True

    work_root = Path(work_dir)
    work_root.mkdir(parents=True, exist_ok=True)
    sweep_stale("eval-", work_root)  # evaluations a killed process left here
    edir = owned_tempdir(f"eval-{pair.repo}-{pair.task_id}-", work_root)
    try:
        repo, patches, home = edir / "repo", edir / "patches", edir / "home"
        patches.mkdir()
        _prepare_home(home)
        try:
            base_sha = checkout_base(task, repo, Path(mirror_dir) if mirror_dir else None)
        except TaskError as exc:
            return _result(pair, error=f"base checkout failed: {exc}")

        p1 = filter_test_files(normalise_patch(patch_a))
        p2 = filter_test_files(normalise_patch(patch_b))
        (patches / "patch1.patch").write_text(p1, encoding="utf-8")
        (patches / "patch2.patch").write_text(p2, encoding="utf-8")
        shutil.copyfile(feat_a.tests_patch, patches / "tests1.patch")
        shutil.copyfile(feat_b.tests_patch, patches / "tests2.patch")
        shutil.copyfile(task.runner, patches / "runner.sh")

        # Only the checkout and a scratch HOME are writable: code under test cannot rewrite
        # the other feature's tests.patch or the runner between the two runs.
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
        runner = BwrapRunner(
            repo,
            home,
            ro_binds=ro_binds,
            writable=writable,
            extra_path=extra_path,
            hidden=[*DEFAULT_HIDDEN_PATHS, *hideable(work_root.resolve())],
            env={
                **_EVAL_GIT_ENV,
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

        setup = runner.run(_SETUP, timeout, chdir=repo)
        if "SETUP_COMPLETE" not in setup.stdout:
            return _result(pair, error=f"branch setup failed: {setup.stdout[-4000:]}")

        def status(n: int) -> str:
            for word in ("APPLIED", "SKIPPED"):
                if f"PATCH{n}_{word}" in setup.stdout:
                    return word.lower()
            return "failed"

        apply_status = {"agent1": status(1), "agent2": status(2)}
        trees = re.search(r"^TREES (\w+) (\w+)$", setup.stdout, re.MULTILINE)

        merge = runner.run(_MERGE, timeout, chdir=repo)
        conflict = "MERGE_STATUS=conflicts" in merge.stdout
        if "MERGE_STATUS=" not in merge.stdout:
            return _result(
                pair, apply_status=apply_status, error=f"merge failed: {merge.stdout[-4000:]}"
            )
        strategy = "naive"
        if conflict:
            if union_fallback and "UNION_STATUS=clean" in merge.stdout:
                strategy = "union"
            else:
                why = "union merge still has conflicts" if union_fallback else "no fallback"
                return _result(
                    pair,
                    apply_status=apply_status,
                    merge={"status": "conflicts", "strategy": None, "diff": ""},
                    error=f"Both naive and union merge strategies failed: {why}",
                )

        if "failed" in apply_status.values() or "skipped" in apply_status.values():
            merge_status = "missing_input"
        elif conflict:
            merge_status = "conflicts"
        elif trees and trees.group(1) == trees.group(2):
            merge_status = "identical"
        else:
            merge_status = "clean"

        diff = runner.run(
            f"git diff --binary {base_sha} merged",
            120.0,
            chdir=repo,
            merge_stderr=False,
            max_output_bytes=None,  # whole: in a task image it is the merged.patch applied
        )
        merged_diff = diff.stdout
        merged = {
            "status": merge_status,
            "strategy": strategy,
            "diff": merged_diff[:MERGE_DIFF_LIMIT],
        }
        test_env = image_env or (
            {"backend": "local", **task_env.describe()} if task_env is not None else None
        )
        if image is not None and diff.returncode != 0:
            return _result(
                pair,
                apply_status=apply_status,
                merge=merged,
                error=f"tests not run: cannot diff the merged tree: {diff.stderr.strip()[-600:]}",
                test_env=test_env,
            )

        feats = []
        not_run: list[str] = []
        for n, feat in ((1, feat_a), (2, feat_b)):
            if image is not None:  # CooperBench: runner.sh tests.patch merged.patch, in the image
                staged = edir / "image" / f"feature{n}"
                staged.mkdir(parents=True)
                shutil.copyfile(feat.tests_patch, staged / "tests.patch")
                patch_args = ["tests.patch"]
                if merged_diff.strip():  # nothing merged: the runner gets the tests alone
                    (staged / "merged.patch").write_text(merged_diff, encoding="utf-8")
                    patch_args.append("merged.patch")
                for path in (staged, *staged.iterdir()):  # whichever user the image runs as
                    path.chmod(0o755 if path.is_dir() else 0o644)
                try:
                    run = run_in_image(
                        image,
                        staged,
                        patch_args,
                        timeout,
                        image_settings,
                        max_output_bytes=max_output_bytes,
                    )
                except ImageTestError as exc:
                    return _result(
                        pair,
                        apply_status=apply_status,
                        merge=merged,
                        error=f"tests not run: feature {feat.feature_id} in {image}: {exc}",
                        test_env=test_env,
                    )
            else:
                proc = runner.run(f"TESTS_PATCH=tests{n}.patch\n{_TEST}", timeout, chdir=repo)
                run = _to_result(proc, timeout)  # on timeout the output says so
            counts = parse_pytest_summary(run.output)
            if not run.timed_out and not has_pytest_summary(run.output):
                tail = " | ".join(run.output.strip().splitlines()[-6:])
                not_run.append(
                    f"feature {feat.feature_id}'s tests did not run (runner.sh exited "
                    f"{run.returncode} with no pytest summary): {tail[-600:]}"
                )
            feats.append(
                _feature_result(
                    feat.feature_id,
                    passed=run.returncode == 0 and counts["passed"] > 0,
                    exit_code=run.returncode,
                    tests_passed=counts["passed"],
                    tests_failed=counts["failed"],
                    test_output=run.output,
                )
            )

        return _result(
            pair,
            apply_status=apply_status,
            merge=merged,
            feature1=feats[0],
            feature2=feats[1],
            error=f"tests not run: {'; '.join(not_run)}" if not_run else None,
            test_env=test_env,
        )
    except SandboxError:
        raise
    except Exception as exc:  # CooperBench records errors instead of crashing the batch
        return _result(pair, error=f"{type(exc).__name__}: {exc}")
    finally:
        if not keep:
            shutil.rmtree(edir, ignore_errors=True)
