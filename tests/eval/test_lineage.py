import threading

import pytest

from coop_dag.cli import main
from coop_dag.eval.lineage import LineageError, LineageStore, content_version

SUMMARY = {
    "n_pairs": 12,
    "n_agents": 24,
    "plan_first_rate": 0.75,
    "plan_first_ci95": [0.47, 0.91],
    "plan_content_rate": 0.5,
    "plan_content_ci95": [0.25, 0.75],
    "follow_through_rate": 0.625,
    "follow_through_ci95": [0.43, 0.79],
}


def _build(store: LineageStore) -> None:
    store.record("teacher_rollouts", "templated", "t1", facts={"teacher_kind": "templated"})
    store.record(
        "tito_parquet",
        "templated",
        "p1",
        upstream={"teacher_rollouts": "t1"},
        facts={"tokenizer_sha256": "abc", "upweight": 12},
    )
    store.record(
        "lora_checkpoint",
        "templated",
        "a1",
        upstream={"tito_parquet": "p1"},
        facts={"adapter_name": "student-0123456789ab", "base_model": "smollm2-135m"},
    )
    store.record(
        "behaviour_metrics", "templated", "m1", upstream={"lora_checkpoint": "a1"}, metrics=SUMMARY
    )


def test_metric_chain_walks_back_to_the_teacher(tmp_path):
    store = LineageStore(tmp_path / "lineage.duckdb")
    _build(store)
    result = store.metric("follow_through", "templated")
    assert result["value"] == 0.625 and result["n"] == 24 and result["ci95"] == [0.43, 0.79]
    assets = [node["asset"] for node in result["chain"]]
    assert assets == ["behaviour_metrics", "lora_checkpoint", "tito_parquet", "teacher_rollouts"]
    facts = {k: v for node in result["chain"] for k, v in node["facts"].items()}
    assert facts["tokenizer_sha256"] == "abc" and facts["upweight"] == 12
    assert facts["adapter_name"] == "student-0123456789ab"


def test_latest_wins_and_older_versions_stay_reachable(tmp_path):
    store = LineageStore(tmp_path / "l.duckdb")
    _build(store)
    store.record(
        "behaviour_metrics",
        "templated",
        "m2",
        upstream={"lora_checkpoint": "a1"},
        metrics={**SUMMARY, "plan_first_rate": 1.0},
    )
    assert store.metric("plan_first", "templated")["value"] == 1.0
    assert store.latest_metrics("behaviour_metrics")["templated"]["plan_first"] == 1.0
    assert store.chain("behaviour_metrics", "templated", "m1")[0]["data_version"] == "m1"


def test_unknown_metric_and_concurrent_writers(tmp_path):
    store = LineageStore(tmp_path / "l.duckdb")
    threads = [threading.Thread(target=store.record, args=("x", f"v{i}", str(i))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(store.latest("x", f"v{i}") for i in range(8))
    with pytest.raises(LineageError, match="no metric"):
        store.metric("plan_first", "nope")


def test_reading_a_missing_store_is_an_error_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "lineage.duckdb"
    store = LineageStore(missing)
    for read in (
        lambda: store.metric("plan_first", "templated"),
        lambda: store.latest("behaviour_metrics", "templated"),
        lambda: store.chain("behaviour_metrics", "templated"),
    ):
        with pytest.raises(LineageError, match=f"lineage store not found: {missing}"):
            read()
    assert store.latest_metrics("behaviour_metrics") == {}  # the report: nothing recorded yet
    assert main(["lineage", "--variant", "templated", "--db", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"lineage store not found: {missing}" in err
    assert list(tmp_path.iterdir()) == []  # no empty database, no directory


def test_content_version_is_stable_and_sensitive():
    assert content_version({"a": 1, "b": [1, 2]}) == content_version({"b": [1, 2], "a": 1})
    assert content_version({"a": 1}) != content_version({"a": 2})


def test_cli_prints_the_chain(tmp_path, capsys):
    store = LineageStore(tmp_path / "l.duckdb")
    _build(store)
    assert main(["lineage", "--variant", "templated", "--db", str(store.path)]) == 0
    out = capsys.readouterr().out
    assert "follow_through = 0.625" in out and "teacher_rollouts t1" in out
    assert "student-0123456789ab" in out
    assert main(["lineage", "--variant", "other", "--db", str(store.path)]) == 2


def test_cluster_intervals_and_paired_deltas_are_recorded_and_old_stores_migrate(tmp_path):
    import duckdb

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))  # a store written before the cluster columns existed
    con.execute(
        "CREATE TABLE metrics (asset TEXT NOT NULL, variant TEXT, data_version TEXT NOT NULL, "
        "metric TEXT NOT NULL, value DOUBLE, n INTEGER, ci_low DOUBLE, ci_high DOUBLE, "
        "recorded_at TIMESTAMP NOT NULL)"
    )
    con.execute(
        "INSERT INTO metrics VALUES ('behaviour_metrics', 'old', 'v', 'plan_first', "
        "0.5, 12, 0.2, 0.8, now())"
    )
    con.close()
    store = LineageStore(path)
    summary = {
        "n_pairs": 18,
        "n_agents": 36,
        "plan_first_rate": 0.9,
        "plan_first_ci95": [0.7, 0.97],
        "plan_first_cluster_ci95": [0.6, 1.0],
        "both_passed_rate": 0.5,
        "both_passed_n": 16,  # only the evaluated pairs
    }
    deltas = {"plan_first": {"delta": 0.8, "n": 18, "ci95": [0.5, 1.0]}}
    store.record("behaviour_metrics", "templated", "m", metrics=summary, deltas=deltas)
    stats = store.latest_stats("behaviour_metrics")
    assert stats["old"]["plan_first"] == {
        "value": 0.5,
        "n": 12,
        "ci95": [0.2, 0.8],
        "cluster_ci95": None,
    }
    new = stats["templated"]
    assert new["plan_first"]["ci95"] == [0.7, 0.97]
    assert new["plan_first"]["cluster_ci95"] == [0.6, 1.0]
    assert new["both_passed"]["n"] == 16
    assert new["delta_over_base.plan_first"] == {
        "value": 0.8,
        "n": 18,
        "ci95": [0.5, 1.0],
        "cluster_ci95": [0.5, 1.0],
    }
