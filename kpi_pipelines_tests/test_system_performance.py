"""System-performance metrics on DuckDB and PostgreSQL: latency percentiles, server error
rate and request counts by (service, endpoint) and overall, against hand-computed values
and numpy's linear-interpolation percentiles."""

from __future__ import annotations

import datetime as dt
import json
import random

import numpy as np
import pytest
from dagster import materialize

from kpi_pipelines.system_performance import system_performance_metrics
from kpi_pipelines.system_performance.metrics import compute_system_performance
from kpi_pipelines_tests.conftest import event, load_events, metric_values, warehouse_resource

DAY = dt.date(2026, 3, 10)
NEXT_DAY = dt.date(2026, 3, 11)
OVERALL = "{}"
SEARCH = json.dumps({"endpoint": "/api/search", "service": "search-api"})
SEARCH_V2 = json.dumps({"endpoint": "/api/search", "service": "search-api-v2"})
PRODUCTS = json.dumps({"endpoint": "/api/products/{id}", "service": "catalog-api"})


def request(event_id: str, timestamp: str, service: str, endpoint: str, latency_ms: float, status_code: int) -> dict:
    return event(event_id, "system_performance", timestamp, session_id="s", source="system",
                 service=service, endpoint=endpoint, latency_ms=latency_ms, status_code=status_code)


EVENTS = [
    request("a1", "2026-03-10T01:00:00Z", "search-api", "/api/search", 10, 200),
    request("a2", "2026-03-10T02:00:00Z", "search-api", "/api/search", 20, 500),
    request("a3", "2026-03-10T03:00:00Z", "search-api", "/api/search", 30, 404),  # a client error: not counted
    request("a4", "2026-03-10T04:00:00Z", "search-api", "/api/search", 40, 200),
    request("b1", "2026-03-10T05:00:00Z", "catalog-api", "/api/products/{id}", 100, 503),
    request("c1", "2026-03-10T06:00:00Z", "search-api-v2", "/api/search", 50, 200),  # same path, other service
    request("d1", "2026-03-10T23:30:00-02:00", "search-api", "/api/search", 7, 599),  # 2026-03-11 01:30 UTC
    request("z1", "2026-03-12T00:00:00Z", "search-api", "/api/search", 1000, 500),  # outside the window
]


def percentiles(name: str, p50: float, p95: float, p99: float) -> dict[str, float]:
    return {f"{name}.p50": p50, f"{name}.p95": p95, f"{name}.p99": p99}


def group(day: dt.date, dims: str, requests: int, errors: int, p50: float, p95: float, p99: float) -> dict:
    values = {
        "system.requests": requests,
        "system.error_rate": errors / requests,
        **percentiles("system.latency_ms", p50, p95, p99),
    }
    return {(day, name, dims): value for name, value in values.items()}


EXPECTED = {
    # latencies 10 20 30 40 50 100: ranks 2.5, 4.75, 4.95 (0-based) interpolated
    **group(DAY, OVERALL, 6, 2, 35, 50 + 0.75 * 50, 50 + 0.95 * 50),
    **group(DAY, SEARCH, 4, 1, 25, 30 + 0.85 * 10, 30 + 0.97 * 10),
    **group(DAY, SEARCH_V2, 1, 0, 50, 50, 50),
    **group(DAY, PRODUCTS, 1, 1, 100, 100, 100),
    **group(NEXT_DAY, OVERALL, 1, 1, 7, 7, 7),
    **group(NEXT_DAY, SEARCH, 1, 1, 7, 7, 7),
}


def test_every_metric_matches_hand_computed_values(warehouse, write_events):
    load_events(warehouse, write_events, EVENTS)
    got = metric_values(compute_system_performance(warehouse, DAY, dt.date(2026, 3, 12)))
    assert got == pytest.approx(EXPECTED, abs=1e-9)


def test_no_requests_no_rows(warehouse, write_events):
    load_events(warehouse, write_events, EVENTS)
    assert compute_system_performance(warehouse, dt.date(2026, 3, 1), DAY) == []


def test_percentiles_agree_with_numpy(warehouse, write_events):
    rnd = random.Random(7)
    events = [
        request(f"r{n}", f"2026-03-10T{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:00Z", "svc",
                rnd.choice(("/a", "/b")), round(rnd.lognormvariate(4, 1), 3), rnd.choice((200, 200, 201, 404, 500, 502)))
        for n in range(300)
    ]
    load_events(warehouse, write_events, events)
    got = metric_values(compute_system_performance(warehouse, DAY, NEXT_DAY))
    for endpoint in ("/a", "/b", None):
        chosen = [e["metadata"] for e in events if endpoint is None or e["metadata"]["endpoint"] == endpoint]
        dims = OVERALL if endpoint is None else json.dumps({"endpoint": endpoint, "service": "svc"})
        latencies = [m["latency_ms"] for m in chosen]
        for p in (50, 95, 99):
            assert got[(DAY, f"system.latency_ms.p{p}", dims)] == pytest.approx(np.percentile(latencies, p), rel=1e-12)
        errors = sum(m["status_code"] >= 500 for m in chosen)
        assert got[(DAY, "system.error_rate", dims)] == pytest.approx(errors / len(chosen), rel=1e-12)
        assert got[(DAY, "system.requests", dims)] == len(chosen)


def test_asset_writes_its_partition_once(warehouse, write_events):
    load_events(warehouse, write_events, EVENTS)
    resource = warehouse_resource(warehouse)
    for _ in range(2):  # re-materializing replaces the partition's rows
        result = materialize([system_performance_metrics], partition_key=DAY.isoformat(), resources={"warehouse": resource})
        assert result.success
    rows = warehouse.query(
        "SELECT metric_name, dimensions, metric_value FROM kpi_metrics WHERE source_asset = 'system_performance_metrics'"
    )
    expected = {(name, dims): value for (day, name, dims), value in EXPECTED.items() if day == DAY}
    assert {(name, dims): value for name, dims, value in rows} == pytest.approx(expected, abs=1e-9)
    assert len(rows) == len(expected)
