"""One configuration story: dataset, subset, mirror and the validation / test repositories
resolve the same way for `coop-dag tasks`, the `dataset` resource and the launchpad config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dataset_factory import make_dataset, write

from coop_dag import BUNDLED_DATASET
from coop_dag.cli import main
from coop_dag.dataset.config import resolve_dataset_config
from coop_dag.dataset.tasks import BUNDLED_SPLIT, TaskError

ENV_NAMES = (
    "COOP_DAG_DATASET",
    "COOP_DAG_SUBSET",
    "COOP_DAG_MIRROR_DIR",
    "COOP_DAG_VALIDATION_REPOS",
    "COOP_DAG_TEST_REPOS",
    "COOP_DAG_HELD_OUT",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def user_dataset(tmp_path_factory) -> Path:
    return make_dataset(
        tmp_path_factory.mktemp("user") / "dataset", ("alpha_task", "beta_task", "gamma_task")
    )


def test_bundled_defaults_apply_to_the_bundled_dataset():
    config = resolve_dataset_config(env={})
    assert config.root == BUNDLED_DATASET and config.bundled
    assert config.split == BUNDLED_SPLIT
    assert config.sources["validation"] == config.sources["test"] == "bundled default"
    assert (config.subset, config.mirror_dir) == (None, None)


def test_another_dataset_gets_no_bundled_defaults_and_is_told_what_to_set(user_dataset):
    with pytest.raises(TaskError) as exc:
        resolve_dataset_config(dataset_dir=user_dataset, env={})
    msg = str(exc.value)
    assert "no validation repositories and no test repositories" in msg
    assert "COOP_DAG_VALIDATION_REPOS" in msg and "COOP_DAG_TEST_REPOS" in msg
    assert "unknown" not in msg  # not the old "unknown held-out repositories" of bundled names
    # Listing (require_split=False) leaves every pair in train.
    config = resolve_dataset_config(dataset_dir=user_dataset, env={}, require_split=False)
    assert config.split.held_out == ()


def test_explicit_beats_environment_beats_default(user_dataset, tmp_path):
    env = {
        "COOP_DAG_DATASET": str(user_dataset),
        "COOP_DAG_VALIDATION_REPOS": "alpha_task",
        "COOP_DAG_TEST_REPOS": " beta_task , gamma_task ,",
    }
    config = resolve_dataset_config(env=env)
    assert config.root == user_dataset and config.sources["dataset"] == "COOP_DAG_DATASET"
    assert config.validation == ["alpha_task"] and config.test == ["beta_task", "gamma_task"]
    config = resolve_dataset_config(test_repos=["gamma_task"], env=env)
    assert config.test == ["gamma_task"] and config.sources["test"] == "test_repos"
    # An empty explicit value counts as unset: the environment still applies.
    assert resolve_dataset_config(dataset_dir="", test_repos=[], env=env).test == [
        "beta_task",
        "gamma_task",
    ]


def test_held_out_is_the_older_name_of_test(user_dataset):
    env = {"COOP_DAG_VALIDATION_REPOS": "alpha_task", "COOP_DAG_HELD_OUT": "beta_task"}
    config = resolve_dataset_config(dataset_dir=user_dataset, env=env)
    assert config.test == ["beta_task"] and config.sources["test"] == "COOP_DAG_HELD_OUT"
    with pytest.raises(TaskError, match="COOP_DAG_TEST_REPOS=gamma_task and .*disagree"):
        resolve_dataset_config(
            dataset_dir=user_dataset, env={**env, "COOP_DAG_TEST_REPOS": "gamma_task"}
        )


def test_split_errors_name_the_setting(user_dataset):
    with pytest.raises(TaskError, match=r"unknown test repositories \['webroute_task'\].*"):
        resolve_dataset_config(
            dataset_dir=user_dataset,
            env={"COOP_DAG_VALIDATION_REPOS": "alpha_task", "COOP_DAG_TEST_REPOS": "webroute_task"},
        )
    with pytest.raises(TaskError, match="both the validation and the test.*COOP_DAG_TEST_REPOS"):
        resolve_dataset_config(
            dataset_dir=user_dataset,
            env={"COOP_DAG_VALIDATION_REPOS": "alpha_task", "COOP_DAG_TEST_REPOS": "alpha_task"},
        )
    # On the bundled dataset each list defaults on its own; overlapping the default is an error.
    with pytest.raises(TaskError, match="throttle_task.*both"):
        resolve_dataset_config(env={"COOP_DAG_TEST_REPOS": "throttle_task"})


def test_subset_may_live_anywhere(user_dataset, tmp_path, monkeypatch):
    sub = write(
        tmp_path / "mine" / "pick.json",
        json.dumps({"tasks": [{"repo": "beta_task", "task_id": 1, "pairs": [[1, 3]]}]}),
    )
    monkeypatch.chdir(tmp_path)
    env = {"COOP_DAG_SUBSET": "mine/pick.json"}  # relative to where the process started
    config = resolve_dataset_config(dataset_dir=user_dataset, env=env, require_split=False)
    assert config.subset == str(sub.resolve())  # absolute: same meaning for every process
    with pytest.raises(TaskError, match=r"subset file not found: nope\.json.*COOP_DAG_SUBSET"):
        resolve_dataset_config(
            dataset_dir=user_dataset, env={"COOP_DAG_SUBSET": "nope.json"}, require_split=False
        )
    with pytest.raises(TaskError, match=r"mirror directory not found.*--mirror-dir"):
        resolve_dataset_config(
            mirror_dir=tmp_path / "none", env={}, flag_names={"mirror": "--mirror-dir"}
        )


def test_resource_resolves_like_the_cli(user_dataset, monkeypatch):
    from resources.dataset import DatasetResource

    monkeypatch.setenv("COOP_DAG_DATASET", str(user_dataset))
    monkeypatch.setenv("COOP_DAG_VALIDATION_REPOS", "alpha_task")
    monkeypatch.setenv("COOP_DAG_TEST_REPOS", "beta_task")
    res = DatasetResource()
    assert res.root == user_dataset
    assert (res.validation, res.test, res.held_out) == (
        ["alpha_task"],
        ["beta_task"],
        ["beta_task"],
    )
    # Launchpad/config values win over the environment, like flags do.
    res = DatasetResource(test_repos=["gamma_task"])
    assert res.test == ["gamma_task"] and res.config.sources["test"] == "test_repos"
    assert DatasetResource(held_out_repos=["gamma_task"]).test == ["gamma_task"]
    with pytest.raises(ValueError, match="disagree"):
        _ = DatasetResource(test_repos=["gamma_task"], held_out_repos=["beta_task"]).config
    monkeypatch.delenv("COOP_DAG_TEST_REPOS")
    with pytest.raises(TaskError, match="no test repositories"):
        _ = DatasetResource().split
    monkeypatch.delenv("COOP_DAG_DATASET")
    monkeypatch.delenv("COOP_DAG_VALIDATION_REPOS")
    assert DatasetResource().split == BUNDLED_SPLIT


def test_cli_tasks_honours_env_and_lists_each_feature_once(user_dataset, monkeypatch, capsys):
    monkeypatch.setenv("COOP_DAG_DATASET", str(user_dataset))
    monkeypatch.setenv("COOP_DAG_TEST_REPOS", "gamma_task")
    assert main(["tasks", "--validation", "beta_task"]) == 0
    out = capsys.readouterr().out
    assert f"dataset     {user_dataset}  [COOP_DAG_DATASET]" in out
    assert "validation  beta_task  [--validation]" in out
    assert "test        gamma_task  [COOP_DAG_TEST_REPOS]" in out
    assert "alpha_task/1  [train]" in out and "gamma_task/1  [test]" in out
    # Each feature on its own line with its Files Modified only (not script.py, data.txt...).
    alpha = out.split("alpha_task/1  [train]")[1].split("\n\n")[0]
    assert "  feature1   src/calc/ops.py\n" in alpha and "  feature3   src/calc/util.py\n" in alpha
    assert alpha.count("src/calc/ops.py") == 2  # features 1 and 2, once each
    for junk in ("script.py", "data.txt", "file1.txt", " util.py"):
        assert junk not in out
    assert "f1_f2 conflicts, f1_f3 clean, f2_f3 clean" in alpha
    assert "9 pairs: 3 train, 3 validation, 3 test; 0 rejected" in out

    assert main(["tasks", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["dataset_dir"] == str(user_dataset)
    assert summary["n_train_pairs"] == 6 and summary["test_repos"] == ["gamma_task"]


def test_cli_tasks_shows_rejected_tasks_unless_told_not_to_check(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", ("alpha_task", "beta_task"))
    (root / "beta_task" / "task1" / "feature2" / "tests.patch").unlink()
    assert main(["tasks", "--dataset", str(root)]) == 0
    out = capsys.readouterr().out
    assert "rejected beta_task/1/feature2: missing tests.patch" in out
    assert "4 pairs: 4 train, 0 validation, 0 test; 2 rejected" in out
    assert main(["tasks", "--dataset", str(root), "--no-check"]) == 0
    assert "6 pairs: 6 train, 0 validation, 0 test; 0 rejected" in capsys.readouterr().out


def test_cli_tasks_error_for_unknown_repo(user_dataset, capsys):
    code = main(["tasks", "--dataset", str(user_dataset), "--test", "webroute_task"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown test repositories ['webroute_task']" in err and "--test" in err
