"""Where and how coop episodes run: run directory, Redis, sandbox backend."""

import os
from pathlib import Path

import dagster as dg

from coop_dag.config.profiles import SANDBOXES, ProfileError, resolve_profile


class RolloutResource(dg.ConfigurableResource):
    """Episode runtime settings. Empty `redis_url` starts an embedded Redis-protocol server on
    loopback for the duration of a materialisation (the embedded default). `sandbox` is where
    agents' commands run: local (bubblewrap) or docker (CooperBench's task images); empty:
    the profile's (``COOP_DAG_SANDBOX``; cluster: docker)."""

    runs_dir: str = ""
    redis_url: str = ""
    allow_unsandboxed: bool = False  # only where bubblewrap is missing and you accept the risk
    concurrency: int = 0  # 0: the variant's rollout.concurrency
    sandbox: str = ""  # local | docker; empty: the profile's

    @property
    def root(self) -> Path:
        return Path(self.runs_dir) if self.runs_dir else resolve_profile().runs_dir

    @property
    def sandbox_backend(self) -> str:
        backend = self.sandbox or resolve_profile().sandbox
        if backend not in SANDBOXES:
            raise ProfileError(f"RolloutResource.sandbox={backend!r}: expected one of {SANDBOXES}")
        return backend

    @property
    def redis(self) -> str | None:
        return self.redis_url or resolve_profile().redis_url or None

    def workers(self, variant_default: int) -> int:
        env = os.environ.get("COOP_DAG_ROLLOUT_CONCURRENCY")
        return self.concurrency or (int(env) if env else variant_default)

    def run_dir(self, variant: str, stage: str) -> Path:
        return self.root / variant / stage
