"""Reading KPI values and alerts for the API, on both backends.

Metrics come from `kpi_metrics_all`, the view over the daily KPIs and every dbt rollup
(minute, hour, day, week). PostgreSQL is read directly (`Warehouse.query`). A DuckDB file
has one writing process (the Dagster runs) and a reader's shared lock keeps that writer
from opening it, so the API reads DuckDB from a **snapshot**: the metric relation and the
alert instances copied into an in-memory DuckDB, refreshed when the file has changed (its
and its WAL's size and modification time), at most every `KPI_API_SNAPSHOT_SECONDS`. Minute
values are copied for the last `KPI_API_SNAPSHOT_MINUTE_DAYS` days of minute data only
(a year of them would be millions of rows in the API's memory); older minute queries are
refused with a message saying so. The file is opened read-only
only while it is copied (milliseconds). While a writer holds it, the last snapshot is
served (the answer says so in `X-KPI-Snapshot: stale` and `X-KPI-Snapshot-Time`); with no
snapshot yet, the API retries for about a second and then answers 503 with `Retry-After`.

Every query is written here with bound parameters (`:name`); request text never becomes SQL.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
import sqlalchemy as sa

from kpi_pipelines.ingestion.contract import _sql_string
from kpi_pipelines.warehouse import Warehouse, WarehouseError

# The relation every metric read comes from: dbt's union of the daily KPIs and the rollups
# (a placeholder view over the daily KPIs until dbt first builds it).
METRICS_RELATION = "kpi_metrics_all"
MINUTE_ROLLUP = "rollup_events_minute"
ALERTS_TABLE = "alert_instances"
METRIC_COLUMNS = ("metric_name", "metric_value", "dimensions", "timestamp", "aggregation_level")
_EMPTY_METRICS = (
    f'CREATE TABLE {METRICS_RELATION} (metric_name VARCHAR, metric_value DOUBLE, dimensions VARCHAR, '
    '"timestamp" TIMESTAMP, aggregation_level VARCHAR)'
)
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")


class Reader(Protocol):
    dialect: str

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...


class Unavailable(Exception):
    """The warehouse cannot be read now; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 2):
        super().__init__(message)
        self.retry_after = retry_after


class WarehouseReader:
    """PostgreSQL (or any warehouse this process may open): read directly."""

    def __init__(self, warehouse: Warehouse):
        self.warehouse = warehouse
        self.dialect = warehouse.dialect
        self.headers: dict[str, str] = {}

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            return [dict(row._mapping) for row in self.warehouse.query(sql, params)]
        except (WarehouseError, sa.exc.OperationalError, sa.exc.InterfaceError) as error:
            text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise Unavailable(f"cannot read the warehouse: {text}", retry_after=5) from None


@dataclass
class Snapshot:
    connection: duckdb.DuckDBPyConnection
    signature: Any
    taken_at: dt.datetime
    stale: bool = False
    minute_since: dt.date | None = None  # minute values before this day are not in the copy


