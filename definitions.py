"""The coop-dag code location: `dagster dev -w workspace.yaml` loads `defs`.

Assets are grouped by stage (tasks, teacher, tito, training, serving, evaluation); checks live
inside the assets they check; resources select engines per environment (COOP_DAG_PROFILE).
"""

import dagster as dg

from assets import (
    controls,
    dropped,
    evaluation,
    sensors,
    serving,
    tasks,
    teacher,
    tito,
    training,
)
from resources import DatasetResource, LineageResource, RolloutResource
from resources.serving import ServingResource
from resources.training import TrainingResource

_modules = [tasks, teacher, tito, training, serving, evaluation, controls, dropped]

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(_modules),
    asset_checks=dg.load_asset_checks_from_modules(_modules),
    jobs=[sensors.evaluate_adapter_job],  # dropped_adapter + dropped_adapter_metrics
    sensors=[sensors.new_adapter_sensor],
    resources={
        "dataset": DatasetResource(),
        "rollout": RolloutResource(),
        "lineage": LineageResource(),
        "training": TrainingResource(),
        "serving": ServingResource(),
        # Outputs persist under $DAGSTER_HOME/storage, so the UI, the demo and later runs
        # all read the same materialisations.
        "io_manager": dg.FilesystemIOManager(),
    },
)
