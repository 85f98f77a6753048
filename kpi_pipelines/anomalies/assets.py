"""`kpi_anomalies`: every daily KPI value of the partition against its trailing window."""

import datetime as dt
from collections import Counter

import sqlalchemy as sa
from dagster import AssetExecutionContext, AssetKey, BackfillPolicy, MaterializeResult, MetadataValue, asset

from kpi_pipelines.anomalies.detection import SENSITIVITY, TRAINING_DAYS, Anomaly, SeriesPoint, classify
from kpi_pipelines.kpis import KPI_METRICS_PRODUCERS
from kpi_pipelines.partitions import daily_partitions, days_in
from kpi_pipelines.retries import TRANSIENT_RETRY_POLICY, retry_only_transient
from kpi_pipelines.warehouse import Warehouse, WarehouseResource


TRAINING_SQL = f"""
WITH daily AS (
    SELECT metric_name, dimensions, "timestamp" AS day, metric_value
    FROM kpi_metrics
    WHERE aggregation_level = 'day'
      AND "timestamp" >= CAST(:start AS TIMESTAMP) - INTERVAL '{TRAINING_DAYS} days'
      AND "timestamp" < CAST(:end AS TIMESTAMP)
)
SELECT target.metric_name, target.dimensions, target.day, target.metric_value,
       count(history.metric_value) AS training_points,
       avg(history.metric_value) AS training_mean,
       stddev_samp(history.metric_value) AS training_stddev
FROM daily AS target
LEFT JOIN daily AS history
  ON history.metric_name = target.metric_name
 AND history.dimensions = target.dimensions
 AND history.day >= target.day - INTERVAL '{TRAINING_DAYS} days'
 AND history.day < target.day
WHERE target.day >= CAST(:start AS TIMESTAMP)
GROUP BY target.metric_name, target.dimensions, target.day, target.metric_value
"""


def training_points(warehouse: Warehouse, start: dt.date, end: dt.date) -> list[SeriesPoint]:
    """Each daily value in [start, end) with its trailing window's count, mean and stddev."""
    rows = warehouse.query(TRAINING_SQL, {"start": dt.datetime.combine(start, dt.time()), "end": dt.datetime.combine(end, dt.time())})
    return [
        SeriesPoint(name, dims, day, float(value), int(n), None if mean is None else float(mean), None if sd is None else float(sd))
        for name, dims, day, value, n, mean, sd in rows
    ]


def replace_anomalies(warehouse: Warehouse, start: dt.date, end: dt.date, anomalies: list[Anomaly]) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = [
        {
            "name": a.point.metric_name,
            "dims": a.point.dimensions,
            "ts": a.point.day,
            "value": a.point.value,
            "n": a.point.training_points,
            "mean": a.point.training_mean,
            "sd": a.point.training_stddev,
            "z": a.z_score,
            "lower": a.lower_bound,
            "upper": a.upper_bound,
            "sensitivity": SENSITIVITY,
            "status": a.status,
            "direction": a.direction,
            "now": now,
        }
        for a in anomalies
    ]
    with warehouse.begin() as connection:
        connection.execute(
            sa.text('DELETE FROM kpi_anomalies WHERE aggregation_level = \'day\' AND "timestamp" >= :start AND "timestamp" < :end'),
            {"start": dt.datetime.combine(start, dt.time()), "end": dt.datetime.combine(end, dt.time())},
        )
        if rows:
            connection.execute(
                sa.text(
                    'INSERT INTO kpi_anomalies (metric_name, dimensions, "timestamp", aggregation_level, metric_value, '
                    "training_points, training_mean, training_stddev, z_score, lower_bound, upper_bound, sensitivity, "
                    "status, direction, detected_at) VALUES (:name, :dims, :ts, 'day', :value, :n, :mean, :sd, :z, "
                    ":lower, :upper, :sensitivity, :status, :direction, :now)"
                ),
                rows,
            )


@asset(
    partitions_def=daily_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    deps=[AssetKey(name) for name in KPI_METRICS_PRODUCERS],
    group_name="anomalies",
    kinds={"python", "sql"},
    retry_policy=TRANSIENT_RETRY_POLICY,
    description=(
        f"Each daily KPI value against the {TRAINING_DAYS} days before it: z-score, expected range "
        f"(mean ± {SENSITIVITY:g} standard deviations), status normal / anomalous / not_enough_data."
    ),
)
def kpi_anomalies(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    window = context.partition_time_window
    start, end = window.start.date(), window.end.date()
    wh = warehouse.get_warehouse()
    with retry_only_transient():
        anomalies = [classify(point) for point in training_points(wh, start, end)]
        replace_anomalies(wh, start, end, anomalies)
    flagged = [a for a in anomalies if a.status == "anomalous"]
    # each day's materialization carries that day's counts, so the UI plots them per day
    checked, anomalous = Counter(a.point.day.date() for a in anomalies), Counter(a.point.day.date() for a in flagged)
    for day in days_in(start, end):
        context.add_asset_metadata(
            {"series_checked": MetadataValue.int(checked[day]), "anomalous": MetadataValue.int(anomalous[day])},
            partition_key=day.isoformat(),
        )
    return MaterializeResult(
        metadata={
            "series_checked": MetadataValue.int(len(anomalies)),
            "anomalous": MetadataValue.int(len(flagged)),
            "not_enough_data": MetadataValue.int(sum(a.status == "not_enough_data" for a in anomalies)),
            "anomalies": MetadataValue.json(
                [
                    {"metric": a.point.metric_name, "dimensions": a.point.dimensions, "day": a.point.day.date().isoformat(),
                     "value": a.point.value, "z": a.z_score, "direction": a.direction}
                    for a in flagged[:50]
                ]
            ),
        }
    )
