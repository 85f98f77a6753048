"""`experiment_results`: cumulative A/B test results per day, experiment and variant.

A session belongs to the variant its events carry in `metadata.experiment`; a session seen
in two variants of one experiment is excluded from it and counted. For each day D of the
experiment's run (its first to its last day with an assigned event), sessions assigned
through D are compared on conversion (an order through D) and revenue per session (order
revenue through D, 0 without orders). The warehouse aggregates sums, sums of squares and
counts per variant; the statistics (`stats.py`) run on those totals only.
"""

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import asdict, fields
from typing import Iterator, Mapping

import sqlalchemy as sa
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from kpi_pipelines.experiments.stats import VariantResult, VariantTotals, analyze_experiment
from kpi_pipelines.kpis.checks import CHECK_NAME, kpi_rows_checks_by_day
from kpi_pipelines.kpis.store import Metric, replace_daily_metrics
from kpi_pipelines.partition_checks import DailyAssetEvent, day_check_events
from kpi_pipelines.partitions import daily_partitions, days_in
from kpi_pipelines.retries import TRANSIENT_RETRY_POLICY, retry_only_transient
from kpi_pipelines.warehouse import Warehouse, WarehouseResource

VARIANT_TOTALS_SQL = """
WITH
range_days AS (
    SELECT CAST(g.day AS DATE) AS day
    FROM generate_series(CAST(:start AS TIMESTAMP), CAST(:last AS TIMESTAMP), INTERVAL '1 day') AS g(day)
),
assignments AS (  -- each variant a session was seen in, with its first and last day there
    SELECT metadata->'experiment'->>'id' AS experiment_id,
           metadata->'experiment'->>'variant' AS variant,
           session_id, min(event_date) AS first_day, max(event_date) AS last_day
    FROM raw_events
    WHERE (metadata->'experiment') IS NOT NULL
    GROUP BY 1, 2, 3
),
experiment_days AS (  -- the days of the range inside each experiment's run
    SELECT r.experiment_id, d.day
    FROM (SELECT experiment_id, min(first_day) AS first_day, max(last_day) AS last_day
          FROM assignments GROUP BY experiment_id) r
    JOIN range_days d ON d.day BETWEEN r.first_day AND r.last_day
),
sessions_through_day AS (  -- each session's variants seen through day D
    SELECT d.day, a.experiment_id, a.session_id, min(a.variant) AS variant, count(*) AS variants
    FROM experiment_days d
    JOIN assignments a ON a.experiment_id = d.experiment_id AND a.first_day <= d.day
    GROUP BY d.day, a.experiment_id, a.session_id
),
session_orders AS (  -- order revenue of the assigned sessions by day
    SELECT session_id, event_date, sum(CAST(metadata->>'revenue' AS DOUBLE PRECISION)) AS revenue
    FROM raw_events
    WHERE event_type = 'business' AND action = 'order' AND event_date <= :last
      AND session_id IN (SELECT session_id FROM assignments)
    GROUP BY session_id, event_date
),
session_outcomes AS (  -- sessions in exactly one variant, with their orders through day D
    SELECT s.day, s.experiment_id, s.variant, s.session_id,
           count(o.session_id) > 0 AS converted, coalesce(sum(o.revenue), 0) AS revenue
    FROM sessions_through_day s
    LEFT JOIN session_orders o ON o.session_id = s.session_id AND o.event_date <= s.day
    WHERE s.variants = 1
    GROUP BY s.day, s.experiment_id, s.variant, s.session_id
),
variant_totals AS (
    SELECT day, experiment_id, variant, count(*) AS sessions,
           count(*) FILTER (WHERE converted) AS converting_sessions,
           sum(revenue) AS revenue, sum(revenue * revenue) AS revenue_sum_squares
    FROM session_outcomes
    GROUP BY day, experiment_id, variant
),
excluded_sessions AS (  -- sessions seen in two or more variants
    SELECT day, experiment_id, count(*) AS excluded_sessions
    FROM sessions_through_day
    WHERE variants > 1
    GROUP BY day, experiment_id
)
SELECT v.day, v.experiment_id, v.variant, v.sessions, v.converting_sessions, v.revenue,
       v.revenue_sum_squares, coalesce(x.excluded_sessions, 0) AS excluded_sessions
FROM variant_totals v
LEFT JOIN excluded_sessions x ON x.day = v.day AND x.experiment_id = v.experiment_id
ORDER BY v.day, v.experiment_id, v.variant
"""

RESULT_COLUMNS = [field.name for field in fields(VariantResult)] + ["computed_at"]

VARIANT_METRICS = {  # kpi_metrics name -> VariantResult field, dimensions {experiment, variant}
    "experiment.sessions": "sessions",
    "experiment.conversion_rate": "conversion_rate",
    "experiment.revenue_per_session": "revenue_per_session",
    "experiment.conversion_lift": "conversion_lift",
    "experiment.p_value_conversion": "p_value_conversion",
    "experiment.revenue_lift": "revenue_lift",
    "experiment.p_value_revenue": "p_value_revenue",
}
EXPERIMENT_METRICS = {  # kpi_metrics name -> VariantResult field, dimensions {experiment}
    "experiment.srm_p_value": "srm_p_value",
    "experiment.excluded_sessions": "excluded_sessions",
}


