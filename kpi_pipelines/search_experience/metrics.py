"""Search experience KPIs (docs/metrics.md).

One set-based query computes every metric for every UTC day of a range. Each population
(query events, click events, feedback events, identified users) is aggregated per day in
its own CTE; the final SELECT divides them, with NULLIF turning a zero denominator into
NULL, and a NULL value writes no row.
"""

from __future__ import annotations

import datetime as dt

from kpi_pipelines.kpis.registry import names_of
from kpi_pipelines.kpis.store import Metric, metrics_from_columns
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines.warehouse.dialect import Dialect, as_double

# the columns of the query, named as stored (the metric registry keeps the names)
METRIC_NAMES = names_of("search_experience_metrics")

IN_RANGE = "event_date >= CAST(:start AS DATE) AND event_date < CAST(:end AS DATE)"


def _share(numerator: str, denominator: str) -> str:
    """numerator ÷ denominator as a double; NULL when the denominator is 0 or NULL."""
    return f"{as_double(numerator)} / NULLIF({denominator}, 0)"


def search_experience_sql(sql: Dialect) -> str:
    """Per day of [:start, :end) with any stored event: one column per metric, named as stored."""
    return f"""
    WITH
    query_events AS (
        SELECT event_id, event_date, event_time, session_id,
               metadata->>'query_id' AS query_id,
               {sql.json_array_length("metadata->'result_ids'")} = 0 AS no_results,
               metadata->>'refinement_of' IS NOT NULL AS is_refinement
        FROM raw_events
        WHERE event_type = 'search' AND action = 'query' AND {IN_RANGE}
    ),
    -- every stored click on one of those queries, whatever day the click falls on
    query_clicks AS (
        SELECT metadata->>'query_id' AS query_id, event_time
        FROM raw_events
        WHERE event_type = 'search' AND action = 'click'
          AND metadata->>'query_id' IN (SELECT query_id FROM query_events)
    ),
    -- the ids of those queries that a stored query event refines, whatever its day
    refined_queries AS (
        SELECT DISTINCT metadata->>'refinement_of' AS query_id
        FROM raw_events
        WHERE event_type = 'search' AND action = 'query'
          AND metadata->>'refinement_of' IN (SELECT query_id FROM query_events)
    ),
    -- clicked query events, with their first click at or after the query
    clicked_queries AS (
        SELECT q.event_id, min(c.event_time) FILTER (WHERE c.event_time >= q.event_time) AS first_click_time
        FROM query_events q JOIN query_clicks c USING (query_id)
        GROUP BY q.event_id
    ),
    query_outcomes AS (
        SELECT q.event_date, q.session_id, q.no_results, q.is_refinement,
               c.event_id IS NOT NULL AS clicked,
               r.query_id IS NOT NULL AS refined,
               {as_double("extract(epoch FROM (c.first_click_time - q.event_time))")} * 1000 AS time_to_first_click_ms
        FROM query_events q
        LEFT JOIN clicked_queries c USING (event_id)
        LEFT JOIN refined_queries r USING (query_id)
    ),
    query_days AS (
        SELECT event_date,
               count(*) AS queries,
               count(*) FILTER (WHERE clicked) AS clicked_queries,
               count(*) FILTER (WHERE no_results) AS no_results_queries,
               count(*) FILTER (WHERE clicked AND NOT refined) AS successful_queries,
               count(*) FILTER (WHERE is_refinement) AS refinements,
               count(DISTINCT session_id) AS search_sessions,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY time_to_first_click_ms) AS time_to_first_click_p50,
               percentile_cont(0.9) WITHIN GROUP (ORDER BY time_to_first_click_ms) AS time_to_first_click_p90
        FROM query_outcomes
        GROUP BY event_date
    ),
    click_days AS (
        SELECT event_date, avg({as_double("metadata->>'position'")}) AS mean_click_position
        FROM raw_events
        WHERE event_type = 'search' AND action = 'click' AND {IN_RANGE}
        GROUP BY event_date
    ),
    feedback_days AS (
        SELECT event_date,
               count(*) AS feedbacks,
               count(*) FILTER (WHERE {as_double("metadata->>'satisfaction'")} >= 4) AS satisfied_feedbacks,
               avg({as_double("metadata->>'satisfaction'")}) AS mean_satisfaction
        FROM raw_events
        WHERE event_type = 'search' AND action = 'feedback' AND {IN_RANGE}
        GROUP BY event_date
    ),
    -- every day with stored events; engagement counts only events carrying a user_key
    activity_days AS (
        SELECT event_date,
               count(DISTINCT user_key) AS active_users,
               count(DISTINCT session_id) FILTER (WHERE user_key IS NOT NULL) AS identified_sessions,
               count(*) FILTER (WHERE user_key IS NOT NULL AND event_type = 'search' AND action = 'query')
                   AS identified_searches
        FROM raw_events
        WHERE {IN_RANGE}
        GROUP BY event_date
    )
    SELECT a.event_date AS day,
           coalesce(q.queries, 0) AS "search.queries",
           {_share("q.clicked_queries", "q.queries")} AS "search.click_through_rate",
           {_share("q.no_results_queries", "q.queries")} AS "search.no_results_rate",
           {_share("q.successful_queries", "q.queries")} AS "search.success_rate",
           c.mean_click_position AS "search.average_click_position",
           q.time_to_first_click_p50 AS "search.time_to_first_click_ms.p50",
           q.time_to_first_click_p90 AS "search.time_to_first_click_ms.p90",
           {_share("q.refinements", "q.search_sessions")} AS "search.refinements_per_session",
           f.mean_satisfaction AS "search.satisfaction",
           {_share("f.satisfied_feedbacks", "f.feedbacks")} AS "search.satisfaction.csat",
           {_share("a.identified_searches", "a.active_users")} AS "search.searches_per_user",
           {_share("a.identified_sessions", "a.active_users")} AS "search.sessions_per_user"
    FROM activity_days a
    LEFT JOIN query_days q USING (event_date)
    LEFT JOIN click_days c USING (event_date)
    LEFT JOIN feedback_days f USING (event_date)
    ORDER BY a.event_date
    """


def compute_search_experience_metrics(warehouse: Warehouse, start: dt.date, end: dt.date) -> list[Metric]:
    """The search experience metrics of every UTC day in [start, end) with stored events."""
    rows = warehouse.query(search_experience_sql(warehouse.sql), {"start": start, "end": end})
    return metrics_from_columns(rows, METRIC_NAMES)
