"""The one copy of the file helpers every stage needs: atomic writes (a reader or a killed run
sees the old file or the new one, never a torn one), a file's sha256 and a file lock. Stdlib
only: verl's and vLLM's environments import it too."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Have `write(tmp_path)` write a temp file next to `path`, then rename it over `path`.
    The result keeps the old file's permissions (a new file: 0644, readable by the containers
    and services that read our outputs); a failed write leaves `path` untouched and no temp."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`text` (UTF-8) into `path`, atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, **dump: Any) -> Path:
    """`obj` as JSON (``json.dumps`` keyword arguments in `dump`, default indent 2) plus a
    final newline, atomically."""
    dump.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(obj, **dump) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256_memo(path: str | os.PathLike) -> str:
    """`file_sha256`, memoised per path, size and mtime in this process (for files hashed
    again and again: a student's tokenizer.json on every load)."""
    p = Path(path)
    st = p.stat()
    memo_key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _SHA_MEMO:
        _SHA_MEMO[memo_key] = file_sha256(p)
    return _SHA_MEMO[memo_key]


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive advisory lock on `path` (blocks; across processes and threads alike, since
    every holder opens the file itself)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
