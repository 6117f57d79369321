"""Dagster resources: thin configurable wrappers around coop_dag engines, one per concern."""

from resources.dataset import DatasetResource
from resources.rollout import RolloutResource

__all__ = ["DatasetResource", "RolloutResource"]
