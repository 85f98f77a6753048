"""The dbt rollups (docs/rollups.md): hand-computed values on both backends, the incremental
path through Dagster (a partition twice, then a range as one run), DuckDB and PostgreSQL
giving the same rows, dbt tests as asset checks, the asset graph, the manifest prepared on
load, and dbt running inside a run that holds the DuckDB file."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dagster import AssetKey, BackfillPolicy, instance_for_test
from dagster_dbt import DbtProject

from kpi_pipelines import rollups
from kpi_pipelines.ingestion.catalog import load_catalog, load_judgments
from kpi_pipelines.ingestion.loader import EventLoader
from kpi_pipelines.kpis.registry import EVENT_ROLLUP, REGISTRY
from kpi_pipelines.partitions import daily_partitions
from kpi_pipelines.rollups import (
    KPI_METRICS_PRODUCERS,
    dbt_env,
    prepare_manifest,
    rollups_dbt_resource,
    window_vars,
)
from kpi_pipelines.rollups.assets import window_env
from kpi_pipelines.rollups.project import DBT_PROJECT_DIR, manifest_is_stale, partial_parse_path
from kpi_pipelines.rollups.resources import RollupsDbtResource
from kpi_pipelines.synthetic import generate

import kpi_pipelines.warehouse as warehouse_module
from kpi_pipelines.warehouse import Warehouse, release_duckdb_file
from kpi_pipelines_tests.conftest import (
    warehouse_resource,
    SALT,
    definitions_for,
    event,
    load_events,
    postgres_or_skip,
)
from kpi_pipelines_tests.test_api_helpers import start_server  # noqa: F401  (a fixture)

ROLLUP_MODELS = (
    "rollup_events_minute",
    "rollup_events_hour",
    "rollup_events_day",
    "rollup_events_week",
    "rollup_daily_kpis_weekly",
)
DBT_ASSETS = {AssetKey(name) for name in (*ROLLUP_MODELS, "stg_events", "stg_products", "kpi_metrics_all")}
KEY = ("metric_name", "dimensions", "timestamp", "aggregation_level")


# --- helpers ------------------------------------------------------------------------------


def materialize(warehouse: Warehouse, start: dt.date, end: dt.date | None = None):
    """Run daily_assets_job (the whole graph, as `kpi materialize`) for one day or a range
    of days (one run, as a single-run backfill)."""
    job = definitions_for(warehouse).resolve_job_def("daily_assets_job")
    end = end or start
    with instance_for_test() as instance:
        if start == end:
            result = job.execute_in_process(instance=instance, partition_key=start.isoformat(), raise_on_error=False)
        else:
            tags = {"dagster/asset_partition_range_start": start.isoformat(), "dagster/asset_partition_range_end": end.isoformat()}
            result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    failures = [e.event_specific_data.error.message for e in result.all_events if e.is_step_failure]
    assert result.success, failures
    return result


def dbt_build(warehouse: Warehouse, start: dt.date | None, end: dt.date | None, *args: str) -> None:
    """`dbt build` through the resource (no Dagster run) for the days [start, end)."""
    command = ["build", *args]
    if start is not None and end is not None:
        command += ["--vars", json.dumps(window_vars(start, end))]
    invocation = rollups_dbt_resource(warehouse_resource(warehouse)).cli(command, raise_on_error=False)
    invocation.wait()
    assert invocation.is_successful(), invocation.get_error()
    shutil.rmtree(invocation.target_path, ignore_errors=True)


def rows(warehouse: Warehouse, relation: str) -> dict[tuple, float]:
    """{(metric_name, dimensions, timestamp, aggregation_level): value}, asserting each key once."""
    fetched = warehouse.query(f'SELECT metric_name, dimensions, "timestamp", aggregation_level, metric_value FROM {relation}')
    out = {(name, dims, ts, level): float(value) for name, dims, ts, level, value in fetched}
    assert len(out) == len(fetched), f"{relation} has duplicate keys"
    return out


def snapshot(warehouse: Warehouse) -> dict[str, Any]:
    out: dict[str, Any] = {model: rows(warehouse, model) for model in (*ROLLUP_MODELS, "kpi_metrics_all")}
    out["stg_events"] = {
        event_id: (session_key, bool(start), clicked, result_count)
        for event_id, session_key, start, clicked, result_count in warehouse.query(
            "SELECT event_id, session_key, is_session_start, is_clicked, result_count FROM stg_events"
        )
    }
    return out


def assert_same_rows(left: dict[tuple, float], right: dict[tuple, float], what: str) -> None:
    assert left.keys() == right.keys(), f"{what}: keys differ: {sorted(left.keys() ^ right.keys())[:5]}"
    differ = [key for key in left if not math.isclose(left[key], right[key], rel_tol=1e-12, abs_tol=1e-9)]
    assert differ == [], f"{what}: {[(key, left[key], right[key]) for key in differ[:5]]}"


def value(table: dict[tuple, float], name: str, ts: str, level: str, dims: str = "{}") -> float | None:
    return table.get((name, dims, dt.datetime.fromisoformat(ts), level))


# --- a hand-made event set, both backends ---------------------------------------------------


def query(event_id: str, ts: str, session: str, results: list[str], response_time_ms: float) -> dict:
    return event(
        event_id, timestamp=ts, session_id=session, action="query", query_id=event_id, query="red shoes",
        result_ids=results, response_time_ms=response_time_ms,
    )


def click(event_id: str, ts: str, session: str, query_id: str) -> dict:
    return event(event_id, timestamp=ts, session_id=session, action="click", query_id=query_id, product_id="P1", position=1)


def generation(event_id: str, ts: str, status: str, latency_ms: float) -> dict:
    return event(
        event_id, "generation", ts, "s-2", source="system", generation_id=event_id, product_id="P1", model="m1",
        latency_ms=latency_ms, status=status,
    )


def request(event_id: str, ts: str, status_code: int, latency_ms: float) -> dict:
    return event(
        event_id, "system_performance", ts, "s-2", source="system", service="search-api", endpoint="/api/search",
        latency_ms=latency_ms, status_code=status_code,
    )


def order(event_id: str, ts: str, revenue: float) -> dict:
    return event(
        event_id, "business", ts, "s-2", action="order", order_id=event_id, revenue=revenue, currency="USD",
        product_ids=["P1"],
    )


HAND_EVENTS = [
    # Monday 2026-03-09
    query("m1", "2026-03-09T12:00:00Z", "s-3", ["P1"], 70),
    # Tuesday 2026-03-10, hour 10: four queries of session s-1 (gaps under 30 minutes)
    query("q1", "2026-03-10T10:00:05Z", "s-1", ["P1", "P2"], 100),
    click("c1", "2026-03-10T10:00:30Z", "s-1", "q1"),  # q1 clicked in the same minute
    query("q2", "2026-03-10T10:01:00Z", "s-1", [], 200),  # no results
    query("q3", "2026-03-10T10:20:00Z", "s-1", ["P3"], 300),  # clicked the next day (c3)
    query("q4", "2026-03-10T10:40:00Z", "s-1", ["P4"], 400),  # never clicked
    # hour 10, session s-2: generations, requests, orders
    generation("g1", "2026-03-10T10:05:00Z", "success", 1000),
    generation("g2", "2026-03-10T10:06:00Z", "error", 5000),
    request("r1", "2026-03-10T10:07:00Z", 200, 10),
    request("r2", "2026-03-10T10:08:00Z", 503, 20),
    request("r3", "2026-03-10T10:09:00Z", 500, 30),
    request("r4", "2026-03-10T10:10:00Z", 404, 40),
    order("o1", "2026-03-10T10:30:00Z", 10.5),
    order("o2", "2026-03-10T10:31:00Z", 20),
    # hour 11: 35 minutes after q4, so session s-1#2
    query("q5", "2026-03-10T11:15:00Z", "s-1", ["P5"], 50),
    # Wednesday 2026-03-11: the click on q3, in session s-1#3
    click("c3", "2026-03-11T09:00:00Z", "s-1", "q3"),
]


def insert_daily_kpis(warehouse: Warehouse, values: list[tuple[str, str, str, float, str]]) -> None:
    with warehouse.begin() as connection:
        connection.execute(
            sa.text(
                'INSERT INTO kpi_metrics (metric_name, metric_value, dimensions, "timestamp", aggregation_level, '
                "created_at, source_asset) VALUES (:name, :value, :dims, :ts, 'day', :ts, :asset)"
            ),
            [
                {"name": name, "dims": dims, "ts": dt.datetime.fromisoformat(day), "value": v, "asset": asset}
                for name, dims, day, v, asset in values
            ],
        )


@pytest.mark.slow
def test_rollup_values_by_hand_on_both_backends(warehouse, write_events, start_server):
    load_events(warehouse, write_events, HAND_EVENTS)
    insert_daily_kpis(
        warehouse,
        [
            ("test.daily", "{}", "2026-03-09", 1.0, "business_metrics"),
            ("test.daily", "{}", "2026-03-10", 2.0, "business_metrics"),
            ("test.daily", "{}", "2026-03-15", 6.0, "business_metrics"),  # Sunday: same week
            ("test.daily", "{}", "2026-03-16", 100.0, "business_metrics"),  # next week, outside every window
            ("test.daily", '{"model": "m1"}', "2026-03-10", 4.0, "business_metrics"),
            ("search.click_through_rate", "{}", "2026-03-10", 0.9, "search_experience_metrics"),
        ],
    )
    tue, wed = dt.date(2026, 3, 10), dt.date(2026, 3, 11)
    mon = dt.date(2026, 3, 9)
    # the days in any order, Monday twice: the week is rebuilt whole every time
    for start in (tue, mon, wed, mon):
        dbt_build(warehouse, start, start + dt.timedelta(days=1))

    minute, hour = rows(warehouse, "rollup_events_minute"), rows(warehouse, "rollup_events_hour")
    day, week = rows(warehouse, "rollup_events_day"), rows(warehouse, "rollup_events_week")
    weekly_means, everything = rows(warehouse, "rollup_daily_kpis_weekly"), rows(warehouse, "kpi_metrics_all")

    h10, h11 = "2026-03-10T10:00:00", "2026-03-10T11:00:00"
    assert value(hour, "search.queries", h10, "hour") == 4
    assert value(hour, "search.click_through_rate", h10, "hour") == 0.5  # q1 and q3 (clicked the next day)
    assert value(hour, "search.no_results_rate", h10, "hour") == 0.25
    assert value(hour, "search.response_time_ms.p50", h10, "hour") == pytest.approx(250)
    assert value(hour, "search.response_time_ms.p95", h10, "hour") == pytest.approx(385)  # 300 + 0.85 * 100
    assert value(hour, "content.generations", h10, "hour") == 2
    assert value(hour, "content.generation_error_rate", h10, "hour") == 0.5
    assert value(hour, "content.generation_latency_ms.p50", h10, "hour") == 1000  # successful generations only
    assert value(hour, "system.error_rate", h10, "hour") == 0.5  # 503 and 500, not 404
    assert value(hour, "system.latency_ms.p50", h10, "hour") == pytest.approx(25)
    assert value(hour, "business.orders", h10, "hour") == 2
    assert value(hour, "business.revenue", h10, "hour") == pytest.approx(30.5)
    assert value(hour, "sessions.active", h10, "hour") == 2  # s-1#1, s-2#1
    assert value(hour, "sessions.started", h10, "hour") == 2
    assert value(hour, "events.count", h10, "hour") == 13
    assert value(hour, "events.count", h10, "hour", '{"event_type": "search"}') == 5
    assert value(hour, "events.count", h10, "hour", '{"event_type": "system_performance"}') == 4
    assert value(hour, "search.click_through_rate", h11, "hour") == 0.0
    assert value(hour, "sessions.started", h11, "hour") == 1  # s-1#2 after 35 idle minutes

    m0, m5 = "2026-03-10T10:00:00", "2026-03-10T10:05:00"
    assert value(minute, "events.count", m0, "minute") == 2
    assert value(minute, "search.queries", m0, "minute") == 1
    assert value(minute, "search.click_through_rate", m0, "minute") == 1.0
    assert value(minute, "events.count", m5, "minute") == 1
    assert value(minute, "search.queries", m5, "minute") == 0  # a count is written for a bucket with events
    assert value(minute, "search.click_through_rate", m5, "minute") is None  # a rate over 0 queries is not
    assert value(minute, "events.count", "2026-03-10T10:02:00", "minute") is None  # no events, no bucket

    assert value(day, "events.count", "2026-03-10T00:00:00", "day") == 14
    assert value(day, "search.click_through_rate", "2026-03-10T00:00:00", "day") == 0.4
    assert value(day, "sessions.started", "2026-03-11T00:00:00", "day") == 1  # s-1#3

    monday = "2026-03-09T00:00:00"
    assert {key[2] for key in week} == {dt.datetime.fromisoformat(monday)}
    assert value(week, "events.count", monday, "week") == 16  # Monday, Tuesday and Wednesday
    assert value(week, "search.queries", monday, "week") == 6
    assert value(week, "search.click_through_rate", monday, "week") == pytest.approx(2 / 6)
    assert value(week, "sessions.active", monday, "week") == 5  # s-3#1, s-1#1, s-1#2, s-1#3, s-2#1

    assert value(weekly_means, "test.daily", monday, "week") == pytest.approx(3.0)  # mean of 1, 2 and 6
    assert value(weekly_means, "test.daily", monday, "week", '{"model": "m1"}') == 4.0
    assert value(weekly_means, "test.daily", "2026-03-16T00:00:00", "week") is None
    assert value(weekly_means, "search.click_through_rate", monday, "week") == pytest.approx(0.9)

    # the union view: the Python KPI wins at 'day', the pooled event rollup at 'week'
    assert value(everything, "search.click_through_rate", "2026-03-10T00:00:00", "day") == 0.9
    assert value(everything, "search.click_through_rate", monday, "week") == pytest.approx(2 / 6)
    assert value(everything, "test.daily", monday, "week") == pytest.approx(3.0)
    assert value(everything, "search.click_through_rate", h10, "hour") == 0.5
    assert value(everything, "events.count", m0, "minute") == 2
    sources = {
        (level, ts): source
        for level, ts, source in warehouse.query(
            'SELECT aggregation_level, "timestamp", source_asset FROM kpi_metrics_all '
            "WHERE metric_name = 'search.click_through_rate'"
        )
    }
    assert sources[("day", dt.datetime(2026, 3, 10))] == "search_experience_metrics"
    assert sources[("day", dt.datetime(2026, 3, 9))] == "rollup_events_day"  # no Python value that day
    assert sources[("week", dt.datetime(2026, 3, 9))] == "rollup_events_week"
    assert sources[("hour", dt.datetime(2026, 3, 10, 10))] == "rollup_events_hour"

    # the KPI API serves every grain from the same view (on DuckDB from its snapshot, which
    # keeps minute values for the last KPI_API_SNAPSHOT_MINUTE_DAYS days of minute data)
    server = start_server(warehouse, KPI_API_SNAPSHOT_MINUTE_DAYS="2")
    with server.client() as client:

        def served(level: str, start: str, end: str, name: str) -> dict[str, float]:
            response = client.get(
                "/api/kpi/metrics",
                params={"aggregation_level": level, "start": start, "end": end, "name": name, "dimensions": "{}"},
            )
            assert response.status_code == 200, response.text
            assert response.json()["relation"] == "kpi_metrics_all"
            return {row["timestamp"]: row["metric_value"] for row in response.json()["metrics"]}

        hourly = served("hour", "2026-03-10", "2026-03-10", "search.click_through_rate")
        assert hourly == {"2026-03-10T10:00:00Z": 0.5, "2026-03-10T11:00:00Z": 0.0}
        assert served("minute", "2026-03-10", "2026-03-10", "events.count")["2026-03-10T10:00:00Z"] == 2
        assert served("week", "2026-03-09", "2026-03-15", "search.click_through_rate") == {
            "2026-03-09T00:00:00Z": pytest.approx(2 / 6)
        }
        assert served("day", "2026-03-10", "2026-03-10", "search.click_through_rate") == {"2026-03-10T00:00:00Z": 0.9}
        too_old = client.get("/api/kpi/metrics", params={"aggregation_level": "minute", "start": "2026-03-01", "end": "2026-03-11"})
        if warehouse.dialect == "duckdb":  # the newest minute bucket is on 2026-03-11: two days back is 03-10
            assert too_old.status_code == 422 and "start: on DuckDB the API holds minute values from 2026-03-10" in too_old.text
        else:
            assert too_old.status_code == 200 and too_old.json()["count"] > 0

    sessions = dict(warehouse.query("SELECT event_id, session_key FROM stg_events"))
    assert sessions["q1"] == sessions["q4"] == "s-1#1"
    assert sessions["q5"] == "s-1#2" and sessions["c3"] == "s-1#3" and sessions["m1"] == "s-3#1"
    assert warehouse.scalar("SELECT count(*) FROM stg_events") == len(HAND_EVENTS)


@pytest.mark.slow
def test_dbt_tests_catch_duplicates_and_rates_out_of_range_in_the_window(duckdb_warehouse, write_events):
    load_events(duckdb_warehouse, write_events, HAND_EVENTS)
    tue = dt.date(2026, 3, 10)
    dbt_build(duckdb_warehouse, tue, tue + dt.timedelta(days=1))
    with duckdb_warehouse.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO rollup_events_hour SELECT * FROM rollup_events_hour WHERE metric_name = 'search.queries'"
        ))
        connection.execute(sa.text(
            "INSERT INTO rollup_events_hour VALUES ('search.odd_rate', 1.5, '{}', TIMESTAMP '2026-03-10 12:00:00', 'hour'), "
            # a row of another level and a row without dimensions: well_formed finds both
            "('search.queries', 3, '{}', TIMESTAMP '2026-03-10 13:00:00', 'day'), "
            "('search.queries', 3, NULL, TIMESTAMP '2026-03-10 14:00:00', 'hour'), "
            # outside the window: the windowed tests do not read it
            "('search.other_rate', 7, '{}', TIMESTAMP '2026-03-01 12:00:00', 'hour')"
        ))
    duckdb_warehouse.dispose()
    resource = rollups_dbt_resource(warehouse_resource(duckdb_warehouse))
    invocation = resource.cli(
        ["test", "--select", "rollup_events_hour", "--vars", json.dumps(window_vars(tue, tue + dt.timedelta(days=1)))],
        raise_on_error=False,
    )
    invocation.wait()
    run_results = invocation.get_artifact("run_results.json")["results"]
    shutil.rmtree(invocation.target_path, ignore_errors=True)
    failed = {r["unique_id"].split(".")[2]: r["failures"] for r in run_results if r["status"] == "fail"}
    well_formed = "well_formed_rollup_events_hour__hour___metric_name__metric_value__dimensions__timestamp__aggregation_level"
    duplicated_keys = duckdb_warehouse.scalar(
        "SELECT count(*) FROM (SELECT DISTINCT \"timestamp\" FROM rollup_events_hour WHERE metric_name = 'search.queries' "
        "AND dimensions = '{}' AND aggregation_level = 'hour' AND \"timestamp\" >= TIMESTAMP '2026-03-10' "
        "AND \"timestamp\" < TIMESTAMP '2026-03-10 13:00:00') AS copied"
    )
    assert failed == {
        "unique_combination_rollup_events_hour_metric_name__dimensions__timestamp__aggregation_level": duplicated_keys,
        "rates_within_unit_interval_rollup_events_hour_metric_value": 1,
        well_formed: 2,
    }
    invocation = resource.cli(["test", "--select", "rates_within_unit_interval_rollup_events_hour_metric_value"], raise_on_error=False)
    invocation.wait()  # without a window, the whole table: both bad rates
    failures = invocation.get_artifact("run_results.json")["results"][0]["failures"]
    shutil.rmtree(invocation.target_path, ignore_errors=True)
    assert failures == 2


# --- generated traffic through Dagster -----------------------------------------------------

SUNDAY, MONDAY = dt.date(2026, 3, 8), dt.date(2026, 3, 9)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    # two days across a week boundary: Sunday 2026-03-08 and Monday 2026-03-09
    return generate(tmp_path_factory.mktemp("rollup_traffic"), days=2, sessions=150, seed=5, start=SUNDAY)


def load(warehouse: Warehouse, traffic) -> None:
    load_catalog(warehouse, traffic.catalog_path)
    load_judgments(warehouse, traffic.judgments_path)
    EventLoader(warehouse, SALT).load_file(traffic.events_path)


@pytest.fixture(scope="module")
def by_day(tmp_path_factory, traffic) -> Iterator[dict[str, Any]]:
    """DuckDB: Sunday materialized twice, then Monday: the incremental path."""
    warehouse = Warehouse(f"duckdb:///{tmp_path_factory.mktemp('by_day') / 'warehouse.duckdb'}")
    load(warehouse, traffic)
    # a Python asset's pooled connection stays open in this process during the dbt steps
    warehouse.scalar("SELECT count(*) FROM raw_events")
    first = materialize(warehouse, SUNDAY)
    after_first = snapshot(warehouse)
    materialize(warehouse, SUNDAY)
    after_second = snapshot(warehouse)
    materialize(warehouse, MONDAY)
    yield {"warehouse": warehouse, "first_run": first, "after_first": after_first, "after_second": after_second,
           "final": snapshot(warehouse)}
    warehouse.dispose()


@pytest.fixture(scope="module")
def as_range(tmp_path_factory, traffic) -> Iterator[dict[str, Any]]:
    """DuckDB: Sunday and Monday as one run (a single-run backfill)."""
    warehouse = Warehouse(f"duckdb:///{tmp_path_factory.mktemp('as_range') / 'warehouse.duckdb'}")
    load(warehouse, traffic)
    result = materialize(warehouse, SUNDAY, MONDAY)
    yield {"warehouse": warehouse, "run": result, "final": snapshot(warehouse)}
    warehouse.dispose()


@pytest.fixture(scope="module")
def on_postgres(traffic) -> Iterator[dict[str, Any]]:
    url = postgres_or_skip()
    schema = "t_" + uuid.uuid4().hex[:12]
    warehouse = Warehouse(url, schema)
    try:
        load(warehouse, traffic)
        result = materialize(warehouse, SUNDAY, MONDAY)
        yield {"warehouse": warehouse, "run": result, "final": snapshot(warehouse)}
    finally:
        warehouse.dispose()
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


@pytest.mark.slow
def test_materializing_a_partition_again_gives_identical_rows_and_no_duplicates(by_day):
    first, second = by_day["after_first"], by_day["after_second"]
    for model in (*ROLLUP_MODELS, "kpi_metrics_all", "stg_events"):
        assert first[model], f"{model} is empty"
        if model in ("kpi_metrics_all", "rollup_daily_kpis_weekly"):
            # these carry the Python assets' daily values, which may differ in the last bit
            assert_same_rows(second[model], first[model], model)
        else:
            assert second[model] == first[model], model  # exactly; rows() asserted each key once
    sunday = dt.datetime(2026, 3, 8)
    assert {key[2] for key in first["rollup_events_day"]} == {sunday}
    assert {key[2].date() for key in first["rollup_events_minute"]} == {SUNDAY}
    assert {key[2] for key in first["rollup_events_week"]} == {dt.datetime(2026, 3, 2)}  # Sunday's Monday


@pytest.mark.slow
def test_a_range_as_one_run_equals_the_days_one_by_one(by_day, as_range):
    for model, table in as_range["final"].items():
        if model == "stg_events":
            assert table == by_day["final"][model]
        else:
            assert_same_rows(table, by_day["final"][model], model)
    final = as_range["final"]
    assert {key[2] for key in final["rollup_events_day"]} == {dt.datetime(2026, 3, 8), dt.datetime(2026, 3, 9)}
    assert {key[2] for key in final["rollup_events_week"]} == {dt.datetime(2026, 3, 2), dt.datetime(2026, 3, 9)}
    assert {key[3] for key in final["kpi_metrics_all"]} == {"minute", "hour", "day", "week"}
    # weekly means of the daily KPIs: the week of Monday the 9th has Monday's values only
    weekly = final["rollup_daily_kpis_weekly"]
    assert weekly and all(key[3] == "week" for key in weekly)
    daily = {key: v for key, v in rows(as_range["warehouse"], "kpi_metrics").items() if key[2] == dt.datetime(2026, 3, 9)}
    for (name, dims, _, _), daily_value in daily.items():
        assert weekly[(name, dims, dt.datetime(2026, 3, 9), "week")] == pytest.approx(daily_value, rel=1e-12)


@pytest.mark.slow
def test_day_rollups_equal_the_python_daily_kpis_of_the_same_name(as_range):
    day = as_range["final"]["rollup_events_day"]
    daily = rows(as_range["warehouse"], "kpi_metrics")
    shared = {key for key in day if key in daily}
    names = {key[0] for key in shared}
    # every name both compute, as the metric registry lists them (the Python value is the definition)
    assert names == {spec.name for spec in REGISTRY if spec.rollup == "events" and spec.producer != EVENT_ROLLUP}
    assert_same_rows({key: day[key] for key in shared}, {key: daily[key] for key in shared}, "day rollup vs kpi_metrics")


@pytest.mark.slow
def test_dbt_tests_are_asset_checks_of_the_run_and_pass(by_day, as_range):
    expected = {check for assets in rollups.defs.assets for check in assets.check_keys}
    assert {check.asset_key for check in expected} == DBT_ASSETS
    for result in (by_day["first_run"], as_range["run"]):
        evaluations = {e.asset_check_key: e for e in result.get_asset_check_evaluations() if e.asset_key in DBT_ASSETS}
        assert set(evaluations) == expected
        assert [key for key, e in evaluations.items() if not e.passed] == []
        materialized = {e.asset_key for e in result.get_asset_materialization_events()}
        assert DBT_ASSETS <= materialized


@pytest.mark.slow
def test_duckdb_and_postgresql_give_the_same_rollups(as_range, on_postgres):
    for model, table in on_postgres["final"].items():
        if model == "stg_events":
            assert table == as_range["final"][model]
        else:
            assert table, f"{model} is empty"
            assert_same_rows(table, as_range["final"][model], model)
    checks = [e for e in on_postgres["run"].get_asset_check_evaluations() if e.asset_key in DBT_ASSETS]
    assert checks and all(check.passed for check in checks)


# --- definitions, resource, manifest, DuckDB lock -------------------------------------------


def test_the_asset_graph_connects_raw_events_kpis_and_rollups(duckdb_warehouse):
    defs = definitions_for(duckdb_warehouse)
    defs.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert DBT_ASSETS <= graph.get_all_asset_keys()
    parents = {key: graph.get(key).parent_keys for key in DBT_ASSETS}
    assert parents[AssetKey("stg_events")] == {AssetKey("raw_events")}
    assert parents[AssetKey("stg_products")] == {AssetKey("products")}
    assert set(KPI_METRICS_PRODUCERS) <= parents[AssetKey("rollup_daily_kpis_weekly")]
    assert set(KPI_METRICS_PRODUCERS) <= parents[AssetKey("kpi_metrics_all")]
    assert parents[AssetKey("rollup_events_hour")] == {AssetKey("stg_events")}
    for key in DBT_ASSETS:
        assert graph.get(key).group_name == "rollups"
        assert parents[key] <= graph.get_all_asset_keys(), f"{key} depends on an asset that is not defined"
    for key in set(KPI_METRICS_PRODUCERS) | {AssetKey("raw_events")}:
        assert graph.get(key).partitions_def == daily_partitions
    partitioned = {key for key in DBT_ASSETS if graph.get(key).partitions_def == daily_partitions}
    assert partitioned == {AssetKey(name) for name in (*ROLLUP_MODELS, "stg_events")}
    assert rollups.rollup_models.backfill_policy == BackfillPolicy.single_run()
    assert rollups.rollup_views.partitions_def is None


def test_dbt_env_from_the_warehouse_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert dbt_env("duckdb:///data/kpi.duckdb") == {
        "DBT_TARGET": "duckdb", "DBT_DUCKDB_PATH": str(tmp_path / "data" / "kpi.duckdb"), "DBT_SCHEMA": "main",
        "DBT_DUCKDB_CONNECT_ATTEMPTS": "7",
    }
    assert dbt_env("duckdb:////abs/w.duckdb", "kpi")["DBT_SCHEMA"] == "kpi"
    assert dbt_env("postgresql+psycopg://kpi:p%40ss@db.internal:6543/analytics?sslmode=require", "kpi") == {
        "DBT_TARGET": "postgres", "DBT_PG_HOST": "db.internal", "DBT_PG_PORT": "6543", "DBT_PG_USER": "kpi",
        "DBT_PG_PASSWORD": "p@ss", "DBT_PG_DBNAME": "analytics", "DBT_PG_SSLMODE": "require", "DBT_SCHEMA": "kpi",
    }
    for name in ("PGPASSWORD", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE", "PGSSLMODE"):
        monkeypatch.delenv(name, raising=False)
    env = dbt_env("postgresql://root@127.0.0.1/test")
    assert (env["DBT_PG_PORT"], env["DBT_PG_PASSWORD"], env["DBT_SCHEMA"]) == ("5432", "", "public")
    with pytest.raises(Exception, match="in-memory"):
        dbt_env("duckdb:///:memory:")
    assert window_vars(dt.datetime(2026, 3, 9), dt.datetime(2026, 3, 11)) == {"min_date": "2026-03-09", "max_date": "2026-03-11"}


def test_the_dbt_resource_runs_the_dbt_beside_this_python():
    resource = rollups_dbt_resource()
    assert Path(resource.dbt_executable) == Path(sys.executable).parent / "dbt"
    assert Path(resource.project_dir) == DBT_PROJECT_DIR


def _lock_probe(path: Path) -> subprocess.CompletedProcess:
    code = "import duckdb, sys; duckdb.connect(sys.argv[1]).execute('CREATE TABLE IF NOT EXISTS probe (x INT)')"
    return subprocess.run([sys.executable, "-c", code, str(path)], check=False, capture_output=True, text=True, timeout=60)


def test_releasing_the_duckdb_file_lets_another_process_write(tmp_path, monkeypatch):
    monkeypatch.setattr(warehouse_module, "_IDLE_RELEASE_SECONDS", 600)  # no idle release meanwhile
    path = tmp_path / "locked.duckdb"
    for schema in (None, "other"):
        Warehouse(f"duckdb:///{path}", schema).scalar("SELECT count(*) FROM raw_events")  # pooled, still open
    blocked = _lock_probe(path)
    assert blocked.returncode != 0 and "lock" in blocked.stderr.lower()
    assert release_duckdb_file(f"duckdb:///{path}") == 2  # both pools on that file, whatever the schema
    assert _lock_probe(path).returncode == 0
    assert release_duckdb_file("postgresql+psycopg://u@h/db") == 0


@pytest.mark.slow
def test_dbt_steps_start_from_the_kept_parse_state_whatever_the_window(duckdb_warehouse):
    resource = rollups_dbt_resource(warehouse_resource(duckdb_warehouse))
    state = partial_parse_path(resource.get_dbt_env())
    assert not state.exists()  # a new warehouse: the first invocation parses in full
    logs = []
    for day in (dt.date(2026, 3, 9), dt.date(2026, 3, 10), dt.date(2026, 3, 11)):  # the window changes each time
        invocation = resource.cli(["ls", "--select", "stg_events"], extra_env=window_env(day, day + dt.timedelta(days=1)),
                                  raise_on_error=False)
        invocation.wait()
        logs.append((invocation.target_path / "dbt.log").read_text())
        assert invocation.is_successful(), invocation.get_error()
        resource.keep_parse_state(invocation)
        shutil.rmtree(invocation.target_path, ignore_errors=True)
        assert state.exists()
    assert "Partial parsing enabled" not in logs[0]
    for log in logs[1:]:
        assert "Partial parsing enabled, no changes found" in log and "Unable to do partial parsing" not in log


@pytest.mark.slow
def test_the_manifest_is_parsed_when_missing_or_stale(tmp_path):
    project_dir = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, project_dir, ignore=shutil.ignore_patterns("target", "logs"))
    project = DbtProject(project_dir=project_dir, profiles_dir=project_dir)
    assert manifest_is_stale(project)
    started = time.perf_counter()
    assert prepare_manifest(project) is True
    seconds = time.perf_counter() - started
    manifest = json.loads(project.manifest_path.read_text())
    assert {f"model.kpi_rollups.{name}" for name in ROLLUP_MODELS} <= set(manifest["nodes"])
    assert seconds < 60, f"dbt parse took {seconds:.1f} s"
    assert prepare_manifest(project) is False  # fresh: nothing to do
    model = project_dir / "models" / "rollups" / "rollup_events_hour.sql"
    later = project.manifest_path.stat().st_mtime + 5
    os.utime(model, (later, later))
    assert manifest_is_stale(project)
    assert prepare_manifest(project) is True
    assert not list((project_dir / "target").glob(".parse-*"))  # the scratch directories are gone

    # a broken project keeps the last good manifest (the code location still loads) ...
    good = project.manifest_path.read_bytes()
    broken = project_dir / "models" / "broken.sql"
    broken.write_text("select * from {{ ref('no_such_model') }}")
    assert manifest_is_stale(project)
    assert prepare_manifest(project) is False
    assert project.manifest_path.read_bytes() == good
    # ... unless there is none
    project.manifest_path.unlink()
    with pytest.raises(RuntimeError, match="dbt parse"):
        prepare_manifest(project)


def test_the_overridden_dagster_dbt_internals_are_still_the_ones_it_calls():
    """RollupsDbtResource overrides two private members of DbtCliResource (`_cli_version`,
    `_initialize_dbt_core_adapter`: about 4 s of each dbt step). No public setting does it,
    so this pins them: if dagster-dbt is upgraded or stops calling them from `cli`, the
    overrides would silently do nothing, and this fails instead."""
    import importlib.metadata
    import inspect
    import re

    from dagster_dbt import DbtCliResource

    pinned = re.search(r'"dagster-dbt==([^"]+)"', (Path(__file__).resolve().parents[1] / "setup.py").read_text())
    assert pinned and importlib.metadata.version("dagster-dbt") == pinned.group(1)
    calls = inspect.getsource(DbtCliResource.cli)
    assert "self._cli_version" in calls and "self._initialize_dbt_core_adapter(args)" in calls
    assert list(inspect.signature(DbtCliResource._initialize_dbt_core_adapter).parameters) == ["self", "args"]
    assert RollupsDbtResource._initialize_dbt_core_adapter is not DbtCliResource._initialize_dbt_core_adapter
