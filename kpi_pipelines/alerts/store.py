"""Warehouse reads and writes of the alerting engine. SQL here runs on DuckDB and PostgreSQL.

The windows of every rule are read set-based: the distinct (metric, level, window) triples
of all rules go into the query as a VALUES list and one GROUP BY returns each window's mean
per series; a few hundred rules take one or two queries, never one per rule.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from kpi_pipelines.alerts.state import AnomalyPoint, SeriesState
from kpi_pipelines.warehouse import Warehouse

VALUES_CHUNK = 400  # window specs per query (6 parameters each)
_local_lock = threading.RLock()


def utcnow() -> dt.datetime:
    """Naive UTC, as the warehouse stores timestamps."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex


@contextmanager
def alerts_lock(warehouse: Warehouse) -> Iterator[None]:
    """One evaluation (and delivery pass) at a time per warehouse: a PostgreSQL session
    advisory lock (the job and `kpi alerts evaluate` may run on different machines); in
    process for DuckDB, which has a single writing process anyway."""
    if warehouse.dialect != "postgresql":
        with _local_lock:
            yield
        return
    with warehouse.engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_advisory_lock(hashtext('kpi_pipelines.alerts'))"))
        connection.commit()
        try:
            yield
        finally:
            connection.execute(sa.text("SELECT pg_advisory_unlock(hashtext('kpi_pipelines.alerts'))"))
            connection.commit()


@dataclass(frozen=True)
class WindowSpec:
    metric: str
    level: str
    overall: bool  # only the overall series (dimensions '{}'); else every series of the metric
    start: dt.datetime
    end: dt.datetime


def _values(specs: Sequence[WindowSpec], offset: int) -> tuple[str, dict[str, Any]]:
    rows, params = [], {}
    for i, spec in enumerate(specs):
        rows.append(
            f"(CAST(:k{i} AS INTEGER), CAST(:m{i} AS VARCHAR), CAST(:l{i} AS VARCHAR), CAST(:o{i} AS BOOLEAN), "
            f"CAST(:s{i} AS TIMESTAMP), CAST(:e{i} AS TIMESTAMP))"
        )
        params.update({f"k{i}": offset + i, f"m{i}": spec.metric, f"l{i}": spec.level, f"o{i}": spec.overall,
                       f"s{i}": spec.start, f"e{i}": spec.end})
    return "WITH specs (k, metric, level, overall, lo, hi) AS (VALUES " + ", ".join(rows) + ")", params


def window_means(
    warehouse: Warehouse, relation: str, specs: Sequence[WindowSpec]
) -> dict[int, dict[str, tuple[float, int, dt.datetime]]]:
    """For each spec (by position): {dimensions text: (mean of the buckets, buckets, last bucket)}."""
    out: dict[int, dict[str, tuple[float, int, dt.datetime]]] = {}
    for first in range(0, len(specs), VALUES_CHUNK):
        values, params = _values(specs[first : first + VALUES_CHUNK], first)
        sql = f"""{values}
            SELECT s.k, CAST(m.dimensions AS VARCHAR) AS dims, avg(m.metric_value), count(*), max(m."timestamp")
            FROM specs AS s
            JOIN {relation} AS m
              ON m.metric_name = s.metric AND m.aggregation_level = s.level
             AND m."timestamp" >= s.lo AND m."timestamp" < s.hi
            WHERE m.metric_value IS NOT NULL AND (NOT s.overall OR CAST(m.dimensions AS VARCHAR) = '{{}}')
            GROUP BY s.k, CAST(m.dimensions AS VARCHAR)"""
        for k, dims, mean, count, last in warehouse.query(sql, params):
            out.setdefault(int(k), {})[dims] = (float(mean), int(count), last)
    return out


def anomaly_points(warehouse: Warehouse, specs: Sequence[WindowSpec]) -> dict[int, dict[str, list[AnomalyPoint]]]:
    """For each spec: {dimensions text: the kpi_anomalies rows in its window}."""
    out: dict[int, dict[str, list[AnomalyPoint]]] = {}
    for first in range(0, len(specs), VALUES_CHUNK):
        values, params = _values(specs[first : first + VALUES_CHUNK], first)
        sql = f"""{values}
            SELECT s.k, CAST(a.dimensions AS VARCHAR), a."timestamp", a.status, a.z_score, a.metric_value,
                   a.lower_bound, a.upper_bound, a.direction
            FROM specs AS s
            JOIN kpi_anomalies AS a
              ON a.metric_name = s.metric AND a.aggregation_level = s.level
             AND a."timestamp" >= s.lo AND a."timestamp" < s.hi
            WHERE (NOT s.overall OR CAST(a.dimensions AS VARCHAR) = '{{}}')"""
        for k, dims, ts, status, z, value, low, high, direction in warehouse.query(sql, params):
            point = AnomalyPoint(ts, status, None if z is None else float(z), float(value),
                                 None if low is None else float(low), None if high is None else float(high), direction)
            out.setdefault(int(k), {}).setdefault(dims, []).append(point)
    return out


