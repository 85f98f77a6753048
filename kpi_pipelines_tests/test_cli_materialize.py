"""`kpi materialize` as a person meets it (issue 12, items 2 and 8), on both backends: days
outside the partitions and a missing PostgreSQL database are refused in one line before any
run exists; a run it makes is listed by the Dagster UI (a real `dagster-webserver` on the
same DAGSTER_HOME and workspace) among the job's runs, with the origin the timeline needs."""

from __future__ import annotations

import datetime as dt
import subprocess
import uuid

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance
from sqlalchemy.engine import make_url

from kpi_pipelines import cli
from kpi_pipelines.definitions import defs
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines_tests.conftest import definitions_for, event, load_events, postgres_or_skip
from kpi_pipelines_tests.test_duckdb_sharing import BIN, KPI, LOCATION, REPOSITORY, kpi_env, start_dagster

DAY = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)  # within the partitions, whatever their first day


def _env(warehouse: Warehouse, tmp_path) -> dict[str, str]:
    return kpi_env(tmp_path / "home", warehouse.url.render_as_string(hide_password=False), warehouse.schema or "")


def _first_and_today() -> tuple[dt.date, dt.date]:
    partitions = defs.resolve_job_def("daily_assets_job").partitions_def
    return dt.date.fromisoformat(partitions.get_first_partition_key()), dt.datetime.now(dt.timezone.utc).date()


def test_days_outside_the_partitions_are_refused_in_one_line_before_any_run(warehouse, tmp_path, monkeypatch, capsys):
    for name, value in _env(warehouse, tmp_path).items():
        monkeypatch.setenv(name, value)
    first, today = _first_and_today()
    tomorrow = today + dt.timedelta(days=1)
    day_before_first = first - dt.timedelta(days=1)
    cases = {
        ("--start", day_before_first.isoformat()): f"--start {day_before_first} is before the first partition, {first}",
        ("--start", tomorrow.isoformat()): f"--start {tomorrow} is after today's partition, {today}",
        ("--start", today.isoformat(), "--end", tomorrow.isoformat()): f"--end {tomorrow} is after today's partition, {today}",
        ("--start", today.isoformat(), "--end", first.isoformat()): f"--end {first} is before --start {today}",
    }
    for args, message in cases.items():
        assert cli.main(["materialize", *args]) == 2, args
        captured = capsys.readouterr()
        assert captured.err == f"kpi: error: {message}\n"
    assert not (tmp_path / "home").exists()  # no instance, so no run (and no failed run to alert on)
    if warehouse.dialect == "duckdb":  # nor was the warehouse opened (and migrated)
        assert not warehouse.duckdb_path.exists()
    else:
        engine = sa.create_engine(warehouse.url)
        with engine.connect() as connection:
            found = connection.execute(sa.text("SELECT count(*) FROM information_schema.schemata WHERE schema_name = :s"), {"s": warehouse.schema})
            assert found.scalar() == 0
        engine.dispose()


@pytest.mark.slow
def test_a_missing_postgresql_database_is_one_line_naming_it(tmp_path):
    url = make_url(postgres_or_skip()).set(database=f"kpi_missing_{uuid.uuid4().hex[:8]}")
    env = kpi_env(tmp_path / "home", url.render_as_string(hide_password=False))
    result = subprocess.run([KPI, "materialize", "--start", DAY.isoformat()], env=env, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("kpi: error: cannot open the warehouse ") and f'database "{url.database}" does not exist' in lines[0]
    assert not (tmp_path / "home").exists()


@pytest.mark.deployment
def test_a_cli_run_is_one_of_the_jobs_runs_in_the_ui(warehouse, tmp_path, monkeypatch, write_events):
    load_events(warehouse, write_events, [event("e1", timestamp=f"{DAY}T10:00:00Z")])
    env = _env(warehouse, tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    result = cli.materialize(DAY, DAY, definitions=definitions_for(warehouse))
    assert result.success
    with DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
        assert run.tags["kpi/trigger"] == "cli"
    for dagster in start_dagster([str(BIN / "dagster-webserver")], env, tmp_path / "webserver.log"):
        assert result.run_id in dagster.job_run_ids()
        assert dagster.run_origins(result.run_id) == {
            result.run_id: {"repositoryName": REPOSITORY, "repositoryLocationName": LOCATION}
        }


def test_the_first_day_and_today_are_within_the_partitions(duckdb_warehouse):
    first, today = _first_and_today()
    definitions = definitions_for(duckdb_warehouse)
    cli.check_days(definitions, first, today)  # no UsageError: both ends are partitions
    cli.check_days(definitions, today, today)