def variant_totals(warehouse: Warehouse, start: dt.date, end: dt.date) -> list[VariantTotals]:
    """Cumulative totals per day in [start, end), experiment and variant, in one query."""
    rows = warehouse.query(VARIANT_TOTALS_SQL, {"start": start, "last": end - dt.timedelta(days=1)})
    return [
        VariantTotals(
            day=row.day,
            experiment_id=row.experiment_id,
            variant=row.variant,
            sessions=int(row.sessions),
            converting_sessions=int(row.converting_sessions),
            revenue=float(row.revenue),
            revenue_sum_squares=float(row.revenue_sum_squares),
            excluded_sessions=int(row.excluded_sessions),
        )
        for row in rows
    ]


def experiment_results(
    warehouse: Warehouse, start: dt.date, end: dt.date, weights: Mapping[str, Mapping[str, float]] | None = None
) -> list[VariantResult]:
    """Every result row for the days in [start, end); `weights` maps an experiment to its
    expected traffic split (experiments not listed expect an equal split)."""
    groups: dict[tuple[dt.date, str], list[VariantTotals]] = defaultdict(list)
    for totals in variant_totals(warehouse, start, end):
        groups[(totals.day, totals.experiment_id)].append(totals)
    weights = weights or {}
    return [
        result
        for (_, experiment_id), group in groups.items()
        for result in analyze_experiment(group, weights.get(experiment_id))
    ]


def result_metrics(results: list[VariantResult]) -> list[Metric]:
    """The headline numbers of the results, for `kpi_metrics` (undefined values: no row)."""
    metrics = []
    for result in results:
        variant_dims = {"experiment": result.experiment_id, "variant": result.variant}
        for name, field in VARIANT_METRICS.items():
            if (value := getattr(result, field)) is not None:
                metrics.append(Metric(name, float(value), result.day, variant_dims))
        if result.is_control:
            for name, field in EXPERIMENT_METRICS.items():
                if (value := getattr(result, field)) is not None:
                    metrics.append(Metric(name, float(value), result.day, {"experiment": result.experiment_id}))
    return metrics


def replace_experiment_results(warehouse: Warehouse, start: dt.date, end: dt.date, results: list[VariantResult]) -> int:
    """Replace the `experiment_results` rows of the days in [start, end) in one transaction."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = [{**asdict(result), "computed_at": now} for result in results]
    with warehouse.begin() as connection:
        connection.execute(
            sa.text("DELETE FROM experiment_results WHERE day >= :start AND day < :end"), {"start": start, "end": end}
        )
        if rows:
            connection.execute(
                sa.text(
                    f"INSERT INTO experiment_results ({', '.join(RESULT_COLUMNS)}) "
                    f"VALUES ({', '.join(':' + column for column in RESULT_COLUMNS)})"
                ),
                rows,
            )
    return len(rows)


class ExperimentResultsConfig(Config):
    traffic_weights: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="expected split per experiment, e.g. {exp: {control: 0.5, b: 0.5}}; unlisted: equal split",
    )


@asset(
    name="experiment_results",
    group_name="experiments",
    partitions_def=daily_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    deps=[AssetKey("raw_events")],
    kinds={"python", "sql"},
    retry_policy=TRANSIENT_RETRY_POLICY,
    description=(
        "Cumulative A/B test results per day, experiment and variant: conversion with lift, CI and "
        "pooled z-test, revenue per session with Welch's t-test, sample-ratio mismatch "
        "(docs/metrics.md). Writes `experiment_results` and headline rows in `kpi_metrics`."
    ),
    check_specs=[
        AssetCheckSpec(
            CHECK_NAME,
            asset="experiment_results",
            blocking=True,
            description="GX on the kpi_metrics rows written: proportions in [0, 1], one row per metric, dimensions and day.",
        )
    ],
)
def experiment_results_asset(
    context: AssetExecutionContext, config: ExperimentResultsConfig, warehouse: WarehouseResource
) -> Iterator[DailyAssetEvent]:
    window = context.partition_time_window
    start, end = window.start.date(), window.end.date()
    wh = warehouse.get_warehouse()
    with retry_only_transient():
        results = experiment_results(wh, start, end, config.traffic_weights)
        replace_experiment_results(wh, start, end, results)
        metrics = result_metrics(results)
        replace_daily_metrics(wh, "experiment_results", start, end, metrics)
    metric_rows = Counter(metric.day for metric in metrics)
    results_by_day: dict[dt.date, list[VariantResult]] = defaultdict(list)
    for result in results:
        results_by_day[result.day].append(result)
    for day in days_in(start, end):  # each day's own counts
        day_results = results_by_day[day]
        context.add_asset_metadata(
            {
                "experiments": MetadataValue.int(len({r.experiment_id for r in day_results})),
                "result_rows": MetadataValue.int(len(day_results)),
                "rows_written": MetadataValue.int(metric_rows[day]),
                "srm_flagged": MetadataValue.int(len({r.experiment_id for r in day_results if r.srm_flag})),
            },
            partition_key=day.isoformat(),
        )
    yield MaterializeResult()
    checks = kpi_rows_checks_by_day(wh, "experiment_results", start, end, metric_rows)
    yield from day_check_events(context, {day: [result] for day, result in checks.items()})
