"""The new-adapter sensor fires once per new adapter (by content hash), each in its own
dynamic partition named by its content name (never the variant's served_adapter), and skips
malformed drops; evaluated with Dagster's sensor testing utilities."""

import json

import dagster as dg

from assets.partitions import DROPPED_ADAPTERS
from assets.sensors import new_adapter_sensor
from coop_dag.training.adapters import adapter_name, adapter_sha12, write_lineage
from tests.training.test_adapters import make_adapter


def _tick(instance, cursor=None):
    """One evaluation: its run requests; the partitions it adds are added to `instance`, as
    the daemon does."""
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
    result = new_adapter_sensor(ctx)
    if not isinstance(result, dg.SensorResult):
        return [], ctx.cursor
    for req in result.dynamic_partitions_requests or []:
        assert req.partitions_def_name == DROPPED_ADAPTERS
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return list(result.run_requests or []), ctx.cursor


def test_fires_once_per_adapter_and_skips_malformed(tmp_path, monkeypatch):
    monkeypatch.setenv("COOP_DAG_ADAPTERS_DIR", str(tmp_path))
    good = make_adapter(tmp_path / "templated" / "verl-run-1", seed=1)
    write_lineage(good, {"variant": "templated", "trainer": "verl"})
    broken = tmp_path / "templated" / "half-copied"
    broken.mkdir(parents=True)
    (broken / "adapter_config.json").write_text("{}")  # no weights: a drop still in progress
    unknown = make_adapter(tmp_path / "x" / "other", seed=2)
    write_lineage(unknown, {"variant": "no-such-variant"})
    no_lineage = make_adapter(tmp_path / "y" / "bare", seed=3)

    with dg.instance_for_test() as instance:
        requests, cursor = _tick(instance)
        assert len(requests) == 1
        req = requests[0]
        # its own partition, named by its weights; the variant's partition is left alone
        assert req.partition_key == adapter_name(good) == f"student-{adapter_sha12(good)}"
        assert req.tags["coop_dag/variant"] == "templated"
        assert req.run_key == f"adapter-{adapter_sha12(good)}"
        assert "served_adapter" not in req.run_config["ops"]
        config = req.run_config["ops"]["dropped_adapter"]["config"]
        assert config["adapter_dir"] == str(good)
        assert adapter_sha12(good) in json.loads(cursor)
        assert instance.get_dynamic_partitions(DROPPED_ADAPTERS) == [adapter_name(good)]
        assert no_lineage.is_dir()

        again, cursor = _tick(instance, cursor)
        assert again == []  # the same adapter never fires twice

        second = make_adapter(tmp_path / "templated" / "verl-run-2", seed=4)
        write_lineage(second, {"variant": "templated"})
        new, cursor = _tick(instance, cursor)
        assert [r.run_key for r in new] == [f"adapter-{adapter_sha12(second)}"]
        assert [r.partition_key for r in new] == [adapter_name(second)]
        assert sorted(instance.get_dynamic_partitions(DROPPED_ADAPTERS)) == sorted(
            [adapter_name(good), adapter_name(second)]
        )  # two adapters of one variant: two partitions, neither overwrites the other

        # a copy of an evaluated adapter (same weights) is the same adapter
        copy = tmp_path / "templated" / "copy-of-1"
        copy.mkdir()
        for f in good.iterdir():
            (copy / f.name).write_bytes(f.read_bytes())
        dup, _ = _tick(instance, cursor)
        assert dup == []


def test_empty_or_missing_dir_skips(tmp_path, monkeypatch):
    monkeypatch.setenv("COOP_DAG_ADAPTERS_DIR", str(tmp_path / "none"))
    with dg.instance_for_test() as instance:
        result = new_adapter_sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(result, dg.SkipReason) and "no new adapter" in result.skip_message


def test_run_requests_fit_the_evaluation_job():
    from definitions import defs

    job = defs.resolve_job_def("evaluate_adapter")
    nodes = {n.name for n in job.graph.nodes}
    assert nodes == {"task_pool", "dropped_adapter", "dropped_adapter_metrics"}  # no variant chain
    assert job.partitions_def.name == DROPPED_ADAPTERS
    config = {"ops": {"dropped_adapter": {"config": {"adapter_dir": "/drop/student"}}}}
    assert dg.validate_run_config(job, config)


def test_checks_are_partitioned_like_their_assets():
    from definitions import defs

    graph = defs.resolve_asset_graph()
    checked = 0
    for key in graph.asset_check_keys:
        asset = graph.get(key.asset_key)
        check = defs.resolve_assets_def(key.asset_key).get_spec_for_check_key(key)
        assert check.partitions_def == asset.partitions_def, key
        checked += asset.partitions_def is not None
    assert checked >= 12  # every check of a variant or adapter partition
