"""CooperBench's merge of two agents' patches (steps 1-3 of `coop_dag.eval.evaluate`): test
files filtered out of each patch, each patch committed on its own branch from the base commit
(`agent1`, `agent2`), then `git merge` of the two (CooperBench's "naive" strategy) with the
union merge driver as the fallback on conflicts. The scripts run in the evaluation's sandbox."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from coop_dag.agent.sandbox.bwrap import BwrapRunner

# Fixed identity so eval commits never depend on the host's git config.
EVAL_GIT_ENV = {
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


# --------------------------------------------------------------------------- branches and merge

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


class NoOutcome(Exception):
    """A step that ends a pair's evaluation early; `fields` are the keywords of its eval.json
    (`coop_dag.eval.evaluate._result`: the `error` among them), so it says how far it got."""

    def __init__(self, **fields: Any) -> None:
        super().__init__(fields.get("error"))
        self.fields = fields


def branch_setup(runner: BwrapRunner, repo: Path, timeout: float) -> tuple[dict[str, str], bool]:
    """Each agent's patch committed on its own branch: (apply status per agent, whether the
    two branches hold the same tree)."""
    setup = runner.run(_SETUP, timeout, chdir=repo)
    if "SETUP_COMPLETE" not in setup.stdout:
        raise NoOutcome(error=f"branch setup failed: {setup.stdout[-4000:]}")

    def status(n: int) -> str:
        for word in ("APPLIED", "SKIPPED"):
            if f"PATCH{n}_{word}" in setup.stdout:
                return word.lower()
        return "failed"

    trees = re.search(r"^TREES (\w+) (\w+)$", setup.stdout, re.MULTILINE)
    identical = bool(trees and trees.group(1) == trees.group(2))
    return {"agent1": status(1), "agent2": status(2)}, identical


def merge_branches(
    runner: BwrapRunner,
    repo: Path,
    timeout: float,
    *,
    union_fallback: bool,
    apply_status: dict[str, str],
    identical_trees: bool,
) -> tuple[str, str]:
    """The two branches merged (naive, else the union fallback): (merge.status, strategy)."""
    merge = runner.run(_MERGE, timeout, chdir=repo)
    conflict = "MERGE_STATUS=conflicts" in merge.stdout
    if "MERGE_STATUS=" not in merge.stdout:
        raise NoOutcome(apply_status=apply_status, error=f"merge failed: {merge.stdout[-4000:]}")
    strategy = "naive"
    if conflict:
        if union_fallback and "UNION_STATUS=clean" in merge.stdout:
            strategy = "union"
        else:
            why = "union merge still has conflicts" if union_fallback else "no fallback"
            raise NoOutcome(
                apply_status=apply_status,
                merge={"status": "conflicts", "strategy": None, "diff": ""},
                error=f"Both naive and union merge strategies failed: {why}",
            )
    if "failed" in apply_status.values() or "skipped" in apply_status.values():
        return "missing_input", strategy
    if conflict:
        return "conflicts", strategy
    return ("identical" if identical_trees else "clean"), strategy
