"""The Great Expectations check every KPI asset runs on the rows it wrote to `kpi_metrics`."""

import datetime as dt
from collections.abc import Mapping

import pandas as pd
from dagster import AssetCheckResult, MetadataValue

from kpi_pipelines.expectations import check_result, validate
from kpi_pipelines.kpis.registry import is_bounded
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines.partitions import days_in

CHECK_NAME = "kpi_rows_valid"


def kpi_rows_frame(warehouse: Warehouse, source_asset: str, start: dt.date, end: dt.date) -> pd.DataFrame:
    rows = warehouse.query(
        'SELECT metric_name, metric_value, dimensions, "timestamp", aggregation_level FROM kpi_metrics '
        'WHERE source_asset = :asset AND "timestamp" >= :start AND "timestamp" < :end',
        {"asset": source_asset, "start": dt.datetime.combine(start, dt.time()), "end": dt.datetime.combine(end, dt.time())},
    )
    frame = pd.DataFrame(rows, columns=["metric_name", "metric_value", "dimensions", "timestamp", "aggregation_level"])
    # proportions and p-values only (the registry's bounded kinds); other metrics are NaN
    # here, which GX's range check skips
    frame["proportion_value"] = frame["metric_value"].where(frame["metric_name"].map(is_bounded))
    return frame


def kpi_rows_check(warehouse: Warehouse, source_asset: str, start: dt.date, end: dt.date) -> AssetCheckResult:
    """Proportions within [0, 1]; one row per metric, dimensions and bucket; daily buckets
    inside the partition; no missing values."""
    import great_expectations as gx

    frame = kpi_rows_frame(warehouse, source_asset, start, end)
    last = dt.datetime.combine(end, dt.time()) - dt.timedelta(microseconds=1)
    expectations = [
        *(gx.expectations.ExpectColumnValuesToNotBeNull(column=c) for c in ("metric_name", "metric_value", "dimensions")),
        gx.expectations.ExpectColumnValuesToBeBetween(column="proportion_value", min_value=0, max_value=1),
        gx.expectations.ExpectCompoundColumnsToBeUnique(column_list=["metric_name", "dimensions", "timestamp", "aggregation_level"]),
        gx.expectations.ExpectColumnValuesToBeInSet(column="aggregation_level", value_set=["day"]),
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="timestamp", min_value=dt.datetime.combine(start, dt.time()), max_value=last
        ),
    ]
    return check_result(validate(frame, f"kpi_metrics_{source_asset}", expectations), len(frame), check_name=CHECK_NAME)


def kpi_rows_checks_by_day(
    warehouse: Warehouse, source_asset: str, start: dt.date, end: dt.date, rows_by_day: Mapping[dt.date, int]
) -> dict[str, AssetCheckResult]:
    """`kpi_rows_check` of each day of [start, end), by partition key (`rows_by_day`: the rows
    written per day). A range passes only if each of its days does (every expectation holds
    row by row, or as uniqueness within the range), so a passing range is validated once (a GX
    validation costs about 0.2 s) and the days are validated one by one only when it fails,
    to say which days did."""
    overall = kpi_rows_check(warehouse, source_asset, start, end)
    days = days_in(start, end)
    if len(days) == 1:
        return {start.isoformat(): overall}
    if not overall.passed:
        return {day.isoformat(): kpi_rows_check(warehouse, source_asset, day, day + dt.timedelta(days=1)) for day in days}
    return {
        day.isoformat(): overall.with_metadata({**overall.metadata, "rows_checked": MetadataValue.int(rows_by_day.get(day, 0))})
        for day in days
    }
