"""`dagster dev` serves the asset graph: started with setsid (it ignores SIGTERM when
backgrounded from a script), queried over HTTP, stopped by its process group. The start and
stop live in tests/dagster_dev_helpers.py, behind the session fixture `dagster_dev`."""

from dagster_dev_helpers import asset_keys


def test_dagster_dev_serves_the_asset_graph(dagster_dev):
    assert "task_pool" in asset_keys(dagster_dev)