def parse_dimensions(text: str) -> dict[str, str] | None:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    if not isinstance(value, dict):
        return None
    return {str(key): str(item) for key, item in value.items()}


@dataclass(frozen=True)
class OpenInstance:
    id: str
    rule_name: str
    fingerprint: str
    dimensions: dict[str, str]
    labels: dict[str, str]
    state: SeriesState
    status: str


INSTANCE_COLUMNS = (
    "id", "rule_name", "fingerprint", "metric_name", "aggregation_level", "dimensions", "labels", "state", "status",
    "severity", "pending_since", "triggered_at", "recovering_since", "critical_since", "resolved_at", "current_value",
    "threshold_value", "details", "last_evaluated_at", "last_notified_at", "last_escalated_at", "firing_notified",
    "escalation_notified", "notification_sent",
)


def open_instances(connection: sa.Connection) -> list[OpenInstance]:
    rows = connection.execute(
        sa.text(
            "SELECT id, rule_name, fingerprint, dimensions, labels, state, status, severity, pending_since, triggered_at, "
            "recovering_since, critical_since, last_notified_at, last_escalated_at, firing_notified, escalation_notified, "
            "current_value, threshold_value, details FROM alert_instances WHERE status <> 'resolved'"
        )
    ).mappings()
    out = []
    for row in rows:
        state = SeriesState(
            state=row["state"],
            severity=row["severity"],
            pending_since=row["pending_since"],
            triggered_at=row["triggered_at"],
            recovering_since=row["recovering_since"],
            critical_since=row["critical_since"],
            last_notified_at=row["last_notified_at"],
            last_escalated_at=row["last_escalated_at"],
            firing_notified=bool(row["firing_notified"]),
            escalation_notified=bool(row["escalation_notified"]),
            value=row["current_value"],
            threshold=row["threshold_value"],
            details=json.loads(row["details"] or "{}"),
        )
        out.append(
            OpenInstance(row["id"], row["rule_name"], row["fingerprint"], parse_dimensions(row["dimensions"]) or {},
                         json.loads(row["labels"] or "{}"), state, row["status"])
        )
    return out


def silenced_rules(connection: sa.Connection, now: dt.datetime) -> dict[str, tuple[dt.datetime, str]]:
    """Rules silenced at `now`: {rule: (until, reason)} (the latest-ending silence)."""
    rows = connection.execute(
        sa.text(
            "SELECT rule_name, ends_at, reason FROM alert_silences WHERE starts_at <= :now AND ends_at > :now "
            "ORDER BY ends_at"
        ),
        {"now": now},
    )
    return {rule: (ends, reason) for rule, ends, reason in rows}


