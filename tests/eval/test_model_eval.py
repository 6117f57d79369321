"""`coop-dag eval` and the `evaluate_adapter` job: any adapter or model, rolled out on a dataset
outside the bundled one with the held-out runtime and limits, scored, on the session's real vLLM
(tiny-qwen3) with a tiny adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import serve_helpers
from dataset_factory import make_dataset

from coop_dag.cli import main
from coop_dag.dataset.config import resolve_dataset_config
from coop_dag.eval.model_eval import EvalError, select_eval_pairs

ROOT = Path(__file__).resolve().parents[2]
TINY_VARIANTS = ROOT / "tests" / "fixtures" / "variants_two_tiny.yaml"
REPOS = ("alpha_task", "beta_task", "gamma_task")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("eval-dataset") / "dataset", REPOS)


def test_pair_selection(dataset):
    config = resolve_dataset_config(
        dataset_dir=dataset, test_repos="beta_task", require_split=False, env={}
    )
    assert [p.pair_id for p in select_eval_pairs(config)] == [
        "beta_task/1/f1_f2", "beta_task/1/f1_f3", "beta_task/1/f2_f3"
    ]  # fmt: skip
    assert len(select_eval_pairs(config, split="all")) == 9
    picked = select_eval_pairs(config, pair_ids=["gamma_task/1/f2_f3", "alpha_task/1/f1_f2"])
    assert [p.pair_id for p in picked] == ["gamma_task/1/f2_f3", "alpha_task/1/f1_f2"]
    with pytest.raises(EvalError, match="nope/1/f1_f2"):
        select_eval_pairs(config, pair_ids=["nope/1/f1_f2"])
    unsplit = resolve_dataset_config(dataset_dir=dataset, require_split=False, env={})
    with pytest.raises(EvalError, match="COOP_DAG_TEST_REPOS"):
        select_eval_pairs(unsplit)


def test_model_that_is_nothing_known_is_an_error(dataset, capsys):
    assert main(["eval", "no-such-model", "--dataset", str(dataset), "--split", "all"]) == 2
    assert "litellm model string" in capsys.readouterr().err


def _eval(args: list[str], capsys) -> str:
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return out


def test_eval_an_adapter_and_the_base_on_the_session_vllm(
    dataset, tmp_path, capsys, monkeypatch, vllm_server
):
    monkeypatch.setenv("COOP_DAG_VARIANTS", str(TINY_VARIANTS))  # tiny limits: quick rollouts
    monkeypatch.setenv("COOP_DAG_RUNS_DIR", str(tmp_path / "runs"))
    adapter = serve_helpers.adapters()["A"]
    common = ["--url", vllm_server.url, "--dataset", str(dataset), "--test", "beta_task"]
    try:
        out = _eval([adapter, *common, "--variant", "tiny-up1"], capsys)
    finally:
        serve_helpers.unload_all(vllm_server)
    from coop_dag.training.adapters import adapter_name

    name = adapter_name(adapter)
    run = tmp_path / "runs" / "eval" / "A" / "dataset"  # <runs>/eval/<model>/<dataset>
    for pid in ("f1_f2", "f1_f3", "f2_f3"):
        pair = run / "coop" / "beta_task" / "1" / pid
        a, b = pid[1], pid[-1]  # trajectories are named by feature id
        for f in (f"agent{a}_traj.json", f"agent{b}_traj.json", "conversation.json", "result.json"):
            assert (pair / f).is_file(), pair / f
        assert json.loads((pair / f"agent{a}_traj.json").read_text())["model"] == name
        assert json.loads((pair / "result.json").read_text())["prompt"] == "default"
    provenance = json.loads((run / "eval_run.json").read_text())
    assert provenance["model_kind"] == "adapter" and provenance["model_name"] == name
    assert provenance["dataset"] == str(dataset)
    assert provenance["pair_ids"] == [f"beta_task/1/{p}" for p in ("f1_f2", "f1_f3", "f2_f3")]
    assert provenance["limits"]["max_tokens"] == 16 and provenance["steering"] is False
    assert provenance["facts"]["student"] == "tiny-qwen3"
    scores = json.loads((run / "scores.json").read_text())
    assert scores["summary"]["n_pairs"] == 3
    assert "| plan_first |" in out and "| both_passed |" in out
    assert (run / "scores.md").read_text().strip().endswith(out.strip().splitlines()[-1])
    print(out)

    # the untrained base: the student's name, same runtime, its own run directory
    base_out = _eval(
        ["tiny-qwen3", *common, "--variant", "tiny-up1", "--out", str(tmp_path / "base")], capsys
    )
    base = json.loads((tmp_path / "base" / "eval_run.json").read_text())
    assert base["model_kind"] == "base" and base["model_name"] == "tiny-qwen3"
    assert json.loads((tmp_path / "base" / "scores.json").read_text())["summary"]["n_pairs"] == 3
    print(base_out)


def test_evaluate_adapter_job_runs_from_an_adapter_dir_alone(dataset, tmp_path, vllm_server):
    """The job as a user launches it on a directory outside the adapters dir: register it
    (`python -m assets.register_adapter DIR` adds its partition and prints the command), then
    run that command, in a fresh DAGSTER_HOME where nothing was ever materialised: no
    lora_checkpoint, no task_pool."""
    import shlex
    import shutil

    from coop_dag.training.adapters import read_lineage, write_lineage

    adapter = str(tmp_path / "dropped")  # the session's adapter B, trained for a tiny variant
    shutil.copytree(serve_helpers.adapters()["B"], adapter)
    write_lineage(adapter, {**read_lineage(adapter), "variant": "tiny-up12"})
    home, runs = tmp_path / "home", tmp_path / "runs"
    home.mkdir()
    (home / "dagster.yaml").write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COOP_DAG_")}
    env.update(
        {
            "DAGSTER_HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "COOP_DAG_VARIANTS": str(TINY_VARIANTS),
            "COOP_DAG_RUNS_DIR": str(runs),
            "COOP_DAG_VLLM_URL": vllm_server.url,
            "COOP_DAG_DATASET": str(dataset),
            "COOP_DAG_VALIDATION_REPOS": "alpha_task",
            "COOP_DAG_TEST_REPOS": "beta_task",
        }
    )
    if os.environ.get("COOP_DAG_CACHE"):
        env["COOP_DAG_CACHE"] = os.environ["COOP_DAG_CACHE"]

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)

    bad = run([sys.executable, "-m", "assets.register_adapter", str(tmp_path / "nowhere")])
    assert bad.returncode == 2 and "nowhere" in bad.stderr
    registered = run([sys.executable, "-m", "assets.register_adapter", adapter])
    assert registered.returncode == 0, registered.stderr[-3000:]
    command = registered.stdout.strip().splitlines()[-1]
    argv = shlex.split(command)
    assert argv[:3] == ["dagster", "job", "execute"]
    argv[0] = str(Path(sys.executable).parent / "dagster")
    try:
        proc = run(argv)
    finally:
        serve_helpers.unload_all(vllm_server)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    import dagster as dg

    from coop_dag.eval.lineage import LineageStore
    from coop_dag.training.adapters import adapter_name

    name = adapter_name(adapter)
    with dg.DagsterInstance.from_config(str(home)) as instance:

        def done(asset: str) -> list:
            return instance.fetch_materializations(dg.AssetKey(asset), limit=10).records

        assert done("lora_checkpoint") == [] and done("served_adapter") == []  # never needed
        for asset in ("task_pool", "dropped_adapter", "dropped_adapter_metrics"):
            assert len(done(asset)) == 1, asset
    store = LineageStore(runs / "lineage.duckdb")
    with store.connect() as con:
        rows = con.execute(
            "SELECT asset, facts FROM materialisations WHERE variant = ?", [name]
        ).fetchall()
    facts = {asset: json.loads(f) for asset, f in rows}
    pairs = [f"beta_task/1/{p}" for p in ("f1_f2", "f1_f3", "f2_f3")]
    rolled = facts["dropped_adapter_metrics"]
    assert rolled["dataset"] == str(dataset), rolled
    assert rolled["pair_ids"] == pairs and rolled["subset"] is None
    assert rolled["adapter_name"] == name
    assert facts["dropped_adapter"]["student"] == "tiny-qwen3"  # from the adapter's lineage.json
