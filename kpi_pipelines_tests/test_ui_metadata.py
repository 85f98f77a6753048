"""What the Dagster UI reads after a ranged run (the nightly run, a single-run backfill,
`kpi materialize --start/--end`): each partition's latest materialization carries that day's
values (the asset's Plots), and each day has its own check result (not "Skipped"). Real
runs of the project's definitions on a real Dagster instance, on both warehouses."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from dagster import AssetCheckKey, AssetKey, AssetRecordsFilter, DagsterInstance, instance_for_test
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from kpi_pipelines.ingestion.checks import RAW_EVENTS_CHECK
from kpi_pipelines.ingestion.assets import LANDING_CHECK
from kpi_pipelines.kpis.checks import CHECK_NAME
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines_tests.conftest import definitions_for, event, load_events

DAYS = ["2026-03-09", "2026-03-10", "2026-03-11"]
RANGE = {"dagster/asset_partition_range_start": DAYS[0], "dagster/asset_partition_range_end": DAYS[-1]}
SUCCEEDED, FAILED = AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED


def query(event_id: str, day: str, results: list[str]) -> dict[str, Any]:
    return event(
        event_id, timestamp=f"{day}T10:00:00Z", session_id=f"s-{event_id}", action="query", query_id=event_id,
        query="red shoes", result_ids=results, response_time_ms=20,
    )


def click(event_id: str, day: str, query_id: str) -> dict[str, Any]:
    return event(
        event_id, timestamp=f"{day}T10:01:00Z", session_id=f"s-{query_id}", action="click", query_id=query_id,
        product_id="P1", position=1,
    )


# 2 queries on the 9th (one clicked), 4 on the 10th (one clicked), 1 without results on the 11th
EVENTS = [
    query("q1", DAYS[0], ["P1", "P2"]), click("c1", DAYS[0], "q1"), query("q2", DAYS[0], ["P1"]),
    *(query(f"q{n}", DAYS[1], ["P1"]) for n in range(3, 7)), click("c3", DAYS[1], "q3"),
    query("q7", DAYS[2], []),
]
EXPECTED = {  # day -> (search.queries, search.click_through_rate, search.no_results_rate)
    DAYS[0]: (2, 0.5, 0.0),
    DAYS[1]: (4, 0.25, 0.0),
    DAYS[2]: (1, 0.0, 1.0),
}


def key(asset: str | AssetKey) -> AssetKey:
    return asset if isinstance(asset, AssetKey) else AssetKey(asset)


def latest_materialization(instance: DagsterInstance, asset: str | AssetKey, day: str):
    (record,) = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key(asset), asset_partitions=[day]), limit=1
    ).records
    return record


def check_records(instance: DagsterInstance, asset: str | AssetKey, check: str) -> list:
    return list(instance.event_log_storage.get_asset_check_execution_history(AssetCheckKey(key(asset), check), limit=100))


def assert_one_result_per_day(instance: DagsterInstance, asset: str | AssetKey, check: str, run_id: str, statuses: dict[str, Any]) -> None:
    """The run left exactly one record per day, with that day's status, aimed at that day's
    materialization by the run (so the UI counts it as current); none without a partition."""
    records = [r for r in check_records(instance, asset, check) if r.run_id == run_id]
    assert sorted((r.partition, r.status) for r in records) == sorted(statuses.items()), (asset, check)
    for record in records:
        target = record.event.dagster_event.event_specific_data.target_materialization_data
        materialization = latest_materialization(instance, asset, record.partition)
        assert (target.storage_id, target.run_id) == (materialization.storage_id, run_id)


@pytest.mark.slow
def test_a_range_run_gives_each_day_its_kpi_values_and_its_check_results(warehouse: Warehouse, write_events):
    load_events(warehouse, write_events, EVENTS)
    job = definitions_for(warehouse).resolve_job_def("daily_assets_job")
    selection = [AssetKey(name) for name in ("search_experience_metrics", "experiment_results", "kpi_anomalies")]
    with instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, tags=RANGE, asset_selection=selection)
        assert result.success
        for day, (queries, ctr, no_results) in EXPECTED.items():
            metadata = latest_materialization(instance, "search_experience_metrics", day).asset_materialization.metadata
            assert metadata["search.queries"].value == queries
            assert metadata["search.click_through_rate"].value == pytest.approx(ctr)
            assert metadata["search.no_results_rate"].value == pytest.approx(no_results)
            assert "days" not in metadata  # no run-wide value hides the day's
            experiments = latest_materialization(instance, "experiment_results", day).asset_materialization.metadata
            assert (experiments["experiments"].value, experiments["rows_written"].value) == (0, 0)
        # one materialization per day: the values above are not a second, earlier event
        assert sorted(m.partition for m in result.asset_materializations_for_node("search_experience_metrics")) == DAYS
        every_day_passed = {day: SUCCEEDED for day in DAYS}
        assert_one_result_per_day(instance, "search_experience_metrics", CHECK_NAME, result.run_id, every_day_passed)
        assert_one_result_per_day(instance, "experiment_results", CHECK_NAME, result.run_id, every_day_passed)
        rows_checked = {
            r.partition: r.event.dagster_event.event_specific_data.metadata["rows_checked"].value
            for r in check_records(instance, "search_experience_metrics", CHECK_NAME)
        }
        written = dict(
            warehouse.query(
                "SELECT CAST(CAST(\"timestamp\" AS DATE) AS VARCHAR), count(*) FROM kpi_metrics "
                "WHERE source_asset = 'search_experience_metrics' GROUP BY 1"
            )
        )
        assert rows_checked == written and set(written) == set(DAYS)
        for day in DAYS:  # every series is new, so judged on no day; each day counts its own
            anomalies = latest_materialization(instance, "kpi_anomalies", day).asset_materialization.metadata
            assert (anomalies["series_checked"].value, anomalies["anomalous"].value) == (written[day], 0)

        # a single-day run of one of the days records its result under that day too
        again = job.execute_in_process(instance=instance, partition_key=DAYS[1], asset_selection=selection[:1])
        assert again.success
        assert_one_result_per_day(instance, "search_experience_metrics", CHECK_NAME, again.run_id, {DAYS[1]: SUCCEEDED})
        assert latest_materialization(instance, "search_experience_metrics", DAYS[1]).run_id == again.run_id
        assert not [r for r in check_records(instance, "search_experience_metrics", CHECK_NAME) if r.status != SUCCEEDED]


@pytest.mark.slow
def test_a_bad_day_fails_its_own_check_and_blocks_the_run(warehouse: Warehouse, write_events):
    load_events(warehouse, write_events, EVENTS)
    with warehouse.begin() as connection:  # the 10th's events from a source the contract does not know
        connection.execute(sa.text("UPDATE raw_events SET source = 'carrier_pigeon' WHERE event_date = CAST(:day AS DATE)"), {"day": DAYS[1]})
    job = definitions_for(warehouse).resolve_job_def("ingest_job")
    with instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, tags=RANGE, raise_on_error=False)
        assert not result.success  # the blocking check failed
        statuses = {DAYS[0]: SUCCEEDED, DAYS[1]: FAILED, DAYS[2]: SUCCEEDED}
        assert_one_result_per_day(instance, "raw_events", RAW_EVENTS_CHECK, result.run_id, statuses)
        failed = next(r for r in check_records(instance, "raw_events", RAW_EVENTS_CHECK) if r.status == FAILED)
        metadata = failed.event.dagster_event.event_specific_data.metadata
        assert metadata["rows_checked"].value == 5  # the 10th's four queries and one click
        assert metadata["expect_column_values_to_be_in_set(source) unexpected_count"].value == 5
        # the landing check is about the run's files (none here): each day carries its pass
        assert_one_result_per_day(instance, "raw_events", LANDING_CHECK, result.run_id, {day: SUCCEEDED for day in DAYS})
        for day, count in zip(DAYS, (3, 5, 1)):
            metadata = latest_materialization(instance, "raw_events", day).asset_materialization.metadata
            assert metadata["events_in_partitions"].value == count


@pytest.mark.slow
def test_dbt_tests_of_a_range_run_are_recorded_on_each_day(warehouse: Warehouse, write_events):
    """dbt checks the whole window once: every day of the run carries the tests' results."""
    from kpi_pipelines import rollups

    load_events(warehouse, write_events, EVENTS)
    partitioned = list(rollups.rollup_models.check_specs)
    assert partitioned  # the incremental models have dbt tests
    job = definitions_for(warehouse).resolve_job_def("daily_assets_job")
    with instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, tags=RANGE, asset_selection=list(rollups.rollup_models.keys))
        assert result.success
        for spec in partitioned:
            assert_one_result_per_day(instance, spec.asset_key, spec.name, result.run_id, {day: SUCCEEDED for day in DAYS})
