"""coop-dag domain: tasks, sandbox, messaging, agent loop, teachers, TITO, training, serving,
metrics and lineage. Never imports Dagster; `assets/` and `resources/` wrap this package."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_DATASET = PACKAGE_DIR / "bundled" / "dataset"
REPO_ROOT = PACKAGE_DIR.parent
CONFIG_DIR = REPO_ROOT / "configs"
