"""The lineage store: one DuckDB file linking every output (and every metric) to the facts that
produced it — variant, teacher, tokenizer and chat-template hashes, upweight, strip options,
parquet data version, adapter, base model, held-out repos, seed and code version.

Each materialisation appends one row to `materialisations` with its own data version and the
data versions of the inputs it read, so the chain behind any metric is a walk up `upstream`.
Connections are short-lived (DuckDB allows one writer process at a time), with retries when
another process holds the file.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from coop_dag import REPO_ROOT
from coop_dag.util.files import file_sha256

# Connections of one process share one database instance, where two threads creating the
# tables at once conflict ("Catalog write-write conflict"): the first write to a new store
# takes turns. (Other processes wait on the file lock, see `connect`.)
_SCHEMA_LOCK = threading.Lock()

SCHEMA = """
CREATE TABLE IF NOT EXISTS materialisations (
    asset TEXT NOT NULL,
    variant TEXT,
    data_version TEXT NOT NULL,
    upstream JSON,          -- {asset: data_version} of the inputs read
    facts JSON,             -- teacher, tokenizer_sha256, chat_template_sha256, upweight, ...
    run_id TEXT,
    code_version TEXT,
    recorded_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    asset TEXT NOT NULL,
    variant TEXT,
    data_version TEXT NOT NULL,
    metric TEXT NOT NULL,
    value DOUBLE,
    n INTEGER,
    ci_low DOUBLE,
    ci_high DOUBLE,         -- Wilson 95 % (a delta row: the paired cluster bootstrap)
    recorded_at TIMESTAMP NOT NULL
);
-- cluster-bootstrap 95 % interval (features as clusters); added later, so older stores migrate
ALTER TABLE metrics ADD COLUMN IF NOT EXISTS cluster_low DOUBLE;
ALTER TABLE metrics ADD COLUMN IF NOT EXISTS cluster_high DOUBLE;
"""
DELTA_PREFIX = "delta_over_base."  # rows of paired deltas (eval.stats.paired_deltas)


def default_store_path() -> Path:
    """The profile's lineage file ($COOP_DAG_LINEAGE_DB, else under the runs directory)."""
    from coop_dag.config.profiles import resolve_profile

    return resolve_profile().lineage_db


RATE_METRICS = (
    "plan_first",
    "plan_content",
    "follow_through",
    "edit_follow_through",
    "both_passed",
    "merge_clean",
)
AGENT_METRICS = ("follow_through", "edit_follow_through")  # per agent: n is n_agents


class LineageError(RuntimeError):
    """The lineage store cannot be opened or has no such record."""


def content_version(obj: Any) -> str:
    """A data version for JSON-able content: sha256 of its canonical JSON, 16 hex chars."""
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_version(path: Path) -> str:
    """A data version for a file: sha256 of its bytes, 16 hex chars."""
    return file_sha256(path)[:16]


