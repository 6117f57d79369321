"""Dagster resources: thin configurable wrappers around coop_dag engines, one per concern."""

from resources.dataset import DatasetResource
from resources.lineage import LineageResource
from resources.rollout import RolloutResource

__all__ = ["DatasetResource", "LineageResource", "RolloutResource"]
