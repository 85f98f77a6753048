"""Databases that accept connections but never answer (issue 11, item 4), with real parts:
a TCP listener on 127.0.0.1 that accepts and stays silent (a "black hole" PostgreSQL), a real
PostgreSQL table held by another session's LOCK TABLE (the statement timeout for real), a
DuckDB file held by another process past KPI_WAREHOUSE_LOCK_TIMEOUT, and a FIFO in place of the DuckDB file (opening it
blocks until a writer comes, which never does). `kpi metrics` fails with one line within
its timeout; `kpi serve` answers 503 with `Retry-After` within bounds and exits within a few
seconds of SIGTERM while a request hangs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from kpi_pipelines.api.config import SHUTDOWN_SECONDS
from kpi_pipelines.api.security import sign
from kpi_pipelines.warehouse import Warehouse, WarehouseError, WarehouseTimeout
from kpi_pipelines_tests.conftest import event
from kpi_pipelines_tests.test_api_helpers import (  # noqa: F401  (start_server is a fixture)
    KEY,
    REPO,
    WEBHOOK_SECRET,
    Server,
    ingest_landing,
    landing_dir,
    seed_metrics,
    start_server,
)

KPI = str(Path(sys.executable).with_name("kpi"))
SLACK = 3.0  # seconds allowed beyond a timeout: scheduling on a busy 2-core machine


@pytest.fixture
def black_hole() -> Iterator[int]:
    """The port of a listener on 127.0.0.1 that accepts every connection and never answers."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:  # the accept timeout: look at `stop` again
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


def kpi_metrics(env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("KPI_")}
    started = time.monotonic()
    result = subprocess.run([KPI, "metrics"], env={**base, **env}, cwd=REPO, capture_output=True, text=True, timeout=120)
    return result, time.monotonic() - started


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("kpi: error: "), result.stderr
    return lines[0]


@pytest.fixture
def lock_table():
    """lock_table(warehouse, *tables): another PostgreSQL session holds the tables in ACCESS
    EXCLUSIVE mode until the returned function is called (or the test ends)."""
    engines: list[sa.Engine] = []

    def lock(warehouse: Warehouse, *tables: str):
        engine = sa.create_engine(warehouse.url)
        engines.append(engine)
        connection = engine.connect()
        transaction = connection.begin()
        for table in tables:
            connection.execute(sa.text(f'LOCK TABLE "{warehouse.schema_name}"."{table}" IN ACCESS EXCLUSIVE MODE'))

        def release() -> None:
            transaction.rollback()
            connection.close()

        return release

    yield lock
    for engine in engines:
        engine.dispose()


# --------------------------------------------------------------------------- kpi metrics


def test_kpi_metrics_gives_up_in_one_line_on_a_server_that_never_answers(black_hole):
    refused, baseline = kpi_metrics({"KPI_WAREHOUSE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"})
    one_error_line(refused)  # the cost of starting the command and failing at once
    result, elapsed = kpi_metrics(
        {"KPI_WAREHOUSE_URL": f"postgresql+psycopg://nobody@127.0.0.1:{black_hole}/none", "KPI_WAREHOUSE_CONNECT_TIMEOUT": "2"}
    )
    line = one_error_line(result)
    assert "no answer within 2 s (KPI_WAREHOUSE_CONNECT_TIMEOUT)" in line
    assert 2 <= elapsed < baseline + 2 + SLACK, (elapsed, baseline)


def test_kpi_metrics_statement_timeout_on_a_locked_table(postgres_warehouse, lock_table):
    seed_metrics(postgres_warehouse)
    env = {
        "KPI_WAREHOUSE_URL": postgres_warehouse.url.render_as_string(hide_password=False),
        "KPI_WAREHOUSE_SCHEMA": postgres_warehouse.schema,
        "KPI_WAREHOUSE_STATEMENT_TIMEOUT": "1.5",
    }
    release = lock_table(postgres_warehouse, "kpi_metrics")
    try:
        result, elapsed = kpi_metrics(env)
    finally:
        release()
    line = one_error_line(result)
    assert "no answer within 1.5 s (KPI_WAREHOUSE_STATEMENT_TIMEOUT): canceling statement due to statement timeout" in line
    assert elapsed >= 1.5
    result, _ = kpi_metrics(env)  # the lock released: the same command answers
    assert result.returncode == 0 and "business.revenue" in result.stdout, result.stderr


