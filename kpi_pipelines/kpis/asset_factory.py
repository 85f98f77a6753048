"""The shape every daily KPI asset shares, written once.

A domain supplies a plain function `compute(warehouse, start, end) -> list[Metric]` (set-based
SQL plus pure functions, testable without Dagster); the asset reads its partition window,
calls it, replaces its rows in `kpi_metrics`, checks them (a blocking GX asset check), and
gives each day's materialization that day's headline values and check results, so the
Dagster UI plots each KPI across partitions, ranged runs included (`partition_checks.py`).
Only a transient warehouse error (lost connection, lock) is retried (`kpi_pipelines.retries`).
"""


import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    FreshnessPolicy,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from kpi_pipelines.kpis.checks import CHECK_NAME, kpi_rows_checks_by_day
from kpi_pipelines.kpis.store import Metric, replace_daily_metrics
from kpi_pipelines.partition_checks import DailyAssetEvent, day_check_events
from kpi_pipelines.partitions import daily_partitions, days_in
from kpi_pipelines.retries import TRANSIENT_RETRY_POLICY, retry_only_transient
from kpi_pipelines.warehouse import Warehouse, WarehouseResource

Compute = Callable[[Warehouse, dt.date, dt.date], list[Metric]]
# The hourly schedule refreshes today and the nightly one yesterday: a KPI not materialized
# for 26 hours means both have been failing; the UI shows it as stale.
KPI_FRESHNESS = FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=26), warn_window=dt.timedelta(hours=3))


@dataclass(frozen=True)
class ExtraCheck:
    """A further check an asset runs after writing, on what it read (non-blocking)."""

    name: str
    description: str
    run: Callable[[Warehouse], AssetCheckResult]


def headline_metadata(metrics: Sequence[Metric]) -> dict[str, MetadataValue]:
    """The overall (dimension-less) value of each metric, plus how many rows were written."""
    out: dict[str, MetadataValue] = {
        metric.name: MetadataValue.float(round(metric.value, 6)) for metric in metrics if not metric.dimensions
    }
    out["rows_written"] = MetadataValue.int(len(metrics))
    return out


def daily_kpi_asset(
    name: str,
    group_name: str,
    compute: Compute,
    description: str,
    deps: Sequence[str] = ("raw_events",),
    extra_checks: Sequence[ExtraCheck] = (),
) -> AssetsDefinition:
    @asset(
        name=name,
        group_name=group_name,
        partitions_def=daily_partitions,
        backfill_policy=BackfillPolicy.single_run(),
        deps=[AssetKey(dep) for dep in deps],
        description=description,
        kinds={"python", "sql"},
        freshness_policy=KPI_FRESHNESS,
        retry_policy=TRANSIENT_RETRY_POLICY,
        check_specs=[
            AssetCheckSpec(
                CHECK_NAME,
                asset=name,
                blocking=True,
                description="GX on the rows written: proportions in [0, 1], one row per metric, dimensions and day.",
            ),
            *(AssetCheckSpec(extra.name, asset=name, description=extra.description) for extra in extra_checks),
        ],
    )
    def _kpi_asset(context: AssetExecutionContext, warehouse: WarehouseResource) -> Iterator[DailyAssetEvent]:
        with retry_only_transient():
            checks_by_day = _compute_and_report(context, warehouse.get_warehouse())
        yield MaterializeResult()
        yield from day_check_events(context, checks_by_day)

    def _compute_and_report(context: AssetExecutionContext, wh: Warehouse) -> dict[str, list[AssetCheckResult]]:
        """Writes the window's metrics, gives each day's materialization that day's values
        and returns each day's check results."""
        window = context.partition_time_window
        start, end = window.start.date(), window.end.date()
        metrics = compute(wh, start, end)
        replace_daily_metrics(wh, name, start, end, metrics)
        by_day: dict[dt.date, list[Metric]] = defaultdict(list)
        for metric in metrics:
            by_day[metric.day].append(metric)
        # Partition-scoped metadata: one materialization per day carrying that day's values,
        # so the UI's Plots draw each KPI across the days of a ranged run too.
        for day in days_in(start, end):
            context.add_asset_metadata(headline_metadata(by_day[day]), partition_key=day.isoformat())
        rows_by_day = {day: len(day_metrics) for day, day_metrics in by_day.items()}
        run_wide = [extra.run(wh) for extra in extra_checks]  # what they check is not per day
        return {
            day: [result, *run_wide]
            for day, result in kpi_rows_checks_by_day(wh, name, start, end, rows_by_day).items()
        }

    return _kpi_asset
