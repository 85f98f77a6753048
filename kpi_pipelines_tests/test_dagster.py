"""The Dagster side: definitions load, the landing sensor, real runs on real instances."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import pytest
from dagster import DagsterInstance, RunRequest, SkipReason, build_sensor_context, instance_for_test

from kpi_pipelines.definitions import defs
from kpi_pipelines.ingestion.loader import EventLoader
from kpi_pipelines.ingestion.resources import EventIngestionResource
from kpi_pipelines.ingestion.sensors import landing_sensor
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines_tests.conftest import SALT, definitions_for, event

REPO = Path(__file__).resolve().parents[1]


def test_definitions_load_with_every_job_and_sensor():
    defs.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert {"ingest_job", "daily_assets_job"} <= {job.name for job in repository.get_all_jobs()}
    assert "landing_sensor" in {sensor.name for sensor in repository.sensor_defs}
    assert repository.assets_defs_by_key  # the asset graph is there


def _definitions(warehouse: Warehouse, landing: Path, after_load: str = "delete"):
    return definitions_for(warehouse, str(landing), after_load)


def _write(path: Path, events: list[dict], mtime: int | None = None) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))
    return path


def test_landing_sensor_requests_each_new_file_once(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    resource = EventIngestionResource(pii_salt=SALT, landing_dir=str(landing))
    first = _write(landing / "a.jsonl", [event("a")], mtime=1_000_000_000_000)
    _write(landing / ".b.jsonl.tmp", [event("b")])  # still being written: ignored
    _write(landing / "notes.txt", [event("c")])  # not an event file

    context = build_sensor_context(resources={"ingestion": resource})
    request = landing_sensor(context)
    assert isinstance(request, RunRequest)
    assert request.partition_key == dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert request.run_config["ops"]["raw_events"]["config"]["files"] == [str(first)]

    again = landing_sensor(build_sensor_context(cursor=context.cursor, resources={"ingestion": resource}))
    assert isinstance(again, SkipReason)

    second = _write(landing / "c.jsonl.gz", [], mtime=2_000_000_000_000)
    later = build_sensor_context(cursor=context.cursor, resources={"ingestion": resource})
    request = landing_sensor(later)
    assert request.run_config["ops"]["raw_events"]["config"]["files"] == [str(second)]
    assert later.cursor != context.cursor


@pytest.mark.slow
def test_raw_events_run_loads_landing_files_once_and_reports_the_partition(duckdb_warehouse, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    _write(landing / "day.jsonl", [event("e1", timestamp="2026-03-10T23:30:00-01:00"), event("e2", timestamp="2026-03-10T10:00:00Z")])
    job = _definitions(duckdb_warehouse, landing).resolve_job_def("ingest_job")
    with instance_for_test() as instance:
        for _ in range(2):  # the second run finds nothing new
            result = job.execute_in_process(instance=instance, partition_key="2026-03-11")
            assert result.success
        materializations = result.asset_materializations_for_node("raw_events")
        metadata = materializations[0].metadata
        assert metadata["events_in_partitions"].value == 1  # e1 is 00:30 UTC on the 11th
        assert metadata["loaded_accepted"].value == 0
    assert duckdb_warehouse.scalar("SELECT count(*) FROM raw_events") == 2
    assert duckdb_warehouse.scalar("SELECT count(*) FROM ingested_files") == 1
    assert not (landing / "day.jsonl").exists()  # loaded: its raw user ids left the disk


@pytest.mark.parametrize("after_load", ["delete", "archive", "keep"])
@pytest.mark.slow
def test_loaded_landing_files_are_deleted_archived_or_kept_and_other_files_never_touched(
    duckdb_warehouse, tmp_path, after_load
):
    landing, elsewhere = tmp_path / "landing", tmp_path / "elsewhere"
    landing.mkdir()
    elsewhere.mkdir()
    dropped = _write(landing / "dropped.jsonl", [event("d1")])
    given = _write(elsewhere / "given.jsonl", [event("g1")])
    bad = _write(landing / "bad.jsonl", [event("b1"), "not an object"])  # a reject is recorded: loaded all the same
    job = _definitions(duckdb_warehouse, landing, after_load).resolve_job_def("ingest_job")
    with instance_for_test() as instance:
        config = {"ops": {"raw_events": {"config": {"files": [str(given)]}}}}
        assert job.execute_in_process(instance=instance, partition_key="2026-03-10", run_config=config).success
    assert sorted(duckdb_warehouse.scalar("SELECT list(event_id ORDER BY event_id) FROM raw_events")) == ["b1", "d1", "g1"]
    assert duckdb_warehouse.scalar("SELECT count(*) FROM rejected_events") == 1
    assert given.exists()
    archive = landing / "loaded" / dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert {path.name for path in landing.glob("*.jsonl")} == ({"dropped.jsonl", "bad.jsonl"} if after_load == "keep" else set())
    archived = {path.name for path in archive.glob("*.jsonl")} if archive.exists() else set()
    assert archived == ({"dropped.jsonl", "bad.jsonl"} if after_load == "archive" else set())
    if after_load == "archive":
        assert (archive / dropped.name).read_text() == json.dumps(event("d1")) + "\n"
        assert (archive / bad.name).read_text().endswith('"not an object"\n')


def test_archiving_a_second_file_of_the_same_name_keeps_both(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    resource = EventIngestionResource(pii_salt=SALT, landing_dir=str(landing), after_load="archive")
    for text in ("first\n", "second\n"):
        (landing / "events.jsonl").write_text(text)
        assert resource.settle_loaded(landing / "events.jsonl").startswith("archived as ")
    archived = sorted(path.read_text() for path in (landing / "loaded").glob("*/*events.jsonl"))
    assert archived == ["first\n", "second\n"]
    assert not (landing / "events.jsonl").exists()


@pytest.mark.slow
def test_a_requested_file_an_earlier_run_loaded_and_removed_is_skipped(duckdb_warehouse, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    early = _write(landing / "early.jsonl", [event("e1")])
    job = _definitions(duckdb_warehouse, landing).resolve_job_def("ingest_job")
    requested = {"ops": {"raw_events": {"config": {"files": [str(early)]}}}}  # as the sensor asked
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, partition_key="2026-03-10").success  # loads and deletes it
        assert not early.exists()
        result = job.execute_in_process(instance=instance, partition_key="2026-03-10", run_config=requested)
        assert result.success
        # a file given outside the landing directory that is missing fails the run, naming it
        # (a missing landing file is reported by a check: test_landing_quarantine.py)
        missing = {"ops": {"raw_events": {"config": {"files": [str(tmp_path / "never.jsonl")]}}}}
        failed = job.execute_in_process(instance=instance, partition_key="2026-03-10", run_config=missing, raise_on_error=False)
        assert not failed.success
        assert "never.jsonl: no such file" in str(failed.get_step_failure_events()[0].event_specific_data.error)
    assert duckdb_warehouse.scalar("SELECT count(*) FROM raw_events") == 1


@pytest.mark.slow
def test_a_loaded_file_left_in_the_landing_directory_is_settled_by_the_next_run(duckdb_warehouse, tmp_path):
    """A crash between a load's commit and the file's deletion leaves the file behind."""
    landing = tmp_path / "landing"
    landing.mkdir()
    left = _write(landing / "left.jsonl", [event("l1")])
    EventLoader(duckdb_warehouse, SALT).load_file(left)  # committed, not settled
    job = _definitions(duckdb_warehouse, landing).resolve_job_def("ingest_job")
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, partition_key="2026-03-10").success
    assert not left.exists()
    assert duckdb_warehouse.scalar("SELECT count(*) FROM raw_events") == 1


@pytest.mark.slow
def test_kpi_materialize_records_the_run_in_dagster_home(duckdb_warehouse, tmp_path, monkeypatch):
    from kpi_pipelines import cli

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    result = cli.materialize(dt.date(2026, 3, 9), dt.date(2026, 3, 11), definitions=_definitions(duckdb_warehouse, tmp_path / "none"))
    assert result.success
    with DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert len(runs) == 1
        assert runs[0].tags["dagster/asset_partition_range_start"] == "2026-03-09"
        assert runs[0].tags["dagster/asset_partition_range_end"] == "2026-03-11"
    assert (tmp_path / "home" / "dagster.yaml").exists()


@pytest.mark.slow
def test_repository_dagster_yaml_runs_a_job_on_postgresql(tmp_path, monkeypatch, pg_schema):
    """The deployment instance configuration (PostgreSQL storage, queued runs) works."""
    url, schema = pg_schema
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", url.replace("postgresql+psycopg://", "postgresql+psycopg2://"))
    warehouse = Warehouse(url, schema)
    landing = tmp_path / "landing"
    landing.mkdir()
    _write(landing / "pg.jsonl", [event("pg-1", timestamp="2026-03-10T12:00:00Z")])
    job = _definitions(warehouse, landing).resolve_job_def("ingest_job")
    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        result = job.execute_in_process(instance=instance, partition_key="2026-03-10", tags={"kpi/test": schema})
        assert result.success
        stored = instance.get_run_by_id(result.run_id)
        assert stored is not None and stored.is_success
    assert warehouse.scalar("SELECT count(*) FROM raw_events") == 1
    assert not (landing / "pg.jsonl").exists()
