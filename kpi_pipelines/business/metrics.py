"""Business KPIs for a range of UTC days, each family in one set-based query.

Definitions (docs/metrics.md): day D is the UTC day of an event's timestamp
(`raw_events.event_date`); an order is a `business` event with action `order`, counted once
per stored event (event ids are already deduplicated); revenue is `metadata.revenue` summed
as written, whatever the currency. A ratio whose denominator is zero is not written.
"""

from __future__ import annotations

import datetime as dt

from kpi_pipelines.kpis.store import Metric, metrics_from_rows
from kpi_pipelines.warehouse import Warehouse

CLV_WINDOW_DAYS = 30

ORDERS_AND_SESSIONS_SQL = """
WITH
sessions AS (  -- sessions with any event on day D
    SELECT event_date AS day, count(DISTINCT session_id) AS sessions
    FROM raw_events
    WHERE event_date >= :start AND event_date < :end
    GROUP BY event_date
),
orders AS (
    SELECT event_date AS day, session_id,
           CAST(metadata->>'revenue' AS DOUBLE PRECISION) AS revenue,
           upper(trim(metadata->>'currency')) AS currency
    FROM raw_events
    WHERE event_type = 'business' AND action = 'order' AND event_date >= :start AND event_date < :end
),
order_totals AS (
    SELECT day, count(*) AS orders, count(DISTINCT session_id) AS sessions_with_order, sum(revenue) AS revenue
    FROM orders
    GROUP BY day
),
daily AS (
    SELECT s.day, s.sessions,
           coalesce(o.sessions_with_order, 0) AS sessions_with_order,
           coalesce(o.orders, 0) AS orders,
           coalesce(o.revenue, 0) AS revenue
    FROM sessions s LEFT JOIN order_totals o ON o.day = s.day
),
revenue_by_currency AS (
    SELECT day, currency, sum(revenue) AS revenue FROM orders GROUP BY day, currency
)
SELECT day, 'business.conversion_rate' AS metric_name,
       CAST(sessions_with_order AS DOUBLE PRECISION) / sessions AS metric_value, NULL AS currency
FROM daily
UNION ALL
SELECT day, 'business.average_order_value', revenue / NULLIF(orders, 0), NULL FROM daily
UNION ALL
SELECT day, 'business.revenue_per_session', revenue / sessions, NULL FROM daily
UNION ALL
SELECT day, 'business.revenue', revenue, NULL FROM daily
UNION ALL
SELECT day, 'business.orders', CAST(orders AS DOUBLE PRECISION), NULL FROM daily
UNION ALL
SELECT day, 'business.revenue', revenue, currency FROM revenue_by_currency
"""

RETENTION_SQL = """
WITH
first_seen AS (  -- each identified user's first day over all stored history
    SELECT user_key, min(event_date) AS first_day
    FROM raw_events
    WHERE user_key IS NOT NULL
    GROUP BY user_key
),
horizons AS (
    SELECT 1 AS n, 'business.retention.day_1' AS metric_name
    UNION ALL
    SELECT 7, 'business.retention.day_7'
),
cohorts AS (  -- keyed by the day D of their day-N return: users first seen on D - N
    SELECT h.metric_name, f.first_day + h.n AS day, f.user_key
    FROM first_seen f CROSS JOIN horizons h
    WHERE f.first_day + h.n >= :start AND f.first_day + h.n < :end
),
active_on_day AS (
    SELECT DISTINCT event_date AS day, user_key
    FROM raw_events
    WHERE user_key IS NOT NULL AND event_date >= :start AND event_date < :end
)
SELECT c.day, c.metric_name,
       CAST(count(a.user_key) AS DOUBLE PRECISION) / count(*) AS metric_value
FROM cohorts c LEFT JOIN active_on_day a ON a.user_key = c.user_key AND a.day = c.day
GROUP BY c.day, c.metric_name
"""

LIFETIME_VALUE_SQL = f"""
WITH
range_days AS (
    SELECT CAST(g.day AS DATE) AS day
    FROM generate_series(CAST(:start AS TIMESTAMP), CAST(:last AS TIMESTAMP), INTERVAL '1 day') AS g(day)
),
paying_user_orders AS (  -- orders of identified users, from the first window's start on
    SELECT event_date, user_key, CAST(metadata->>'revenue' AS DOUBLE PRECISION) AS revenue
    FROM raw_events
    WHERE event_type = 'business' AND action = 'order' AND user_key IS NOT NULL
      AND event_date >= :window_start AND event_date <= :last
),
trailing_window AS (  -- the {CLV_WINDOW_DAYS} days ending on D
    SELECT d.day, sum(o.revenue) AS revenue, count(DISTINCT o.user_key) AS paying_users
    FROM range_days d
    JOIN paying_user_orders o ON o.event_date BETWEEN d.day - {CLV_WINDOW_DAYS - 1} AND d.day
    GROUP BY d.day
)
SELECT day, 'business.customer_lifetime_value_{CLV_WINDOW_DAYS}d' AS metric_name,
       revenue / paying_users AS metric_value
FROM trailing_window
"""


def business_metrics(warehouse: Warehouse, start: dt.date, end: dt.date) -> list[Metric]:
    """Every business KPI for each UTC day in [start, end)."""
    last = end - dt.timedelta(days=1)
    params = {
        "start": start,
        "end": end,
        "last": last,
        "window_start": start - dt.timedelta(days=CLV_WINDOW_DAYS - 1),
    }
    metrics: list[Metric] = []
    for sql, dimension_keys in (
        (ORDERS_AND_SESSIONS_SQL, ("currency",)),
        (RETENTION_SQL, ()),
        (LIFETIME_VALUE_SQL, ()),
    ):
        rows = [row._mapping for row in warehouse.query(sql, params)]
        metrics += metrics_from_rows(rows, dimension_keys=dimension_keys)
    return metrics
