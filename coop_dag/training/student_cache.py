"""The students' model cache: ``$COOP_DAG_CACHE`` (default ``<repo>/.cache/coop-dag``) and
:func:`materialize`, which builds a cached model dir in a temporary sibling directory and
renames it into place under an exclusive file lock, so concurrent callers (processes or
threads) never see or corrupt a half-written dir; a dir is complete when its manifest
(``coop_dag_student.json``) exists. Merged adapters (`coop_dag.training.adapters`) and task
environments (`coop_dag.dataset.task_env`) live under the same root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from coop_dag import REPO_ROOT
from coop_dag.util.files import atomic_write_text, file_lock

MANIFEST_NAME = "coop_dag_student.json"
CACHE_ENV = "COOP_DAG_CACHE"

# Builds actually performed in this process, per student name: a cache hit does not count.
BUILDS: Counter[str] = Counter()


def cache_root() -> Path:
    """``$COOP_DAG_CACHE`` if set, else ``<repo>/.cache/coop-dag``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else REPO_ROOT / ".cache" / "coop-dag"


def student_cache_dir(name: str) -> Path:
    return cache_root() / "students" / name


def _read_manifest(model_dir: Path) -> dict | None:
    try:
        return json.loads((model_dir / MANIFEST_NAME).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def materialize(final: Path, build: Callable[[Path], dict], *, label: str) -> tuple[Path, dict]:
    """Return ``(final, manifest)``, running ``build(tmp_dir) -> manifest`` first when
    ``final`` is not complete. The build writes into a fresh sibling temp dir which is renamed
    to ``final`` only after the manifest is written, all under ``final``'s lock file; stale
    temp dirs of crashed builds and incomplete dirs are removed. ``label`` keys :data:`BUILDS`."""
    manifest = _read_manifest(final)
    if manifest is not None:
        return final, manifest
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    with file_lock(parent / f"{final.name}.lock"):
        manifest = _read_manifest(final)
        if manifest is not None:  # another caller built it while we waited
            return final, manifest
        for stale in parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # we hold the lock: nobody is building
        if final.exists():
            shutil.rmtree(final)  # incomplete (no manifest)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
        try:
            started = time.monotonic()
            manifest = dict(build(tmp))
            manifest.setdefault("cache_key", final.name)
            manifest["build_seconds"] = round(time.monotonic() - started, 2)
            manifest["built_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            _make_readable(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        BUILDS[label] += 1
        return final, manifest


def _current_umask() -> int:
    """The process umask, read without setting it (os.umask would race with other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _make_readable(root: Path) -> None:
    """mkdtemp (0700) and some writers (0600) are private; a cache dir is read by other
    users too (a serving container mounting it), so use the umask's ordinary modes."""
    umask = _current_umask()
    os.chmod(root, 0o777 & ~umask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~umask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~umask)


def sync_chat_template(model_dir: Path, template: str) -> None:
    """Keep a cached dir's ``chat_template.jinja`` equal to the entry's template, so engines
    that load the dir directly (vLLM) render like everything else after a template edit."""
    target = model_dir / "chat_template.jinja"
    if target.is_file() and target.read_text(encoding="utf-8") == template:
        return
    with file_lock(model_dir.parent / f"{model_dir.name}.lock"):
        if not (target.is_file() and target.read_text(encoding="utf-8") == template):
            atomic_write_text(target, template)
