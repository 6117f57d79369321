"""Where tasks come from: the bundled CooperBench-format dataset or a real `dataset/` checkout.

Resolution (config value, then environment, then default) is `coop_dag.dataset.config`'s, the
same as the `coop-dag` command line; README "Configuring the dataset" has the table."""

from pathlib import Path

import dagster as dg

from coop_dag.dataset.config import DatasetConfig, resolve_dataset_config
from coop_dag.dataset.tasks import RepoSplit


class DatasetResource(dg.ConfigurableResource):
    """Task source and repository split. Every field left empty falls back to its environment
    variable (COOP_DAG_DATASET, COOP_DAG_SUBSET, COOP_DAG_MIRROR_DIR, COOP_DAG_VALIDATION_REPOS,
    COOP_DAG_TEST_REPOS or its older name COOP_DAG_HELD_OUT), then to the default: the bundled
    dataset with its bundled split (`dataset.tasks.BUNDLED_SPLIT`). Another dataset must name
    its validation and test repositories."""

    dataset_dir: str = ""
    subset: str = ""  # a name under <dataset>/subsets/ or a path to a subset file anywhere
    mirror_dir: str = ""  # local git mirrors for real CooperBench repos (offline clones)
    validation_repos: list[str] = []  # first-turn probe and any tuning
    test_repos: list[str] = []  # held-out student and base rollouts only
    held_out_repos: list[str] = []  # older name of test_repos

    @property
    def config(self) -> DatasetConfig:
        if self.held_out_repos and self.test_repos and self.held_out_repos != self.test_repos:
            raise ValueError(
                f"dataset resource: test_repos {self.test_repos} and its older name "
                f"held_out_repos {self.held_out_repos} disagree: set test_repos only"
            )
        return resolve_dataset_config(
            dataset_dir=self.dataset_dir,
            subset=self.subset,
            mirror_dir=self.mirror_dir,
            validation_repos=self.validation_repos,
            test_repos=self.test_repos or self.held_out_repos,
        )

    @property
    def root(self) -> Path:
        return self.config.root

    @property
    def subset_name(self) -> str | None:
        return self.config.subset

    @property
    def mirror(self) -> Path | None:
        return self.config.mirror_dir

    @property
    def split(self) -> RepoSplit:
        return self.config.split

    @property
    def validation(self) -> list[str]:
        return self.config.validation

    @property
    def test(self) -> list[str]:
        return self.config.test

    @property
    def held_out(self) -> list[str]:
        """Older name of `test`."""
        return self.config.test
