"""coop-dag domain: tasks, sandbox, messaging, agent loop, teachers, TITO, training, serving,
metrics and lineage. Never imports Dagster; `assets/` and `resources/` wrap this package."""

import os
from pathlib import Path

# litellm downloads its model price map when first imported unless told to use its bundled
# copy. Every entry point (code location, CLI, server, scripts) imports this package before
# anything imports litellm (only coop_dag.agent.models does), so the offline default is set once,
# here; an explicit setting in the environment wins.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_DATASET = PACKAGE_DIR / "bundled" / "dataset"
REPO_ROOT = PACKAGE_DIR.parent
CONFIG_DIR = REPO_ROOT / "configs"