def test_kpi_metrics_on_a_duckdb_file_held_past_the_lock_timeout_fails_in_one_line(tmp_path):
    path = tmp_path / "held.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, sys, time; db = duckdb.connect({str(path)!r}); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result, _ = kpi_metrics({"KPI_WAREHOUSE_URL": f"duckdb:///{path}", "KPI_WAREHOUSE_LOCK_TIMEOUT": "0.5"})
    finally:
        holder.kill()
        holder.wait()
    line = one_error_line(result)  # (a wait under a second prints no waiting message)
    assert str(path) in line and f"held by process {holder.pid} " in line and "after 0.5 s (KPI_WAREHOUSE_LOCK_TIMEOUT)" in line


def test_statement_timeout_interrupts_a_long_statement_and_the_connection_stays_usable(warehouse):
    interactive = Warehouse(warehouse.url.render_as_string(hide_password=False), warehouse.schema, statement_timeout=0.5)
    try:
        slow = (
            "SELECT pg_sleep(20)"
            if warehouse.dialect == "postgresql"
            else "SELECT count(*) FROM range(100000000) a, range(100000) b WHERE a.range + b.range = 7"
        )
        started = time.monotonic()
        with pytest.raises(WarehouseTimeout, match=r"no answer within 0\.5 s \(KPI_WAREHOUSE_STATEMENT_TIMEOUT\)"):
            interactive.scalar(slow)
        assert 0.5 <= time.monotonic() - started < 0.5 + SLACK
        assert interactive.scalar("SELECT 41 + 1") == 42
        if warehouse.dialect == "postgresql":  # batch work (Dagster runs, kpi ingest) has no statement timeout
            assert interactive.scalar("SHOW statement_timeout") == "500ms"
            assert warehouse.scalar("SHOW statement_timeout") == "0"
    finally:
        interactive.dispose()


