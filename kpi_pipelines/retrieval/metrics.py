"""Retrieval quality over judged queries, trec_eval conventions (docs/metrics.md).

One set-based query computes every metric for every UTC day of a range: each judged query
event's ranked results are unnested with their ranks and joined to the judgments, each
metric is computed per event, then averaged per day.
"""

from __future__ import annotations

import datetime as dt

from kpi_pipelines.kpis.registry import names_of
from kpi_pipelines.kpis.store import Metric, metrics_from_columns
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines.warehouse.dialect import Dialect, as_double
from kpi_pipelines.warehouse.expressions import normalized_query_sql

# the columns of the query, named as stored (the metric registry keeps the names)
METRIC_NAMES = names_of("retrieval_metrics")


def _discounted(gain: str, rank: str) -> str:
    """gain ÷ log2(rank + 1), the DCG term of a 1-based rank."""
    return f"{as_double(gain)} / (ln({as_double(f'{rank} + 1')}) / ln({as_double('2')}))"


def retrieval_sql(sql: Dialect) -> str:
    """Per day of [:start, :end): the judged query events and the mean of each metric, one
    column per metric named as stored. Days without judged query events give no row."""
    results = sql.unnest_text_array("q.result_ids", "r", "product_id", "result_rank")
    return f"""
    WITH
    -- per normalized query text: relevant judged products and the ideal DCG@10
    query_judgments AS (
        SELECT query_norm,
               count(*) FILTER (WHERE relevance >= 1) AS relevant_judged,
               coalesce(sum({_discounted('relevance', 'grade_rank')}) FILTER (WHERE grade_rank <= 10), 0)
                   AS ideal_dcg_at_10
        FROM (
            SELECT query_norm, relevance,
                   row_number() OVER (PARTITION BY query_norm ORDER BY relevance DESC) AS grade_rank
            FROM relevance_judgments
        ) graded
        GROUP BY query_norm
    ),
    query_events AS (
        SELECT event_id, event_date, metadata->'result_ids' AS result_ids,
               {normalized_query_sql("metadata->>'query'")} AS query_norm
        FROM raw_events
        WHERE event_type = 'search' AND action = 'query'
          AND event_date >= CAST(:start AS DATE) AND event_date < CAST(:end AS DATE)
    ),
    -- search query events of the day whose normalized text is judged
    judged_query_events AS (
        SELECT q.event_id, q.event_date, q.query_norm, q.result_ids, j.relevant_judged, j.ideal_dcg_at_10
        FROM query_events q JOIN query_judgments j USING (query_norm)
    ),
    -- every rank of every result list with the grade of its product: 0 when unjudged, and 0
    -- for a product repeated further down the list (only its best rank counts)
    ranked_results AS (
        SELECT q.event_id, r.result_rank,
               CASE WHEN row_number() OVER (PARTITION BY q.event_id, r.product_id ORDER BY r.result_rank) = 1
                    THEN coalesce(j.relevance, 0) ELSE 0 END AS relevance
        FROM judged_query_events q
        CROSS JOIN LATERAL {results}
        LEFT JOIN relevance_judgments j ON j.query_norm = q.query_norm AND j.product_id = r.product_id
    ),
    result_counts AS (
        SELECT event_id,
               count(*) FILTER (WHERE result_rank <= 5 AND relevance >= 1) AS relevant_in_top_5,
               count(*) FILTER (WHERE result_rank <= 10 AND relevance >= 1) AS relevant_in_top_10,
               min(result_rank) FILTER (WHERE relevance >= 1) AS first_relevant_rank,
               sum({_discounted('relevance', 'result_rank')}) FILTER (WHERE result_rank <= 10) AS dcg_at_10
        FROM ranked_results
        GROUP BY event_id
    ),
    -- one row per judged query event; an empty result list scores 0 everywhere
    per_event AS (
        SELECT q.event_date,
               {as_double('coalesce(c.relevant_in_top_5, 0)')} / 5 AS precision_at_5,
               {as_double('coalesce(c.relevant_in_top_10, 0)')} / 10 AS precision_at_10,
               CASE WHEN q.relevant_judged > 0
                    THEN {as_double('coalesce(c.relevant_in_top_5, 0)')} / q.relevant_judged ELSE 0 END AS recall_at_5,
               CASE WHEN q.relevant_judged > 0
                    THEN {as_double('coalesce(c.relevant_in_top_10, 0)')} / q.relevant_judged ELSE 0 END AS recall_at_10,
               coalesce(1 / {as_double('c.first_relevant_rank')}, 0) AS reciprocal_rank,
               CASE WHEN q.ideal_dcg_at_10 > 0
                    THEN coalesce(c.dcg_at_10, 0) / q.ideal_dcg_at_10 ELSE 0 END AS ndcg_at_10
        FROM judged_query_events q
        LEFT JOIN result_counts c USING (event_id)
    )
    SELECT event_date AS day,
           count(*) AS "retrieval.judged_queries",
           avg(precision_at_5) AS "retrieval.precision_at_5",
           avg(precision_at_10) AS "retrieval.precision_at_10",
           avg(recall_at_5) AS "retrieval.recall_at_5",
           avg(recall_at_10) AS "retrieval.recall_at_10",
           avg(reciprocal_rank) AS "retrieval.mrr",
           avg(ndcg_at_10) AS "retrieval.ndcg_at_10"
    FROM per_event
    GROUP BY event_date
    ORDER BY event_date
    """


def compute_retrieval_metrics(warehouse: Warehouse, start: dt.date, end: dt.date) -> list[Metric]:
    """The retrieval metrics of every UTC day in [start, end) that has judged query events."""
    rows = warehouse.query(retrieval_sql(warehouse.sql), {"start": start, "end": end})
    return metrics_from_columns(rows, METRIC_NAMES)
