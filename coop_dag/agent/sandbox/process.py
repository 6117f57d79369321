"""Run one command in its own process group: capped output capture, and a timeout that kills
the whole group. Both backends run their commands (and `docker` itself) through `_run_process`.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from coop_dag.agent.sandbox.base import DEFAULT_MAX_OUTPUT_BYTES, CommandResult, SandboxError
from coop_dag.util.processes import kill_group as _kill_group
from coop_dag.util.processes import start_group

_UNSET = object()


def _pick(default: int | None, override: int | None | object) -> int | None:
    return default if override is _UNSET else override  # type: ignore[return-value]


class _Capture:
    """Reads a pipe to EOF in a thread, keeping at most `max_bytes` (half head, half tail)."""

    def __init__(self, stream, max_bytes: int | None):
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0
        self._stream = stream
        self._half = None if max_bytes is None else max(max_bytes // 2, 1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while chunk := self._stream.read1(65536):
                if self._half is None or len(self.head) + len(chunk) <= self._half:
                    self.head += chunk
                    continue
                room = self._half - len(self.head)
                if room > 0:
                    self.head += chunk[:room]
                    chunk = chunk[room:]
                self.tail += chunk
                if len(self.tail) > self._half:
                    cut = len(self.tail) - self._half
                    self.dropped += cut
                    del self.tail[:cut]
        except (OSError, ValueError):
            pass

    def join(self, timeout: float | None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError:
            pass

    def text(self) -> str:
        if not self.dropped:
            return (self.head + self.tail).decode("utf-8", errors="replace")
        return (
            self.head.decode("utf-8", errors="replace")
            + f"\n[... {self.dropped} bytes of output dropped ...]\n"
            + self.tail.decode("utf-8", errors="replace")
        )


@dataclass(frozen=True)
class _Proc:
    stdout: str
    stderr: str
    returncode: int
    timed_out: bool
    duration: float


def _timeout_notice(timeout: float) -> str:
    return f"[coop-dag] command timed out after {timeout:g} seconds; its process group was killed"


def _run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike | None,
    timeout: float | None,
    merge_stderr: bool = True,
    max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES,
) -> _Proc:
    """Run argv in its own session; on timeout SIGKILL its whole process group.

    Output is read by threads so a command that floods stdout cannot block, and a
    grandchild that escaped the group and keeps the pipe open cannot hang the caller.
    """
    start = time.monotonic()
    try:
        proc = start_group(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        )
    except OSError as exc:
        raise SandboxError(f"cannot start {argv[0]!r}: {exc}") from exc
    out = _Capture(proc.stdout, max_output_bytes)
    err = None if merge_stderr else _Capture(proc.stderr, max_output_bytes)
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        proc.wait()
    except BaseException:  # KeyboardInterrupt etc.: never leave the tree running
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        # The group is gone or exited; remaining writers (if any escaped) get a short grace.
        out.join(5.0 if not timed_out else 2.0)
        if err is not None:
            err.join(2.0)
        for cap in (out, err):
            # A reader still blocked (an escaped grandchild holds the pipe; only possible
            # unsandboxed) keeps its pipe: closing it under the reader would block here.
            if cap is not None and not cap.alive:
                cap.close()
    duration = time.monotonic() - start
    return _Proc(
        stdout=out.text(),
        stderr=err.text() if err is not None else "",
        returncode=-1 if timed_out else proc.returncode,
        timed_out=timed_out,
        duration=duration,
    )


def _to_result(p: _Proc, timeout: float | None) -> CommandResult:
    output = p.stdout
    if p.timed_out and timeout is not None:
        sep = "" if not output or output.endswith("\n") else "\n"
        output = f"{output}{sep}{_timeout_notice(timeout)}\n"
    return CommandResult(output, p.returncode, p.timed_out, p.duration)
