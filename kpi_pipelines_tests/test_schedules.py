"""Schedules evaluated with Dagster's test contexts; the nightly lookback counts late events."""

from __future__ import annotations

import datetime as dt

from dagster import DefaultScheduleStatus, build_schedule_context

from kpi_pipelines.definitions import defs
from kpi_pipelines.schedules import RANGE_END_TAG, RANGE_START_TAG, SchedulingResource, hourly_today, nightly_backfill


def test_schedules_run_by_default_on_the_whole_graph():
    for schedule in (hourly_today, nightly_backfill):
        assert schedule.default_status == DefaultScheduleStatus.RUNNING
        assert schedule.job_name == "daily_assets_job"
        assert schedule.execution_timezone == "UTC"
    assert {s.name for s in defs.schedules} == {"hourly_today", "nightly_backfill"}
    assert nightly_backfill.cron_schedule == "0 2 * * *"


def test_hourly_schedule_refreshes_the_utc_day_of_its_tick():
    # 23:15 at UTC-5 is already 04:15 the next day in UTC
    tick = dt.datetime(2026, 3, 10, 23, 15, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    request = hourly_today(build_schedule_context(scheduled_execution_time=tick))
    assert request.partition_key == "2026-03-11"
    assert request.run_key == "hourly-2026-03-11T04"


def test_nightly_schedule_requests_yesterday_and_the_lookback_as_one_range():
    tick = dt.datetime(2026, 3, 10, 2, 0, tzinfo=dt.timezone.utc)
    context = build_schedule_context(scheduled_execution_time=tick, resources={"scheduling": SchedulingResource()})
    request = nightly_backfill(context)
    assert (request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]) == ("2026-03-07", "2026-03-09")
    assert request.partition_key is None

    wider = build_schedule_context(scheduled_execution_time=tick, resources={"scheduling": SchedulingResource(nightly_lookback_days=6)})
    assert nightly_backfill(wider).tags[RANGE_START_TAG] == "2026-03-03"
    none = build_schedule_context(scheduled_execution_time=tick, resources={"scheduling": SchedulingResource(nightly_lookback_days=0)})
    assert nightly_backfill(none).tags[RANGE_START_TAG] == "2026-03-09"


def test_late_events_are_counted_by_the_nightly_lookback(duckdb_warehouse, write_events, tmp_path):
    """The nightly run recounts a day that got late events. The schedule's run of the whole
    graph is narrowed to the asset that counts the metric checked (issue 13: the whole graph
    twice took most of this test); the range the schedule's tags ask for is what is tested."""
    from dagster import AssetKey, instance_for_test

    from kpi_pipelines.ingestion.loader import EventLoader
    from kpi_pipelines_tests.conftest import SALT, definitions_for, event

    loader = EventLoader(duckdb_warehouse, SALT)
    loader.load_file(write_events([event("q1", timestamp="2026-03-08T10:00:00Z"), event("q2", timestamp="2026-03-08T11:00:00Z"),
                                   event("q3", timestamp="2026-03-10T09:00:00Z")]))
    job = definitions_for(duckdb_warehouse).resolve_job_def("daily_assets_job")
    tick = dt.datetime(2026, 3, 11, 2, 0, tzinfo=dt.timezone.utc)
    request = nightly_backfill(build_schedule_context(scheduled_execution_time=tick, resources={"scheduling": SchedulingResource()}))
    counting = [AssetKey("search_experience_metrics")]  # search.queries

    def queries_on(day: str) -> float:
        return duckdb_warehouse.scalar(
            "SELECT metric_value FROM kpi_metrics WHERE metric_name = 'search.queries' AND dimensions = '{}' "
            "AND CAST(\"timestamp\" AS DATE) = CAST(:day AS DATE)",
            {"day": day},
        )

    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, tags=request.tags, asset_selection=counting).success
        assert (queries_on("2026-03-08"), queries_on("2026-03-10")) == (2, 1)
        # an event for two days ago arrives late; the next nightly run counts it
        loader.load_file(write_events([event("q-late", timestamp="2026-03-08T23:59:00+00:00")]))
        assert job.execute_in_process(instance=instance, tags=request.tags, asset_selection=counting).success
    assert (queries_on("2026-03-08"), queries_on("2026-03-10")) == (3, 1)