def test_timeout_settings_are_checked():
    with pytest.raises(WarehouseError, match="KPI_WAREHOUSE_STATEMENT_TIMEOUT"):
        Warehouse("duckdb:///:memory:", statement_timeout=0)
    env = {**os.environ, "KPI_WAREHOUSE_CONNECT_TIMEOUT": "soon"}
    result = subprocess.run([KPI, "metrics"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "kpi: error: KPI_WAREHOUSE_CONNECT_TIMEOUT='soon': expected a positive number of seconds"
    ]


# --------------------------------------------------------------------------- kpi serve


def timed(call) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_503_within(response: httpx.Response, elapsed: float, low: float, high: float) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "5"
    assert low <= elapsed < high, elapsed


@pytest.mark.slow
def test_serve_answers_503_with_retry_after_when_postgresql_never_answers(black_hole, tmp_path):
    server = Server({
        "KPI_WAREHOUSE_URL": f"postgresql+psycopg://nobody@127.0.0.1:{black_hole}/none",
        "KPI_LANDING_DIR": str(tmp_path),
        "KPI_WAREHOUSE_CONNECT_TIMEOUT": "2",
        "KPI_WAREHOUSE_STATEMENT_TIMEOUT": "2",
    })
    try:
        order = b'{"order_id": "o1", "session_id": "s", "timestamp": "2026-03-10T12:00:00Z", "revenue": 1, "currency": "EUR", "product_ids": []}'
        with server.client() as client:
            calls = [
                lambda: client.get("/healthz"),
                lambda: client.get("/api/kpi/metrics"),
                lambda: client.get("/api/kpi/business/revenue-metrics"),
                lambda: client.get("/api/kpi/alerts"),
                lambda: client.post("/api/kpi/events", json=[event("e1")]),
                lambda: client.post(
                    "/api/kpi/webhooks/business", content=order,
                    headers={"Content-Type": "application/json", "X-KPI-Signature": sign(WEBHOOK_SECRET, order)},
                ),
            ]
            for call in calls:
                response, elapsed = timed(call)
                assert_503_within(response, elapsed, 2, 2 + SLACK)
                assert "KPI_WAREHOUSE_CONNECT_TIMEOUT" in response.text
    finally:
        log = server.stop()
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.slow
def test_serve_answers_503_while_a_table_is_locked_and_stores_nothing_half(postgres_warehouse, start_server, lock_table):
    seed_metrics(postgres_warehouse)
    server = start_server(postgres_warehouse, KPI_WAREHOUSE_STATEMENT_TIMEOUT="1.5")
    with server.client() as client:
        assert client.get("/api/kpi/metrics", params={"start": "2026-01-01", "end": "2026-01-01"}).status_code == 200
        release = lock_table(postgres_warehouse, "kpi_metrics", "raw_events")
        try:
            response, elapsed = timed(lambda: client.get("/api/kpi/metrics", params={"start": "2026-01-01", "end": "2026-01-01"}))
            assert_503_within(response, elapsed, 1.5, 1.5 + SLACK)
            assert "KPI_WAREHOUSE_STATEMENT_TIMEOUT" in response.text
            response, elapsed = timed(lambda: client.post("/api/kpi/events", json=[event("locked-1"), event("locked-2")]))
            assert_503_within(response, elapsed, 1.5, 1.5 + SLACK)
            assert client.get("/healthz").status_code == 200  # the server answers; only those tables wait
        finally:
            release()
        assert postgres_warehouse.scalar("SELECT count(*) FROM raw_events") == 0  # nothing acknowledged, nothing stored
        response = client.post("/api/kpi/events", json=[event("locked-1"), event("locked-2")])
        assert response.status_code == 202 and response.json()["accepted"] == 2
        metrics = client.get("/api/kpi/metrics", params={"start": "2026-01-01", "end": "2026-01-01", "name": "business.revenue"})
        assert metrics.status_code == 200 and metrics.json()["count"] == 1


@pytest.mark.slow
def test_serve_on_a_duckdb_file_that_never_opens_answers_503_and_still_collects(duckdb_warehouse, start_server, tmp_path):
    fifo = tmp_path / "never.duckdb"
    os.mkfifo(fifo)
    server = start_server(
        duckdb_warehouse,
        KPI_WAREHOUSE_URL=f"duckdb:///{fifo}",
        KPI_WAREHOUSE_CONNECT_TIMEOUT="1",
        KPI_WAREHOUSE_STATEMENT_TIMEOUT="1",
    )
    deadline = 1 + 1 + 2  # connect + statement + 2 s: the API's wait for the warehouse
    with server.client() as client:
        for path in ("/api/kpi/metrics", "/api/kpi/alerts", "/healthz"):
            response, elapsed = timed(lambda: client.get(path))
            assert_503_within(response, elapsed, deadline, deadline + SLACK)
        response = client.post("/api/kpi/events", json=[event("while-stuck")])
        assert response.status_code == 202 and response.json()["accepted"] == 1  # the landing directory works
    assert ingest_landing(duckdb_warehouse, landing_dir(server)) == 1
    assert duckdb_warehouse.scalar("SELECT event_id FROM raw_events") == "while-stuck"


@pytest.mark.parametrize("stuck", ["postgresql-black-hole", "duckdb-fifo"])
@pytest.mark.slow
def test_serve_exits_within_seconds_of_sigterm_while_a_request_hangs(stuck, black_hole, tmp_path):
    if stuck == "duckdb-fifo":
        os.mkfifo(tmp_path / "never.duckdb")
        url = f"duckdb:///{tmp_path / 'never.duckdb'}"
    else:
        url = f"postgresql+psycopg://nobody@127.0.0.1:{black_hole}/none"
    server = Server({
        "KPI_WAREHOUSE_URL": url,
        "KPI_LANDING_DIR": str(tmp_path / "landing"),
        "KPI_WAREHOUSE_CONNECT_TIMEOUT": "60",  # the request would hang a minute or more
        "KPI_WAREHOUSE_STATEMENT_TIMEOUT": "60",
    })
    outcome: dict[str, object] = {}

    def hanging_request() -> None:
        try:
            with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=120) as client:
                outcome["response"] = client.get("/api/kpi/metrics")
        except httpx.HTTPError as error:
            outcome["error"] = error

    request = threading.Thread(target=hanging_request)
    request.start()
    time.sleep(1.5)
    assert request.is_alive() and server.process.poll() is None  # the request hangs
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=60)
    exited = time.monotonic() - started
    request.join(timeout=10)
    log = server.stop()
    assert exited < SHUTDOWN_SECONDS + SLACK, (exited, log[-2000:])
    assert server.process.returncode == -signal.SIGTERM  # uvicorn re-raises the signal once shut down
    assert isinstance(outcome.get("error"), httpx.RemoteProtocolError)  # dropped, never answered 2xx
    assert "Traceback" not in log and "Finished server process" in log, log[-3000:]