class SnapshotReader:
    """One query context on a snapshot (a cursor of its in-memory database)."""

    dialect = "duckdb"

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot
        self.headers = {
            "X-KPI-Snapshot": "stale" if snapshot.stale else "fresh",
            "X-KPI-Snapshot-Time": snapshot.taken_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    @property
    def minute_since(self) -> dt.date | None:
        return self.snapshot.minute_since

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        cursor = self.snapshot.connection.cursor()
        try:
            cursor.execute(_PARAM.sub(r"$\1", sql), dict(params or {}))
            columns = [column[0] for column in cursor.description]
            return [dict(zip(columns, row)) for row in cursor.fetchall()]
        finally:
            cursor.close()


def _is_lock_conflict(error: BaseException) -> bool:
    text = str(error)
    return "lock" in text.lower() and ("Conflicting" in text or "Could not set lock" in text)


class DuckDBSnapshots:
    """Snapshots of a DuckDB warehouse file (see the module doc)."""

    def __init__(
        self, path: Path, schema: str | None, min_interval: float = 5.0, minute_days: int = 7, first_wait: float = 1.0
    ):
        self.path = Path(path)
        self.schema = schema or "main"
        self.min_interval = min_interval
        self.minute_days = minute_days
        self.first_wait = first_wait
        self._snapshot: Snapshot | None = None
        self._checked = float("-inf")
        self._refresh_lock = threading.Lock()
        self.last_error: str | None = None

    def _signature(self) -> Any:
        parts = []
        for path in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                stat = path.stat()
                parts.append((stat.st_size, stat.st_mtime_ns, stat.st_ino))
            except FileNotFoundError:
                parts.append(None)
        return None if parts[0] is None else tuple(parts)

    def reader(self) -> SnapshotReader:
        return SnapshotReader(self.current())

    def current(self) -> Snapshot:
        snapshot = self._snapshot
        if snapshot is not None and time.monotonic() - self._checked < self.min_interval:
            return snapshot
        if snapshot is not None:
            if not self._refresh_lock.acquire(blocking=False):
                return snapshot  # another thread is refreshing: serve what we have
        else:
            self._refresh_lock.acquire()
        try:
            if self._snapshot is not snapshot and self._snapshot is not None:
                return self._snapshot  # refreshed while we waited
            return self._refresh()
        finally:
            self._refresh_lock.release()

    def _refresh(self) -> Snapshot:
        old = self._snapshot
        signature = self._signature()
        now = time.monotonic()
        if old is not None and signature == old.signature and not old.stale:
            self._checked = now
            return old
        deadline = now + (0 if old is not None else self.first_wait)
        delay = 0.05
        while True:
            try:
                fresh = self._copy(signature)
                break
            except duckdb.Error as error:
                self.last_error = str(error).strip().splitlines()[0]
                if not _is_lock_conflict(error):
                    self._checked = time.monotonic()
                    if old is not None:
                        old.stale = True
                        return old
                    raise Unavailable(f"cannot read the warehouse: {self.last_error}", retry_after=5) from None
                if time.monotonic() + delay > deadline:
                    self._checked = time.monotonic()
                    if old is not None:
                        old.stale = True
                        return old
                    raise Unavailable(
                        "the warehouse is locked by a writer (a Dagster run); no snapshot yet", retry_after=2
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.4)
        self._snapshot = fresh
        self._checked = time.monotonic()
        self.last_error = None
        # the old snapshot is not closed here: closing a connection closes its cursors, and
        # requests may still be reading it; it is freed when the last of them lets it go
        return fresh

    def _copy(self, signature: Any) -> Snapshot:
        taken_at = dt.datetime.now(dt.UTC)
        memory = duckdb.connect()
        try:
            memory.execute("SET TimeZone = 'UTC'")
            if signature is None:  # no warehouse yet (the first landing load creates it)
                memory.execute(_EMPTY_METRICS)
                return Snapshot(memory, None, taken_at)
            memory.execute(f"ATTACH {_sql_string(str(self.path))} AS kpi_source (READ_ONLY)")
            try:
                # the signature read after the attach: a write between the two makes it newer
                # than the copy, so the next check copies again (never the reverse)
                signature = self._signature()
                present = {
                    name
                    for (name,) in memory.execute(
                        "SELECT table_name FROM duckdb_tables() WHERE database_name = 'kpi_source' AND schema_name = $1 "
                        "UNION ALL SELECT view_name FROM duckdb_views() WHERE database_name = 'kpi_source' AND schema_name = $1",
                        [self.schema],
                    ).fetchall()
                }
                source = f'kpi_source."{self.schema}"'
                minute_since = None
                if MINUTE_ROLLUP in present:
                    newest = memory.execute(f'SELECT max("timestamp") FROM {source}.{MINUTE_ROLLUP}').fetchone()[0]
                    if newest is not None:
                        minute_since = newest.date() - dt.timedelta(days=self.minute_days - 1)
                if METRICS_RELATION in present:
                    # the filter reaches the view's window (it partitions by these columns)
                    columns = ", ".join(f'"{column}"' for column in METRIC_COLUMNS)
                    memory.execute(
                        f"CREATE TABLE {METRICS_RELATION} AS SELECT {columns} FROM {source}.{METRICS_RELATION} "
                        """WHERE aggregation_level <> 'minute' OR $since IS NULL OR "timestamp" >= $since""",
                        {"since": minute_since},
                    )
                else:
                    memory.execute(_EMPTY_METRICS)
                if ALERTS_TABLE in present:
                    memory.execute(f"CREATE TABLE {ALERTS_TABLE} AS SELECT * FROM {source}.{ALERTS_TABLE}")
            finally:
                memory.execute("DETACH kpi_source")
            return Snapshot(memory, signature, taken_at, minute_since=minute_since)
        except BaseException:
            memory.close()
            raise

    def status(self) -> dict[str, Any]:
        snapshot = self._snapshot
        return {
            "file_exists": self.path.exists(),
            "snapshot_time": snapshot.taken_at.strftime("%Y-%m-%dT%H:%M:%SZ") if snapshot else None,
            "snapshot_stale": bool(snapshot and snapshot.stale),
            "last_error": self.last_error,
        }


# --------------------------------------------------------------------------- queries

LEVELS = ("minute", "hour", "day", "week")


@dataclass(frozen=True)
class MetricQuery:
    start: dt.date
    end: dt.date  # included
    names: Sequence[str] = ()  # shell-style patterns; empty = every metric
    aggregation_level: str = "day"
    dimensions: Mapping[str, str] | None = None  # exact dimension set; {} = the overall value
    contains: Mapping[str, str] | None = None  # series having these dimension values
    limit: int = 100_000


def glob_to_like(pattern: str) -> str:
    """A shell-style name pattern ('retrieval.*') as a SQL LIKE pattern with escape '\\'."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def metrics_sql(query: MetricQuery, dialect: str) -> tuple[str, dict[str, Any]]:
    from kpi_pipelines.kpis.store import dimensions_json

    where = ['"timestamp" >= :start', '"timestamp" < :end', "aggregation_level = :level"]
    params: dict[str, Any] = {
        "start": dt.datetime.combine(query.start, dt.time()),
        "end": dt.datetime.combine(query.end + dt.timedelta(days=1), dt.time()),
        "level": query.aggregation_level,
        "limit": query.limit,
    }
    if query.names:
        alternatives = []
        for i, pattern in enumerate(query.names):
            if any(ch in pattern for ch in "*?"):
                alternatives.append(f"metric_name LIKE :name{i} ESCAPE '\\'")
                params[f"name{i}"] = glob_to_like(pattern)
            else:
                alternatives.append(f"metric_name = :name{i}")
                params[f"name{i}"] = pattern
        where.append("(" + " OR ".join(alternatives) + ")")
    if query.dimensions is not None:
        where.append("dimensions = :dimensions")
        params["dimensions"] = dimensions_json(query.dimensions)
    for i, (key, value) in enumerate(sorted((query.contains or {}).items())):
        if dialect == "duckdb":
            where.append(f"json_extract_string(dimensions, :dim_key{i}) = :dim_value{i}")
            params[f"dim_key{i}"] = f"$.{key}"  # keys are plain identifiers (checked by the route)
        else:
            where.append(f"(CAST(dimensions AS JSONB) ->> CAST(:dim_key{i} AS TEXT)) = :dim_value{i}")
            params[f"dim_key{i}"] = key
        params[f"dim_value{i}"] = value
    sql = (
        f'SELECT metric_name, metric_value, dimensions, "timestamp", aggregation_level FROM {METRICS_RELATION} '
        f"WHERE {' AND '.join(where)} "
        'ORDER BY metric_name, dimensions, "timestamp" LIMIT :limit'
    )
    return sql, params


def read_metrics(reader: Reader, query: MetricQuery) -> list[dict[str, Any]]:
    sql, params = metrics_sql(query, reader.dialect)
    return reader.query(sql, params)


def _table_exists(reader: Reader, name: str) -> bool:
    rows = reader.query(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = :name AND table_schema = current_schema()",
        {"name": name},
    )
    return bool(rows and rows[0]["n"])


def active_alerts(warehouse: Reader | Warehouse) -> list[dict[str, Any]]:
    """The alert instances that are active or suppressed, newest first; [] while the alert
    manager's table does not exist yet. Takes a `Warehouse` or one of this module's readers."""
    reader = WarehouseReader(warehouse) if isinstance(warehouse, Warehouse) else warehouse
    if not _table_exists(reader, ALERTS_TABLE):
        return []
    return reader.query(
        f"SELECT * FROM {ALERTS_TABLE} WHERE status IN ('active', 'suppressed') "
        "ORDER BY triggered_at DESC NULLS LAST"
    )
