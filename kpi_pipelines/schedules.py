"""When the whole graph runs: hourly for today, nightly for yesterday and a lookback.

Both target `daily_assets_job` (every asset and check). The nightly run covers a range of
days as ONE run (the assets' single-run backfill policy), so DuckDB's single writer never
sees two processes, and late events that arrived for those days are counted.
"""

import datetime as dt

from dagster import (
    ConfigurableResource,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    schedule,
)
from pydantic import Field

from kpi_pipelines.jobs import daily_assets_job

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


class SchedulingResource(ConfigurableResource):
    """Configured from `KPI_NIGHTLY_LOOKBACK_DAYS`."""

    nightly_lookback_days: int = Field(default=2, ge=0, le=60, description="days before yesterday the nightly run recomputes")


def _scheduled_moment(context: ScheduleEvaluationContext) -> dt.datetime:
    """The tick's time in UTC (partitions are UTC days)."""
    moment = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


@schedule(
    job=daily_assets_job,
    cron_schedule="15 * * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Every hour at :15, refresh today's (still filling) partition.",
)
def hourly_today(context: ScheduleEvaluationContext) -> RunRequest:
    moment = _scheduled_moment(context)
    return RunRequest(
        run_key=f"hourly-{moment:%Y-%m-%dT%H}", partition_key=moment.date().isoformat(), tags={"kpi/trigger": "hourly"}
    )


@schedule(
    job=daily_assets_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="At 02:00 UTC, recompute yesterday and the lookback days before it in one run (late events).",
)
def nightly_backfill(context: ScheduleEvaluationContext, scheduling: SchedulingResource) -> RunRequest:
    yesterday = _scheduled_moment(context).date() - dt.timedelta(days=1)
    first = yesterday - dt.timedelta(days=scheduling.nightly_lookback_days)
    return RunRequest(
        run_key=f"nightly-{yesterday.isoformat()}",
        tags={
            RANGE_START_TAG: first.isoformat(),
            RANGE_END_TAG: yesterday.isoformat(),
            "kpi/trigger": "nightly",
        },
    )