def code_version() -> str:
    """The git commit of the code that ran (with `+dirty` when the work tree differs)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class LineageStore:
    path: Path
    retries: int = 50

    @contextmanager
    def connect(self, *, create: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection with the schema in place. Readers pass `create=False`: a query must
        not leave an empty database (and its directory) behind where none was, so a missing
        file is an error naming it (a mistyped --db would otherwise read as "no records")."""
        if not create and not self.path.is_file():
            raise LineageError(
                f"lineage store not found: {self.path} (nothing was recorded there; check "
                "--db / $COOP_DAG_LINEAGE_DB)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(self.retries):
            try:
                con = duckdb.connect(str(self.path))
                break
            # another process holds the write lock, or another thread of this one is
            # opening or closing the same file (DuckDB's per-file instance cache)
            except (duckdb.IOException, duckdb.ResourceInUseException) as err:
                if attempt == self.retries - 1:
                    raise LineageError(f"lineage store {self.path} is locked: {err}") from err
                time.sleep(0.1 + 0.05 * attempt)
        try:
            with _SCHEMA_LOCK:
                con.execute(SCHEMA)
            yield con
        finally:
            con.close()

    def record(
        self,
        asset: str,
        variant: str | None,
        data_version: str,
        *,
        upstream: dict[str, str] | None = None,
        facts: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        deltas: dict[str, dict[str, Any]] | None = None,
        run_id: str | None = None,
    ) -> None:
        """Append one materialisation (and its metric rows, from a metrics summary dict, and
        `deltas` -- `paired_deltas` output -- as `delta_over_base.<metric>` rows)."""
        now = datetime.now(UTC).replace(tzinfo=None)
        with self.connect() as con:
            con.execute(
                "INSERT INTO materialisations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    asset,
                    variant,
                    data_version,
                    json.dumps(upstream or {}),
                    json.dumps(facts or {}, default=str),
                    run_id,
                    code_version(),
                    now,
                ],
            )
            for name, value, n, lo, hi, c_lo, c_hi in [
                *metric_rows(metrics or {}),
                *delta_rows(deltas or {}),
            ]:
                con.execute(
                    "INSERT INTO metrics (asset, variant, data_version, metric, value, n, ci_low,"
                    " ci_high, recorded_at, cluster_low, cluster_high) VALUES"
                    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [asset, variant, data_version, name, value, n, lo, hi, now, c_lo, c_hi],
                )

    def latest(self, asset: str, variant: str | None) -> dict | None:
        with self.connect(create=False) as con:
            row = con.execute(
                "SELECT asset, variant, data_version, upstream, facts, run_id, code_version, "
                "recorded_at FROM materialisations WHERE asset = ? AND variant IS NOT DISTINCT "
                "FROM ? ORDER BY recorded_at DESC LIMIT 1",
                [asset, variant],
            ).fetchone()
        return _row(row) if row else None

    def find(self, asset: str, data_version: str, variant: str | None = None) -> dict | None:
        """The latest record of `asset` with `data_version`, preferring `variant`'s: content
        versions can coincide across variants (two students scoring the same on the same
        pairs), and a variant's chain must not wander into another variant's."""
        with self.connect(create=False) as con:
            row = con.execute(
                "SELECT asset, variant, data_version, upstream, facts, run_id, code_version, "
                "recorded_at FROM materialisations WHERE asset = ? AND data_version = ? "
                "ORDER BY (variant IS NOT DISTINCT FROM ?) DESC, recorded_at DESC LIMIT 1",
                [asset, data_version, variant],
            ).fetchone()
        return _row(row) if row else None

    def chain(self, asset: str, variant: str | None, data_version: str | None = None) -> list[dict]:
        """The materialisation behind (asset, variant) and, recursively, everything it read."""
        start = (
            self.find(asset, data_version, variant) if data_version else self.latest(asset, variant)
        )
        if start is None:
            raise LineageError(f"no lineage recorded for {asset} (variant {variant})")
        out, todo, seen = [], [start], set()
        while todo:
            node = todo.pop(0)
            key = (node["asset"], node["data_version"])
            if key in seen:
                continue
            seen.add(key)
            out.append(node)
            for up_asset, up_version in node["upstream"].items():
                found = self.find(up_asset, up_version, node["variant"])
                if found:
                    todo.append(found)
        return out

    def metric(self, metric: str, variant: str, asset: str = "behaviour_metrics") -> dict:
        with self.connect(create=False) as con:
            row = con.execute(
                "SELECT value, n, ci_low, ci_high, data_version FROM metrics WHERE metric = ? "
                "AND asset = ? AND variant = ? ORDER BY recorded_at DESC LIMIT 1",
                [metric, asset, variant],
            ).fetchone()
        if row is None:
            raise LineageError(f"no metric {metric} recorded for {asset} (variant {variant})")
        value, n, lo, hi, version = row
        return {
            "metric": metric,
            "asset": asset,
            "variant": variant,
            "value": value,
            "n": n,
            "ci95": [lo, hi],
            "data_version": version,
            "chain": self.chain(asset, variant, version),
        }

    def latest_metrics(self, asset: str) -> dict[str, dict[str, float]]:
        """{variant: {metric: value}} from each variant's latest materialisation of `asset`
        ({} when nothing has been recorded yet: the store does not exist)."""
        if not self.path.is_file():
            return {}
        with self.connect(create=False) as con:
            rows = con.execute(
                "SELECT m.variant, m.metric, m.value FROM metrics m JOIN ("
                " SELECT variant, max(recorded_at) AS at FROM metrics WHERE asset = ?"
                " GROUP BY variant) l ON m.variant = l.variant AND m.recorded_at = l.at"
                " WHERE m.asset = ?",
                [asset, asset],
            ).fetchall()
        out: dict[str, dict[str, float]] = {}
        for variant, metric, value in rows:
            out.setdefault(variant, {})[metric] = value
        return out

    def latest_stats(self, asset: str) -> dict[str, dict[str, dict[str, Any]]]:
        """{variant: {metric: {value, n, ci95, cluster_ci95}}} from each variant's latest
        materialisation of `asset` (Wilson and cluster-bootstrap intervals, None when not
        recorded); {} when the store does not exist."""
        if not self.path.is_file():
            return {}
        with self.connect(create=False) as con:
            rows = con.execute(
                "SELECT m.variant, m.metric, m.value, m.n, m.ci_low, m.ci_high, m.cluster_low,"
                " m.cluster_high FROM metrics m JOIN ("
                " SELECT variant, max(recorded_at) AS at FROM metrics WHERE asset = ?"
                " GROUP BY variant) l ON m.variant = l.variant AND m.recorded_at = l.at"
                " WHERE m.asset = ?",
                [asset, asset],
            ).fetchall()
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for variant, metric, value, n, lo, hi, c_lo, c_hi in rows:
            out.setdefault(variant, {})[metric] = {
                "value": value,
                "n": n,
                "ci95": _interval(lo, hi),
                "cluster_ci95": _interval(c_lo, c_hi),
            }
        return out

    def latest_facts(self, asset: str) -> dict[str, dict[str, Any]]:
        """{variant: facts} of each variant's latest materialisation of `asset`."""
        if not self.path.is_file():
            return {}
        with self.connect(create=False) as con:
            rows = con.execute(
                "SELECT variant, facts FROM materialisations WHERE asset = ?"
                " QUALIFY row_number() OVER (PARTITION BY variant ORDER BY recorded_at DESC) = 1",
                [asset],
            ).fetchall()
        return {variant: json.loads(facts or "{}") for variant, facts in rows}


