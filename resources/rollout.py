"""Where and how coop episodes run: run directory, Redis, sandbox backend."""

import os
from pathlib import Path

import dagster as dg

from coop_dag.profiles import resolve_profile


class RolloutResource(dg.ConfigurableResource):
    """Episode runtime settings. Empty `redis_url` starts an embedded Redis-protocol server on
    loopback for the duration of a materialisation (the embedded default)."""

    runs_dir: str = ""
    redis_url: str = ""
    allow_unsandboxed: bool = False  # only where bubblewrap is missing and you accept the risk
    concurrency: int = 0  # 0: the variant's rollout.concurrency

    @property
    def root(self) -> Path:
        return Path(self.runs_dir) if self.runs_dir else resolve_profile().runs_dir

    @property
    def redis(self) -> str | None:
        return self.redis_url or resolve_profile().redis_url or None

    def workers(self, variant_default: int) -> int:
        env = os.environ.get("COOP_DAG_ROLLOUT_CONCURRENCY")
        return self.concurrency or (int(env) if env else variant_default)

    def run_dir(self, variant: str, stage: str) -> Path:
        return self.root / variant / stage
