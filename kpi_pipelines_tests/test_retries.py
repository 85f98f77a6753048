"""Only failures a retry can pass are retried (issue 11, item 3): real warehouse errors are
classified, a deterministic failure is one failed run that the instance will not retry, and
a transient one (a PostgreSQL connection cut mid-step) is retried by the step's policy
until it passes. A DuckDB file held by another process is waited for, not retried (the
Python steps' connections and the dbt step alike), and a wait past its bound is final."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import duckdb
import psycopg
import pytest
import sqlalchemy as sa
import yaml
from dagster import AssetKey, DagsterEventType, DagsterInstance, instance_for_test

from kpi_pipelines.ingestion.loader import EventLoader, IngestError
from kpi_pipelines.retries import TRANSIENT_RETRY_POLICY, is_transient
from kpi_pipelines.warehouse import Warehouse, WarehouseLocked, release_duckdb_file
from kpi_pipelines_tests.conftest import SALT, definitions_for, event, load_events

REPO = Path(__file__).resolve().parents[1]
DAY = "2026-03-10"
WILL_RETRY = "dagster/will_retry"  # the tag the instance sets on a failed run; the daemon reads it


def _error(action) -> BaseException:
    with pytest.raises(Exception) as caught:
        action()
    return caught.value


def _hold_duckdb_lock(path: Path) -> subprocess.Popen:
    """Another process holding the DuckDB file (as `kpi serve` or dbt can), until told to stop."""
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, sys; c = duckdb.connect({str(path)!r}); print('held', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def _release(holder: subprocess.Popen) -> None:
    holder.stdin.write("\n")
    holder.stdin.flush()
    holder.wait(timeout=30)


def test_the_policy_is_bounded():
    assert TRANSIENT_RETRY_POLICY.max_retries == 3
    # no wait is over a minute, and all of them together stay under two
    waits = [TRANSIENT_RETRY_POLICY.calculate_delay(attempt) for attempt in range(1, 4) for _ in range(50)]
    assert 0 <= min(waits) and max(waits) <= 40
    assert sum(max(TRANSIENT_RETRY_POLICY.calculate_delay(a) for _ in range(50)) for a in range(1, 4)) <= 70


def test_duckdb_errors_are_told_apart(tmp_path):
    path = tmp_path / "w.duckdb"
    warehouse = Warehouse(f"duckdb:///{path}")
    warehouse.scalar("SELECT 1")
    assert not is_transient(_error(lambda: warehouse.scalar("SELECT * FROM no_such_table")))
    assert not is_transient(_error(lambda: warehouse.scalar("SELECT CAST('x' AS INTEGER)")))
    broken = tmp_path / "events.jsonl.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00 truncated")
    ingest = _error(lambda: EventLoader(warehouse, SALT).load_file(broken))
    assert isinstance(ingest, IngestError) and not is_transient(ingest)  # a DuckDB IO error, but the file's
    warehouse.dispose()
    holder = _hold_duckdb_lock(path)
    try:
        locked = _error(lambda: duckdb.connect(str(path)))  # as dbt meets it, past its own retries
        waited = _error(lambda: Warehouse(f"duckdb:///{path}", lock_timeout=0.2).scalar("SELECT 1"))
    finally:
        _release(holder)
    assert isinstance(locked, duckdb.IOException) and "Could not set lock" in str(locked)
    assert is_transient(locked)
    assert not is_transient(ValueError("Could not set lock on file"))  # the words alone are not enough
    # the warehouse's own wait already waited its bound: final, though DuckDB's lock error is behind it
    assert isinstance(waited, WarehouseLocked) and "KPI_WAREHOUSE_LOCK_TIMEOUT" in str(waited)
    assert not is_transient(waited)


def test_postgresql_errors_are_told_apart(pg_schema):
    url, schema = pg_schema
    warehouse = Warehouse(url, schema)
    warehouse.scalar("SELECT 1")
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    assert not is_transient(_error(lambda: warehouse.scalar("SELECT 1 / 0")))
    assert not is_transient(_error(lambda: warehouse.scalar("SELEC 1")))
    assert not is_transient(_error(lambda: warehouse.scalar("SELECT * FROM no_such_table")))
    missing_db = url.rsplit("/", 1)[0] + "/kpi_no_such_database"
    assert not is_transient(_error(lambda: Warehouse(missing_db).scalar("SELECT 1")))
    assert is_transient(_error(lambda: Warehouse("postgresql+psycopg://root@127.0.0.1:1/kpi").scalar("SELECT 1")))

    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {schema}.counter (id INT PRIMARY KEY, n INT)")
        setup.execute(f"INSERT INTO {schema}.counter VALUES (1, 0)")
    with psycopg.connect(dsn) as holder, psycopg.connect(dsn) as waiter:
        holder.execute(f"LOCK TABLE {schema}.counter IN ACCESS EXCLUSIVE MODE")
        waiter.execute("SET lock_timeout = '100ms'")
        timed_out = _error(lambda: waiter.execute(f"SELECT * FROM {schema}.counter"))
        assert timed_out.sqlstate == "55P03" and is_transient(timed_out)
        holder.rollback()
        waiter.rollback()

        waiter.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        waiter.execute(f"SELECT n FROM {schema}.counter")
        holder.execute(f"UPDATE {schema}.counter SET n = n + 1")
        holder.commit()
        conflict = _error(lambda: waiter.execute(f"UPDATE {schema}.counter SET n = n + 1"))
        assert conflict.sqlstate == "40001" and is_transient(conflict)
        waiter.rollback()

        pid = waiter.info.backend_pid
        holder.execute("SELECT pg_terminate_backend(%s)", [pid])
        holder.commit()
        time.sleep(0.2)
        assert is_transient(_error(lambda: waiter.execute("SELECT 1")))

    # the same through SQLAlchemy, as the assets meet it: the pooled connection was cut
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", [pid])
        time.sleep(0.2)
        cut = _error(lambda: connection.execute(sa.text("SELECT 1")))
    engine.dispose()
    assert isinstance(cut, sa.exc.OperationalError) and is_transient(cut)


@pytest.fixture(params=["duckdb", "postgresql"])
def repository_instance(request, tmp_path, monkeypatch):
    """(warehouse, Dagster instance) with the instance configured by the project's own file:
    the local instance of `kpi materialize` with DuckDB, the deployments' dagster.yaml
    (PostgreSQL storage) with PostgreSQL."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    if request.param == "duckdb":
        shutil.copy(REPO / "kpi_pipelines" / "defaults" / "dagster_home.yaml", home / "dagster.yaml")
        warehouse = request.getfixturevalue("duckdb_warehouse")
    else:
        url, schema = request.getfixturevalue("pg_schema")
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        monkeypatch.setenv("DAGSTER_PG_URL", url.replace("postgresql+psycopg://", "postgresql+psycopg2://"))
        warehouse = Warehouse(url, schema)
    with DagsterInstance.from_config(str(home)) as instance:
        yield warehouse, instance


