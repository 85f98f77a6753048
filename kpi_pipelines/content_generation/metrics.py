"""Content generation (docs/metrics.md): review outcomes, generation
errors and latency, time to review, overall and by model.

One set-based query aggregates the generation and review events of every UTC day in the
window, by day and by (day, model); `content_metrics` turns each aggregate row into ratios
and percentiles, leaving out those whose denominator is zero.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from kpi_pipelines.kpis.store import Metric, ratio
from kpi_pipelines.warehouse import Warehouse

DECISION_METRICS = {
    "approved": "content.approval_rate",
    "edited": "content.edit_rate",
    "rejected": "content.rejection_rate",
}

CONTENT_SQL = """
WITH
day_generations AS (
    SELECT event_date AS day, metadata->>'model' AS model, metadata->>'status' AS status,
           CAST(metadata->>'latency_ms' AS DOUBLE PRECISION) AS latency_ms
    FROM raw_events
    WHERE event_type = 'generation'
      AND event_date >= CAST(:start AS DATE) AND event_date < CAST(:end AS DATE)
),
day_reviews AS (
    SELECT event_date AS day, event_time, metadata->>'generation_id' AS generation_id,
           metadata->>'decision' AS decision,
           CAST(metadata->>'review_time_ms' AS DOUBLE PRECISION) AS review_time_ms
    FROM raw_events
    WHERE event_type = 'review'
      AND event_date >= CAST(:start AS DATE) AND event_date < CAST(:end AS DATE)
),
reviewed_generations AS (
    -- the generation a review refers to, on any stored day: the earliest successful event
    -- with its generation_id, else the earliest one
    SELECT generation_id, model, event_time
    FROM (
        SELECT metadata->>'generation_id' AS generation_id, metadata->>'model' AS model, event_time,
               row_number() OVER (
                   PARTITION BY metadata->>'generation_id'
                   ORDER BY CASE WHEN metadata->>'status' = 'success' THEN 0 ELSE 1 END, event_time, event_id
               ) AS pick
        FROM raw_events
        WHERE event_type = 'generation'
          AND metadata->>'generation_id' IN (SELECT generation_id FROM day_reviews)
    ) ranked
    WHERE pick = 1
),
review_outcomes AS (
    -- model NULL: the review's generation is not stored (counted in the overall values only)
    SELECT r.day, g.model, r.decision, r.review_time_ms,
           CASE WHEN r.event_time >= g.event_time
                THEN extract(epoch FROM (r.event_time - g.event_time)) * 1000 END AS time_to_review_ms
    FROM day_reviews r LEFT JOIN reviewed_generations g ON g.generation_id = r.generation_id
),
content_events AS (
    SELECT day, model, 'generation' AS kind, status, latency_ms,
           CAST(NULL AS VARCHAR) AS decision, CAST(NULL AS DOUBLE PRECISION) AS review_time_ms,
           CAST(NULL AS DOUBLE PRECISION) AS time_to_review_ms
    FROM day_generations
    UNION ALL
    SELECT day, model, 'review', NULL, NULL, decision, review_time_ms, CAST(time_to_review_ms AS DOUBLE PRECISION)
    FROM review_outcomes
)
SELECT day, model,
       count(*) FILTER (WHERE kind = 'generation') AS generations,
       count(*) FILTER (WHERE kind = 'generation' AND status = 'error') AS generation_errors,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY CASE WHEN status = 'success' THEN latency_ms END) AS latency_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY CASE WHEN status = 'success' THEN latency_ms END) AS latency_p95,
       count(*) FILTER (WHERE kind = 'review') AS reviews,
       count(*) FILTER (WHERE decision = 'approved') AS approved,
       count(*) FILTER (WHERE decision = 'edited') AS edited,
       count(*) FILTER (WHERE decision = 'rejected') AS rejected,
       avg(review_time_ms) AS review_time_mean,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY time_to_review_ms) AS time_to_review_p50
FROM content_events
GROUP BY GROUPING SETS ((day), (day, model))
HAVING GROUPING(model) = 1 OR model IS NOT NULL
"""


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def content_metrics(row: Mapping[str, Any]) -> list[Metric]:
    """The metrics of one aggregate row (a day, overall when `model` is None, else one model)."""
    reviews = int(row["reviews"])
    generations = int(row["generations"])
    values: dict[str, float | None] = {
        name: ratio(int(row[decision]), reviews) for decision, name in DECISION_METRICS.items()
    }
    values.update(
        {
            "content.generation_error_rate": ratio(int(row["generation_errors"]), generations),
            "content.generation_latency_ms.p50": _number(row["latency_p50"]),
            "content.generation_latency_ms.p95": _number(row["latency_p95"]),
            "content.time_to_review_ms.p50": _number(row["time_to_review_p50"]),
            "content.review_time_ms.mean": _number(row["review_time_mean"]),
            "content.generations": float(generations) if generations else None,
        }
    )
    day = row["day"]
    dimensions = {} if row["model"] is None else {"model": str(row["model"])}
    return [Metric(name, value, day, dimensions) for name, value in values.items() if value is not None]


def compute_content_generation(warehouse: Warehouse, start: dt.date, end: dt.date) -> list[Metric]:
    """Every content-generation metric for the UTC days in [start, end)."""
    rows = warehouse.query(CONTENT_SQL, {"start": start.isoformat(), "end": end.isoformat()})
    return [metric for row in rows for metric in content_metrics(row._mapping)]
