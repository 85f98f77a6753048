"""The shape every daily KPI asset shares, written once.

A domain supplies a plain function `compute(warehouse, start, end) -> list[Metric]` (set-based
SQL plus pure functions, testable without Dagster); the asset reads its partition window,
calls it, replaces its rows in `kpi_metrics`, checks them (a blocking GX asset check), and
reports the values as metadata so the Dagster UI plots each KPI across partitions. Only a
transient warehouse error (lost connection, lock) is retried (`kpi_pipelines.retries`).
"""


import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    FreshnessPolicy,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetsDefinition,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from kpi_pipelines.kpis.checks import CHECK_NAME, kpi_rows_check
from kpi_pipelines.kpis.store import Metric, replace_daily_metrics
from kpi_pipelines.partitions import daily_partitions
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
    def _kpi_asset(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
        with retry_only_transient():
            return _compute_and_report(context, warehouse.get_warehouse())

    def _compute_and_report(context: AssetExecutionContext, wh: Warehouse) -> MaterializeResult:
        window = context.partition_time_window
        start, end = window.start.date(), window.end.date()
        metrics = compute(wh, start, end)
        written = replace_daily_metrics(wh, name, start, end, metrics)
        checks = [kpi_rows_check(wh, name, start, end)]
        checks += [extra.run(wh) for extra in extra_checks]
        by_day: dict[dt.date, list[Metric]] = defaultdict(list)
        for metric in metrics:
            by_day[metric.day].append(metric)
        if (end - start).days == 1:
            return MaterializeResult(metadata=headline_metadata(by_day[start]), check_results=checks)
        # A multi-day run (a single-run backfill): each day gets its own values.
        for day in sorted(by_day):
            context.log_event(
                AssetMaterialization(asset_key=context.asset_key, partition=day.isoformat(), metadata=headline_metadata(by_day[day]))
            )
        return MaterializeResult(
            metadata={"days": MetadataValue.int((end - start).days), "rows_written": MetadataValue.int(written)},
            check_results=checks,
        )

    return _kpi_asset
