#!/usr/bin/env bash
# CooperBench-style test runner for a bundled task, offline, on a local checkout.
#   runner.sh <tests_patch> [feature_patch]
# Environment (all optional):
#   REPO_DIR   checkout to test (default: current directory); must be a git work tree
#   PATCH_DIR  where relative patch paths are resolved (default: current directory)
#   PYTHON     interpreter with pytest installed (default: python3)
# Prints pytest's summary line ("N passed[, M failed]") and exits with pytest's code.
# The checkout is reset to HEAD afterwards, as CooperBench's runner does.
set -uo pipefail

TEST_PATCH="${1:-}"
FEATURE_PATCH="${2:-}"
REPO_DIR="${REPO_DIR:-$PWD}"
PATCH_DIR="${PATCH_DIR:-$PWD}"
PYTHON="${PYTHON:-python3}"

if [[ -z "$TEST_PATCH" ]]; then
  echo "usage: runner.sh <tests_patch> [feature_patch]" >&2
  exit 2
fi
resolve() { case "$1" in /*) echo "$1" ;; *) echo "$PATCH_DIR/$1" ;; esac; }

cd "$REPO_DIR" || { echo "error: REPO_DIR not found: $REPO_DIR" >&2; exit 2; }
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { echo "error: $REPO_DIR is not a git work tree" >&2; exit 2; }
cleanup() { git reset -q --hard HEAD >/dev/null 2>&1; git clean -qfdx >/dev/null 2>&1; }
trap cleanup EXIT

for patch in "$TEST_PATCH" $FEATURE_PATCH; do
  file="$(resolve "$patch")"
  [[ -f "$file" ]] || { echo "error: patch not found: $file" >&2; exit 2; }
  # An empty patch (a feature with nothing to apply) is a no-op, not an error.
  [[ -s "$file" ]] || continue
  git apply --whitespace=nowarn "$file" || { echo "error: failed to apply patch: $file" >&2; exit 3; }
done

export PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$REPO_DIR/src:$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
timeout 300 "$PYTHON" -m pytest -q -p no:cacheprovider --tb=short tests