MetricRow = tuple[
    str, float | None, int | None, float | None, float | None, float | None, float | None
]


def metric_rows(summary: dict) -> list[MetricRow]:
    """(metric, value, n, ci_low, ci_high, cluster_low, cluster_high) rows from a metrics
    summary (see coop_dag.eval.metrics): Wilson and cluster-bootstrap 95 % intervals. n is the
    metric's own unit count when the summary has it (`<m>_n`: both_passed counts only the
    evaluated pairs)."""
    rows = []
    n_agents, n_pairs = summary.get("n_agents"), summary.get("n_pairs")
    for name in RATE_METRICS:
        if f"{name}_rate" not in summary:
            continue
        ci = summary.get(f"{name}_ci95") or [None, None]
        cluster = summary.get(f"{name}_cluster_ci95") or [None, None]
        n = summary.get(f"{name}_n", n_agents if name in AGENT_METRICS else n_pairs)
        rows.append((name, summary[f"{name}_rate"], n, ci[0], ci[1], cluster[0], cluster[1]))
    return rows


def delta_rows(deltas: dict[str, dict[str, Any]]) -> list[MetricRow]:
    """`delta_over_base.<metric>` rows from `paired_deltas` output; both interval columns hold
    the paired cluster-bootstrap interval (there is no Wilson interval of a delta)."""
    rows = []
    for name, d in deltas.items():
        ci = d.get("ci95") or [None, None]
        rows.append((f"{DELTA_PREFIX}{name}", d.get("delta"), d.get("n"), *ci, *ci))
    return rows


def _interval(lo: float | None, hi: float | None) -> list[float] | None:
    return None if lo is None or hi is None else [lo, hi]


def _row(row: tuple) -> dict:
    asset, variant, version, upstream, facts, run_id, code, at = row
    return {
        "asset": asset,
        "variant": variant,
        "data_version": version,
        "upstream": json.loads(upstream or "{}"),
        "facts": json.loads(facts or "{}"),
        "run_id": run_id,
        "code_version": code,
        "recorded_at": str(at),
    }


def format_chain(result: dict) -> str:
    """Human-readable chain for `coop-dag lineage`."""
    lines = [
        f"{result['metric']} = {result['value']:.3f} (n={result['n']}, 95% CI "
        f"{result['ci95'][0]:.3f}-{result['ci95'][1]:.3f}) from {result['asset']}"
        f"[{result['variant']}] {result['data_version']}"
    ]
    for node in result["chain"]:
        facts = ", ".join(f"{k}={v}" for k, v in sorted(node["facts"].items()))
        lines.append(
            f"  <- {node['asset']} {node['data_version']} (code {node['code_version']}, "
            f"{node['recorded_at']}){': ' + facts if facts else ''}"
        )
    return "\n".join(lines)