def _events(result, kind: DagsterEventType) -> list:
    return [e for e in result.all_events if e.event_type == kind]


def test_a_deterministic_failure_is_one_failed_run_that_is_not_retried(repository_instance, tmp_path, write_events):
    warehouse, instance = repository_instance
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
    load_events(warehouse, write_events, [event("e1", timestamp=f"{DAY}T10:00:00Z")])
    with warehouse.begin() as connection:  # every KPI asset now fails the same way on every try
        connection.execute(sa.text("DROP VIEW kpi_metrics_all"))
        connection.execute(sa.text("DROP TABLE kpi_metrics"))
    job = definitions_for(warehouse).resolve_job_def("ingest_job")
    tag = uuid.uuid4().hex
    result = job.execute_in_process(
        instance=instance,
        partition_key=DAY,
        asset_selection=[AssetKey("business_metrics")],
        tags={"kpi/test": tag},
        raise_on_error=False,
    )
    assert not result.success
    assert len(_events(result, DagsterEventType.STEP_FAILURE)) == 1
    assert not _events(result, DagsterEventType.STEP_UP_FOR_RETRY)
    failure = _events(result, DagsterEventType.STEP_FAILURE)[0].event_specific_data
    assert "kpi_metrics" in failure.error.to_string()  # the real cause is kept
    assert "kpi_metrics" in failure.user_failure_data.description
    runs = [run for run in instance.get_runs() if run.tags.get("kpi/test") == tag]
    assert len(runs) == 1 and runs[0].is_failure
    assert runs[0].tags[WILL_RETRY] == "false"  # the run-retry daemon leaves it alone

    # The same failure under the former configuration (step failures retried) would have
    # been run twice more: the setting is what stops it.
    with instance_for_test(overrides={"run_retries": {"enabled": True, "max_retries": 2}}) as former:
        again = job.execute_in_process(instance=former, partition_key=DAY, asset_selection=[AssetKey("business_metrics")], raise_on_error=False)
        assert former.get_run_by_id(again.run_id).tags[WILL_RETRY] == "true"


