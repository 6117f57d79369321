"""The coop-dag code location: `dagster dev -w workspace.yaml` loads `defs`."""

import dagster as dg

from assets import tasks, teacher, tito
from resources import DatasetResource, LineageResource, RolloutResource

_modules = [tasks, teacher, tito]

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(_modules),
    asset_checks=dg.load_asset_checks_from_modules(_modules),
    resources={
        "dataset": DatasetResource(),
        "rollout": RolloutResource(),
        "lineage": LineageResource(),
        # Outputs persist under $DAGSTER_HOME/storage, so the UI, the demo and later runs
        # all read the same materialisations.
        "io_manager": dg.FilesystemIOManager(),
    },
)
