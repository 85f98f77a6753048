"""The whole graph on generated traffic, on DuckDB and PostgreSQL: the same numbers on both,
and materializing again changes nothing."""

from __future__ import annotations

import datetime as dt

import pytest
from dagster import instance_for_test

from kpi_pipelines.ingestion.catalog import load_catalog, load_judgments
from kpi_pipelines.ingestion.loader import EventLoader
from kpi_pipelines.synthetic import generate
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines_tests.conftest import SALT, definitions_for

START = dt.date(2026, 2, 1)
DAYS = 3


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("traffic"), days=DAYS, sessions=150, seed=11, start=START)


def materialize_all(warehouse: Warehouse, start: dt.date, end: dt.date) -> None:
    job = definitions_for(warehouse).resolve_job_def("daily_assets_job")
    with instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": start.isoformat(), "dagster/asset_partition_range_end": end.isoformat()},
        )
        assert result.success
        failed_checks = [
            evaluation
            for evaluation in result.get_asset_check_evaluations()
            if not evaluation.passed and evaluation.severity.value == "ERROR"
        ]
        assert failed_checks == []


def load_and_materialize(warehouse: Warehouse, traffic) -> list[tuple]:
    load_catalog(warehouse, traffic.catalog_path)
    load_judgments(warehouse, traffic.judgments_path)
    EventLoader(warehouse, SALT).load_file(traffic.events_path)
    end = START + dt.timedelta(days=DAYS - 1)
    materialize_all(warehouse, START, end)
    return metric_rows(warehouse)


def metric_rows(warehouse: Warehouse) -> list[tuple]:
    return sorted(
        (name, dims, ts.isoformat(), level, round(float(value), 9))
        for name, value, dims, ts, level in warehouse.query(
            'SELECT metric_name, metric_value, dimensions, "timestamp", aggregation_level FROM kpi_metrics'
        )
    )


@pytest.mark.slow
def test_same_kpis_on_duckdb_and_postgresql_and_rematerializing_changes_nothing(
    duckdb_warehouse, postgres_warehouse, traffic
):
    on_duckdb = load_and_materialize(duckdb_warehouse, traffic)
    on_postgres = load_and_materialize(postgres_warehouse, traffic)
    names = {row[0] for row in on_duckdb}
    for prefix in ("data_quality.", "retrieval.", "search.", "business.", "content.", "system."):
        assert any(name.startswith(prefix) for name in names), prefix
    assert len(on_duckdb) == len(on_postgres)
    assert on_duckdb == on_postgres

    # a single day again, then the whole range again: identical rows, no duplicates
    materialize_all(duckdb_warehouse, START + dt.timedelta(days=1), START + dt.timedelta(days=1))
    materialize_all(duckdb_warehouse, START, START + dt.timedelta(days=DAYS - 1))
    assert metric_rows(duckdb_warehouse) == on_duckdb
    anomalies = duckdb_warehouse.scalar("SELECT count(*) FROM kpi_anomalies")
    assert anomalies > 0  # every series present, with not_enough_data on three days of history
    assert duckdb_warehouse.scalar("SELECT count(*) FROM kpi_anomalies WHERE status <> 'not_enough_data'") == 0
