"""The dbt models as Dagster assets, in two `@dbt_assets` definitions.

- `rollup_models`: the incremental models (stg_events and the rollups), daily-partitioned
  like the Python KPI assets, one dbt invocation per run (`BackfillPolicy.single_run()`: a
  backfill of a range is one `dbt build` over the whole range, which DuckDB's single writer
  needs). The run's partition window goes to dbt as the environment variables `DBT_MIN_DATE`
  and `DBT_MAX_DATE` (`--vars` would make dbt parse the whole project again: see
  project.py) and each model deletes and re-inserts that window (weekly models: widened to
  whole weeks).
- `rollup_views`: the views (kpi_metrics_all, stg_products), not partitioned; a run
  (re)creates them and runs their tests.

`dbt build` runs each model's tests right after it; they arrive as asset check results.
"""


import datetime as dt
import shutil
from collections.abc import Iterator
from typing import Any

from dagster import AssetExecutionContext, BackfillPolicy
from dagster_dbt import dbt_assets

from kpi_pipelines.partition_checks import spread_over_days
from kpi_pipelines.partitions import daily_partitions
from kpi_pipelines.retries import TRANSIENT_RETRY_POLICY, retry_only_transient
from kpi_pipelines.rollups.project import dbt_project, prepare_manifest
from kpi_pipelines.rollups.resources import RollupsDbtResource, dbt_env
from kpi_pipelines.rollups.translator import RollupsTranslator
from kpi_pipelines.settings import setting

INCREMENTAL_MODELS = "config.materialized:incremental"
VIEW_MODELS = "config.materialized:view"


def window_vars(start: "dt.date", end: "dt.date") -> dict[str, str]:
    """The dbt vars of a partition window: UTC days, `max_date` excluded."""
    return {"min_date": start.strftime("%Y-%m-%d"), "max_date": end.strftime("%Y-%m-%d")}


def window_env(start: "dt.date", end: "dt.date") -> dict[str, str]:
    """The same window as the environment variables dbt_project/macros/window.sql reads when
    no vars are given."""
    return {f"DBT_{name.upper()}": value for name, value in window_vars(start, end).items()}


def _prepare() -> None:
    # A fresh clone has no manifest: parse (with the configured warehouse's target, so the
    # assets' kinds say duckdb or postgres). Never fails the load for a bad warehouse URL:
    # the defaults of profiles.yml parse too.
    try:
        env = dbt_env(setting("KPI_WAREHOUSE_URL"), setting("KPI_WAREHOUSE_SCHEMA") or None)
    except Exception:  # noqa: BLE001 - any bad URL: parse with the profile's defaults
        env = {}
    prepare_manifest(dbt_project, env)


_prepare()
translator = RollupsTranslator()


def _run(
    context: AssetExecutionContext, dbt: RollupsDbtResource, args: list[str], extra_env: dict[str, str] | None = None
) -> Iterator[Any]:
    invocation = dbt.cli(args, context=context, extra_env=extra_env)
    with retry_only_transient():  # a DuckDB file another process holds: retried; a failing test: not
        yield from invocation.stream()
    # each invocation writes its own target directory (manifest, run results, logs); keep a
    # failed one for inspection, drop a successful one so they do not pile up
    if invocation.is_successful():
        dbt.keep_parse_state(invocation)  # the next dbt steps on this warehouse start from it
        shutil.rmtree(invocation.target_path, ignore_errors=True)


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    select=INCREMENTAL_MODELS,
    name="rollup_models",
    partitions_def=daily_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    dagster_dbt_translator=translator,
    retry_policy=TRANSIENT_RETRY_POLICY,
)
def rollup_models(context: AssetExecutionContext, dbt: RollupsDbtResource) -> Iterator[Any]:
    window = context.partition_time_window
    env = window_env(window.start, window.end)
    context.log.info(f"dbt build for [{env['DBT_MIN_DATE']}, {env['DBT_MAX_DATE']})")
    # dbt tests check the whole window: each day gets their results (not "Skipped")
    yield from spread_over_days(context, _run(context, dbt, ["build"], env))


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    select=VIEW_MODELS,
    name="rollup_views",
    dagster_dbt_translator=translator,
    retry_policy=TRANSIENT_RETRY_POLICY,
)
def rollup_views(context: AssetExecutionContext, dbt: RollupsDbtResource) -> Iterator[Any]:
    yield from _run(context, dbt, ["build"])
