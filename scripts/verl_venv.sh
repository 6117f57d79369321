#!/usr/bin/env bash
# verl's own environment for training on this machine's CPU: ${COOP_DAG_VERL_VENV:-.venv-verl}.
#
#   bash scripts/verl_venv.sh          # then: COOP_DAG_TRAINER=verl-cpu (see docs/cluster.md)
#
# verl cannot share the core venv (it downgrades antlr4 and breaks Dagster's selection
# parser), so it gets its own, installed from scripts/verl-requirements.txt (every version
# pinned; torch from the local CPU wheel in /opt/wheels). Idempotent: a stamp holds the hash
# of this script and the requirements; while they are unchanged a rerun does nothing. The
# project itself is not installed here: the launcher puts the checkout on PYTHONPATH
# (coop_dag.tito.dataset for data.custom_cls, coop_dag.training.verl_cpu_platform for the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${COOP_DAG_VERL_VENV:-.venv-verl}
PY=${PYTHON:-python3.11}
WHEELS=${COOP_DAG_WHEELS:-/opt/wheels}
REQS=scripts/verl-requirements.txt
export HF_HUB_OFFLINE=1

stamp="$VENV/.coop-dag-verl-installed"
want=$(cat scripts/verl_venv.sh "$REQS" | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "verl_venv: installing verl's environment into $VENV" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
rm -f "$stamp"
# uv from the core venv when bootstrap.sh made one; else its own copy in this venv.
UV=${COOP_DAG_VENV:-.venv}/bin/uv
if [ ! -x "$UV" ]; then
  [ -x "$VENV/bin/uv" ] || "$VENV/bin/pip" install -q uv
  UV="$VENV/bin/uv"
fi
find_links=()
[ -d "$WHEELS" ] && find_links=(--find-links "$WHEELS")
# pip sync: the venv holds the requirements and nothing else (a stale package goes).
"$UV" pip sync -q --python "$VENV/bin/python" "${find_links[@]}" "$REQS"

# Checks: a CPU torch (a CUDA build is GBs and useless here), and verl resolving our platform.
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch
import verl

bad = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia"))
assert torch.__version__ == "2.13.0+cpu" and torch.version.cuda is None, f"torch {torch.__version__} is not the CPU build"
assert not bad, f"CUDA packages came in: {bad}"
assert verl.__version__ == "0.9.1", f"verl {verl.__version__}, expected 0.9.1"
PY
PYTHONPATH="$PWD" VERL_USE_EXTERNAL_MODULES=coop_dag.training.verl_cpu_platform VERL_PLATFORM=cpu \
  "$VENV/bin/python" -c "
from verl.plugin.platform import get_platform
from verl.utils.distributed import initialize_global_process_group as init
assert get_platform().device_name == 'cpu', get_platform()
assert init.__module__ == 'coop_dag.training.verl_cpu_platform', init.__module__
import coop_dag.tito.dataset, coop_dag.training.verl_pipes, dagster_pipes, fastapi, uvicorn, peft
"
echo "$want" > "$stamp"
echo "verl_venv: ready: $VENV/bin/python (verl 0.9.1, torch 2.13.0+cpu)" >&2