def insert_instances(connection: sa.Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        columns = ", ".join(INSTANCE_COLUMNS)
        values = ", ".join(f":{column}" for column in INSTANCE_COLUMNS)
        connection.execute(sa.text(f"INSERT INTO alert_instances ({columns}) VALUES ({values})"), rows)


def update_instances(connection: sa.Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        settable = [c for c in INSTANCE_COLUMNS if c not in ("id", "rule_name", "fingerprint", "notification_sent")]
        assignments = ", ".join(f"{column} = :{column}" for column in settable)
        connection.execute(sa.text(f"UPDATE alert_instances SET {assignments} WHERE id = :id"), rows)


def insert_outbox(connection: sa.Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        connection.execute(
            sa.text(
                "INSERT INTO alert_outbox (id, alert_id, rule_name, fingerprint, channel, kind, severity, payload, "
                "evaluation_id, created_at, attempts, next_attempt_at, last_attempt_at, last_error) VALUES (:id, :alert_id, "
                ":rule_name, :fingerprint, :channel, :kind, :severity, :payload, :evaluation_id, :created_at, 0, "
                ":created_at, NULL, NULL)"
            ),
            rows,
        )


def insert_evaluation(connection: sa.Connection, row: Mapping[str, Any]) -> None:
    connection.execute(
        sa.text(
            "INSERT INTO alert_evaluations (id, evaluated_at, started_at, finished_at, trigger, rules, series, pending, "
            "firing, resolved, queued) VALUES (:id, :evaluated_at, :started_at, :finished_at, :trigger, :rules, :series, "
            ":pending, :firing, :resolved, :queued)"
        ),
        dict(row),
    )


@dataclass(frozen=True)
class OutboxItem:
    id: str
    alert_id: str
    rule_name: str
    fingerprint: str
    channel: str
    kind: str
    severity: str | None
    payload: dict[str, Any]
    created_at: dt.datetime
    attempts: int


def due_outbox(warehouse: Warehouse, now: dt.datetime) -> list[OutboxItem]:
    rows = warehouse.query(
        "SELECT id, alert_id, rule_name, fingerprint, channel, kind, severity, payload, created_at, attempts "
        "FROM alert_outbox WHERE next_attempt_at <= :now ORDER BY created_at, id",
        {"now": now},
    )
    return [
        OutboxItem(r[0], r[1], r[2], r[3], r[4], r[5], r[6], {**json.loads(r[7]), "notification_id": r[0]}, r[8], int(r[9]))
        for r in rows
    ]


def _in(column: str, name: str = "ids") -> sa.TextClause:
    return sa.text(column).bindparams(sa.bindparam(name, expanding=True))


def record_delivered(
    warehouse: Warehouse, items: Sequence[OutboxItem], channel_type: str, destination: str, message_id: str | None,
    sent_at: dt.datetime,
) -> None:
    """After a successful send: the notification log rows, the outbox rows gone, the
    instances marked notified, in one transaction."""
    rows = [
        {
            "id": item.id, "alert_id": item.alert_id, "rule_name": item.rule_name, "fingerprint": item.fingerprint,
            "channel": item.channel, "channel_type": channel_type, "destination": destination, "kind": item.kind,
            "severity": item.severity, "message_id": message_id, "group_size": len(items),
            "payload": json.dumps({k: v for k, v in item.payload.items() if k != "notification_id"}, sort_keys=True, default=str),
            "queued_at": item.created_at, "sent_at": sent_at, "attempts": item.attempts + 1,
        }
        for item in items
    ]
    ids = [item.id for item in items]
    alerted = sorted({item.alert_id for item in items if item.kind != "resolved"})
    with warehouse.begin() as connection:
        connection.execute(_in("DELETE FROM alert_notification_log WHERE id IN :ids"), {"ids": ids})  # a re-send after a crash
        connection.execute(
            sa.text(
                "INSERT INTO alert_notification_log (id, alert_id, rule_name, fingerprint, channel, channel_type, destination, "
                "kind, severity, message_id, group_size, payload, queued_at, sent_at, attempts) VALUES (:id, :alert_id, "
                ":rule_name, :fingerprint, :channel, :channel_type, :destination, :kind, :severity, :message_id, :group_size, "
                ":payload, :queued_at, :sent_at, :attempts)"
            ),
            rows,
        )
        connection.execute(_in("DELETE FROM alert_outbox WHERE id IN :ids"), {"ids": ids})
        if alerted:
            connection.execute(_in("UPDATE alert_instances SET notification_sent = TRUE WHERE id IN :ids"), {"ids": alerted})


def record_failed(
    warehouse: Warehouse, items: Sequence[OutboxItem], error: str, now: dt.datetime, retry_after: float | None
) -> dt.datetime:
    """A failed send: the notifications stay queued, tried again after a backoff (30 s
    doubling to 1 h) or the server's Retry-After, when it sent one."""
    attempts = max(item.attempts for item in items) + 1
    backoff = min(30.0 * 2 ** (attempts - 1), 3600.0)
    delay = retry_after if retry_after is not None else backoff  # a rate limit says when to come back
    next_at = now + dt.timedelta(seconds=delay)
    with warehouse.begin() as connection:
        connection.execute(
            _in(
                "UPDATE alert_outbox SET attempts = attempts + 1, last_attempt_at = :now, next_attempt_at = :next, "
                "last_error = :error WHERE id IN :ids"
            ),
            {"ids": [item.id for item in items], "now": now, "next": next_at, "error": error[:1000]},
        )
    return next_at


def add_silence(warehouse: Warehouse, rule: str, starts: dt.datetime, ends: dt.datetime, reason: str, created_by: str) -> str:
    silence_id = new_id()[:12]
    with warehouse.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO alert_silences (id, rule_name, starts_at, ends_at, reason, created_by, created_at) "
                "VALUES (:id, :rule, :starts, :ends, :reason, :by, :starts)"
            ),
            {"id": silence_id, "rule": rule, "starts": starts, "ends": ends, "reason": reason, "by": created_by},
        )
    return silence_id


def expire_silences(warehouse: Warehouse, rule: str, now: dt.datetime) -> int:
    with warehouse.begin() as connection:
        result = connection.execute(
            sa.text("UPDATE alert_silences SET ends_at = :now WHERE rule_name = :rule AND ends_at > :now AND starts_at <= :now"),
            {"rule": rule, "now": now},
        )
        return int(result.rowcount or 0)