def test_kpi_materialize_names_the_cause_of_a_final_failure_in_one_line(warehouse, tmp_path, monkeypatch, write_events):
    from kpi_pipelines import cli

    load_events(warehouse, write_events, [event("e1", timestamp=f"{DAY}T10:00:00Z")])
    with warehouse.begin() as connection:
        connection.execute(sa.text("DROP VIEW kpi_metrics_all"))
        connection.execute(sa.text("DROP TABLE kpi_metrics"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    with pytest.raises(RuntimeError) as failed:
        cli.materialize(dt.date(2026, 3, 10), dt.date(2026, 3, 10), definitions=definitions_for(warehouse))
    message = str(failed.value)
    assert "\n" not in message and message.startswith("run ") and "kpi_metrics" in message
    assert "dagster._core" not in message  # the cause, not Dagster's wrapper


def _run_in_thread(job, instance, asset: str) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        outcome["result"] = job.execute_in_process(
            instance=instance, partition_key=DAY, asset_selection=[AssetKey(asset)], raise_on_error=False
        )

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _wait_for(condition, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _waiting_message(capfd, seen: list[str]) -> bool:
    """Whether this process has printed the warehouse's waiting message (on stderr) yet."""
    seen.append(capfd.readouterr().err)
    return "kpi: waiting for the warehouse file" in "".join(seen)


def test_a_step_waits_for_a_duckdb_file_held_by_another_process(duckdb_warehouse, write_events, capfd):
    load_events(duckdb_warehouse, write_events, [event("e1", timestamp=f"{DAY}T10:00:00Z")])
    release_duckdb_file(duckdb_warehouse.url.render_as_string())  # this process's pools, or the holder could not take the file
    job = definitions_for(duckdb_warehouse).resolve_job_def("ingest_job")
    holder = _hold_duckdb_lock(duckdb_warehouse.duckdb_path)
    seen: list[str] = []
    try:
        with instance_for_test() as instance:
            thread, outcome = _run_in_thread(job, instance, "business_metrics")
            _wait_for(lambda: _waiting_message(capfd, seen))
            _release(holder)
            thread.join(timeout=180)
            result = outcome["result"]
    finally:
        if holder.poll() is None:
            _release(holder)
    assert f"held by process {holder.pid} " in "".join(seen)
    assert result.success
    assert not _events(result, DagsterEventType.STEP_UP_FOR_RETRY)  # waited, not failed and retried
    assert duckdb_warehouse.scalar("SELECT count(*) FROM kpi_metrics WHERE source_asset = 'business_metrics'") > 0


@pytest.mark.slow
def test_a_postgresql_connection_cut_mid_step_is_retried(postgres_warehouse, write_events, pg_schema):
    url, schema = pg_schema
    load_events(postgres_warehouse, write_events, [event("e1", timestamp=f"{DAY}T10:00:00Z")])
    job = definitions_for(postgres_warehouse).resolve_job_def("ingest_job")
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    # (an autocommit observer: pg_stat_activity is a snapshot for a transaction's duration)
    with psycopg.connect(dsn) as holder, psycopg.connect(dsn, autocommit=True) as observer, instance_for_test() as instance:
        holder.execute(f"LOCK TABLE {schema}.kpi_metrics IN ACCESS EXCLUSIVE MODE")
        thread, outcome = _run_in_thread(job, instance, "business_metrics")
        waiting = (
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
            f"AND query LIKE '%kpi_metrics%' AND pid <> {holder.info.backend_pid}"
        )
        _wait_for(lambda: observer.execute(waiting).fetchall())
        for (pid,) in observer.execute(waiting).fetchall():  # the server drops the step's connection
            observer.execute("SELECT pg_terminate_backend(%s)", [pid])
        holder.rollback()  # and the lock is gone
        thread.join(timeout=180)
    result = outcome["result"]
    assert result.success
    retries = _events(result, DagsterEventType.STEP_UP_FOR_RETRY)
    assert len(retries) == 1 and "terminating connection" in retries[0].event_specific_data.error.to_string()
    assert postgres_warehouse.scalar("SELECT count(*) FROM kpi_metrics WHERE source_asset = 'business_metrics'") > 0


def test_both_instance_configurations_retry_only_crashed_runs():
    for path in (REPO / "dagster.yaml", REPO / "kpi_pipelines" / "defaults" / "dagster_home.yaml"):
        retries = yaml.safe_load(path.read_text())["run_retries"]
        assert retries == {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}, path


@pytest.mark.slow
def test_a_dbt_step_waits_for_a_duckdb_file_held_by_another_process(duckdb_warehouse, write_events, capfd):
    """dbt opens the file in its own process: the step waits for the file before starting dbt,
    as the warehouse's own connections do."""
    load_events(duckdb_warehouse, write_events, [event("e1", timestamp=f"{DAY}T10:00:00Z")])
    job = definitions_for(duckdb_warehouse).resolve_job_def("ingest_job")
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, partition_key=DAY).success  # the tables the views read
    release_duckdb_file(duckdb_warehouse.url.render_as_string())  # every pool of this process on the file
    holder = _hold_duckdb_lock(duckdb_warehouse.duckdb_path)
    seen: list[str] = []
    try:
        with instance_for_test() as instance:
            thread, outcome = _run_in_thread(job, instance, "kpi_metrics_all")
            _wait_for(lambda: _waiting_message(capfd, seen))
            _release(holder)
            thread.join(timeout=240)
            result = outcome["result"]
    finally:
        if holder.poll() is None:
            _release(holder)
    assert result.success
    assert not _events(result, DagsterEventType.STEP_UP_FOR_RETRY)
