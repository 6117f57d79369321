"""Shared pytest fixtures. Keep this minimal: every test module sees it."""

from __future__ import annotations

from pathlib import Path

import pytest

from coop_dag.agent.redis_server import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_url():
    """URL of a real Redis-protocol server (embedded Valkey on 127.0.0.1), one per session.
    Tests share it: namespace keys with a unique run prefix (`messaging.new_run_prefix()`)."""
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def dagster_dev(tmp_path_factory):
    """Port of one `dagster dev -w workspace.yaml` per session (tmp DAGSTER_HOME), started on
    first use and stopped, by its process group, at the end of the session."""
    from dagster_dev_helpers import running_dagster_dev

    with running_dagster_dev(tmp_path_factory.mktemp("dagster_home")) as port:
        yield port


@pytest.fixture(scope="session")
def vllm_server():
    """The session's real vLLM (CPU build) serving tiny-qwen3: one for every test that serves
    a model (see tests/serve_helpers.py)."""
    import serve_helpers

    return serve_helpers.server()


def pytest_collection_finish(session):
    """A selected test uses the session's vLLM server: start loading it now, in the
    background, so the tests before the first one that needs it overlap its start-up."""
    if any("vllm_server" in getattr(item, "fixturenames", ()) for item in session.items):
        import serve_helpers

        serve_helpers.start_server_early()


E2E_DIR = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items):
    """The end-to-end tests (`tests/e2e/`: backfill, UI, dagster dev, deploy, real verl) are
    marked `e2e` and `slow`, so `-m "not e2e"` leaves them out and `make test` runs them all."""
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.slow)
