"""Shared pytest fixtures. Keep this minimal: every test module sees it."""

from __future__ import annotations

import pytest

from coop_dag.redis_server import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_url():
    """URL of a real Redis-protocol server (embedded Valkey on 127.0.0.1), one per session.
    Tests share it: namespace keys with a unique run prefix (`messaging.new_run_prefix()`)."""
    with EmbeddedRedis() as server:
        yield server.url
