"""System performance (docs/metrics.md): request latency percentiles,
server error rate and request counts, overall and by (service, endpoint).

One set-based query aggregates the `system_performance` events of every UTC day in the
window; `performance_metrics` turns each aggregate row into metrics.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from kpi_pipelines.kpis.store import Metric, ratio
from kpi_pipelines.warehouse import Warehouse

PERFORMANCE_SQL = """
WITH
requests AS (
    SELECT event_date AS day, metadata->>'service' AS service, metadata->>'endpoint' AS endpoint,
           CAST(metadata->>'latency_ms' AS DOUBLE PRECISION) AS latency_ms,
           CAST(metadata->>'status_code' AS INTEGER) AS status_code
    FROM raw_events
    WHERE event_type = 'system_performance'
      AND event_date >= CAST(:start AS DATE) AND event_date < CAST(:end AS DATE)
)
SELECT day, service, endpoint,
       count(*) AS requests,
       count(*) FILTER (WHERE status_code >= 500) AS server_errors,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS latency_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS latency_p95,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS latency_p99
FROM requests
GROUP BY GROUPING SETS ((day), (day, service, endpoint))
"""


def performance_metrics(row: Mapping[str, Any]) -> list[Metric]:
    """The metrics of one aggregate row (a day, overall when `endpoint` is None, else one endpoint)."""
    values: dict[str, float | None] = {
        "system.latency_ms.p50": float(row["latency_p50"]),
        "system.latency_ms.p95": float(row["latency_p95"]),
        "system.latency_ms.p99": float(row["latency_p99"]),
        "system.error_rate": ratio(int(row["server_errors"]), int(row["requests"])),
        "system.requests": float(row["requests"]),
    }
    dimensions = {} if row["endpoint"] is None else {"endpoint": str(row["endpoint"]), "service": str(row["service"])}
    return [Metric(name, value, row["day"], dimensions) for name, value in values.items() if value is not None]


def compute_system_performance(warehouse: Warehouse, start: dt.date, end: dt.date) -> list[Metric]:
    """Every system-performance metric for the UTC days in [start, end)."""
    rows = warehouse.query(PERFORMANCE_SQL, {"start": start.isoformat(), "end": end.isoformat()})
    return [metric for row in rows for metric in performance_metrics(row._mapping)]
