"""Shared helpers of the API tests: a real `kpi serve` (uvicorn in a child process, as in
production, so DuckDB's file locks are between processes), seeded KPI values and alerts,
and loading the landing directory the way the landing sensor's runs do."""

from __future__ import annotations

import datetime as dt
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from kpi_pipelines.ingestion.loader import EventLoader
from kpi_pipelines.ingestion.resources import EventIngestionResource
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines_tests.conftest import SALT

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key-0123456789"
OTHER_KEY = "other-key-9876543210"
WEBHOOK_SECRET = "webhook-secret"
SEED_START = dt.date(2026, 1, 1)
SEED_DAYS = 60
SEED_METRICS = {
    "business.conversion_rate": 0.04,
    "business.revenue": 5000.0,
    "business.average_order_value": 60.0,
    "business.revenue_per_session": 2.4,
    "business.customer_lifetime_value_30d": 140.0,
    "business.retention.day_1": 0.3,
    "business.retention.day_7": 0.12,
    "search.success_rate": 0.55,
    "search.click_through_rate": 0.62,
    "search.no_results_rate": 0.05,
    "search.satisfaction": 3.9,
    "search.satisfaction.csat": 0.7,
    "search.searches_per_user": 4.2,
    "search.sessions_per_user": 1.3,
    "search.refinements_per_session": 0.4,
    "data_quality.completeness": 0.82,
    "data_quality.normalization_score": 0.75,
    "data_quality.quality_score": 0.78,
    "retrieval.precision_at_5": 0.41,
    "retrieval.precision_at_10": 0.33,
    "retrieval.recall_at_10": 0.58,
    "retrieval.mrr": 0.52,
    "retrieval.ndcg_at_10": 0.49,
    "system.latency_ms.p50": 120.0,
    "system.latency_ms.p95": 380.0,
    "system.latency_ms.p99": 720.0,
    "system.error_rate": 0.01,
    "system.requests": 25000.0,
    "content.generation_latency_ms.p50": 1800.0,
    "content.generation_latency_ms.p95": 4200.0,
    "content.generation_error_rate": 0.03,
    "content.generations": 900.0,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def warehouse_env(warehouse: Warehouse, landing: Path) -> dict[str, str]:
    return {
        "KPI_WAREHOUSE_URL": warehouse.url.render_as_string(hide_password=False),
        "KPI_WAREHOUSE_SCHEMA": warehouse.schema or "",
        "KPI_LANDING_DIR": str(landing),
        "KPI_PII_SALT": SALT,
    }


class Server:
    """`python -m kpi_pipelines.api` (the `kpi serve` command) on a free loopback port."""

    def __init__(self, env: dict[str, str], workers: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = {key: value for key, value in os.environ.items() if not key.startswith("KPI_")}
        self.env = {
            **base,
            "KPI_API_KEYS": f"{KEY},{OTHER_KEY}",
            "KPI_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "KPI_API_RATE_PER_SECOND": "1000",
            "KPI_API_RATE_BURST": "1000",
            "KPI_API_SNAPSHOT_SECONDS": "0",
            **env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kpi_pipelines.api", "--port", str(self.port), "--workers", str(workers)],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kpi serve exited: {self.process.stdout.read().decode()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("kpi serve did not start in 90 s")

    def client(self, key: str | None = KEY, **kwargs: Any) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.stdout.read().decode(errors="replace") if self.process.stdout else ""


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """start_server(warehouse, **env) -> a running Server; stopped after the test."""
    servers: list[Server] = []

    def start(warehouse: Warehouse, workers: int = 1, **env: str) -> Server:
        landing = Path(env.pop("KPI_LANDING_DIR", tmp_path / "landing"))
        if warehouse.dialect == "duckdb":
            warehouse.dispose()  # the test process must not hold the file while the API reads it
        server = Server({**warehouse_env(warehouse, landing), **env}, workers=workers)
        servers.append(server)
        return server

    yield start
    for server in servers:
        log = server.stop()
        assert "Traceback" not in log, log[-4000:]


def landing_dir(server: Server) -> Path:
    return Path(server.env["KPI_LANDING_DIR"])


def ingest_landing(warehouse: Warehouse, landing: Path) -> int:
    """Load the landing directory's complete files as the landing sensor's runs do (the
    same loader, the same file selection); returns how many files were loaded."""
    files = EventIngestionResource(pii_salt=SALT, landing_dir=str(landing)).landing_files()
    loader = EventLoader(warehouse, SALT)
    for path in files:
        loader.load_file(path)
    return len(files)


def seed_value(name: str, day_index: int) -> float:
    base = SEED_METRICS[name]
    return round(base * (1 + 0.25 * math.sin(day_index / 4.0 + len(name))), 6)


def seed_metrics(warehouse: Warehouse) -> None:
    """SEED_DAYS days of every SEED_METRICS value (overall), plus per-category completeness."""
    now = dt.datetime(2026, 3, 5)
    rows = []
    for i in range(SEED_DAYS):
        ts = dt.datetime.combine(SEED_START + dt.timedelta(days=i), dt.time())
        for name in SEED_METRICS:
            rows.append({"n": name, "v": seed_value(name, i), "d": "{}", "t": ts, "l": "day", "c": now, "s": "seed"})
        for category, value in (("shoes", 0.9), ("bags", 0.7)):
            rows.append(
                {"n": "data_quality.completeness", "v": value, "d": f'{{"category": "{category}"}}', "t": ts, "l": "day", "c": now, "s": "seed"}
            )
    with warehouse.begin() as connection:
        connection.execute(
            sa.text(
                'INSERT INTO kpi_metrics (metric_name, metric_value, dimensions, "timestamp", aggregation_level, created_at, source_asset) '
                "VALUES (:n, :v, :d, :t, :l, :c, :s)"
            ),
            rows,
        )


# The alert manager's table as its migration creates it (only used where it is missing).
ALERT_INSTANCES_DDL = """CREATE TABLE IF NOT EXISTS alert_instances (
    id VARCHAR NOT NULL PRIMARY KEY, rule_name VARCHAR NOT NULL, fingerprint VARCHAR NOT NULL,
    metric_name VARCHAR NOT NULL, aggregation_level VARCHAR NOT NULL, dimensions VARCHAR NOT NULL,
    labels VARCHAR NOT NULL, state VARCHAR NOT NULL, status VARCHAR NOT NULL, severity VARCHAR,
    triggered_at TIMESTAMP, current_value {double}, threshold_value {double}, details VARCHAR NOT NULL,
    last_evaluated_at TIMESTAMP NOT NULL, firing_notified BOOLEAN NOT NULL,
    escalation_notified BOOLEAN NOT NULL, notification_sent BOOLEAN NOT NULL)"""


def seed_alerts(warehouse: Warehouse) -> None:
    """The alert manager's table with an active, a suppressed and a resolved instance."""
    with warehouse.begin() as connection:
        connection.execute(sa.text(ALERT_INSTANCES_DDL.format(double="DOUBLE" if warehouse.dialect == "duckdb" else "DOUBLE PRECISION")))
        for i, (status, severity, hours) in enumerate((("active", "critical", 2), ("suppressed", "warning", 5), ("resolved", "warning", 1))):
            ts = dt.datetime(2026, 3, 1, 12) - dt.timedelta(hours=hours)
            connection.execute(
                sa.text(
                    "INSERT INTO alert_instances (id, rule_name, fingerprint, metric_name, aggregation_level, dimensions, labels, "
                    "state, status, severity, triggered_at, current_value, threshold_value, details, last_evaluated_at, "
                    "firing_notified, escalation_notified, notification_sent) VALUES (:id, :rule, 'fp', 'business.conversion_rate', "
                    "'day', '{}', '{}', 'firing', :status, :severity, :ts, 0.01, 0.02, '{}', :ts, true, false, true)"
                ),
                {"id": f"a{i}", "rule": f"rule_{status}", "status": status, "severity": severity, "ts": ts},
            )
