"""Content-generation metrics on DuckDB and PostgreSQL, against hand-computed values:
review outcome rates, generation errors and latency percentiles, time to review (reviews
joined to their generation across days), by model and overall; zero denominators."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from dagster import materialize

from kpi_pipelines.content_generation import content_generation_metrics
from kpi_pipelines.content_generation.metrics import compute_content_generation
from kpi_pipelines_tests.conftest import event, load_events, metric_values, warehouse_resource

D0, D1, D2, D3 = (dt.date(2026, 3, d) for d in (9, 10, 11, 12))
OVERALL = "{}"
MODEL_A = json.dumps({"model": "m-a"})
MODEL_B = json.dumps({"model": "m-b"})


def generation(event_id: str, timestamp: str, generation_id: str, model: str, latency_ms: float, status: str) -> dict:
    return event(event_id, "generation", timestamp, session_id="job-1", user_id=None, generation_id=generation_id,
                 product_id="P1", model=model, latency_ms=latency_ms, status=status)


def review(event_id: str, timestamp: str, generation_id: str, decision: str, review_time_ms: float) -> dict:
    return event(event_id, "review", timestamp, session_id="rev-1", user_id="reviewer-1", source="dashboard",
                 generation_id=generation_id, product_id="P1", decision=decision, review_time_ms=review_time_ms)


EVENTS = [
    generation("e0", "2026-03-09T23:00:00Z", "g0", "m-a", 500, "success"),
    generation("e1", "2026-03-10T10:00:00Z", "g1", "m-a", 100, "success"),
    generation("e2", "2026-03-10T10:10:00Z", "g2", "m-a", 300, "success"),
    generation("e3", "2026-03-10T10:20:00Z", "g3", "m-a", 5000, "error"),
    generation("e4", "2026-03-10T11:00:00Z", "g4", "m-b", 200, "success"),
    generation("e5", "2026-03-10T23:30:00-02:00", "g5", "m-b", 700, "success"),  # 2026-03-11 01:30 UTC
    generation("e6", "2026-03-10T12:00:00Z", "g6", "m-b", 50, "error"),  # g6 failed, then succeeded
    generation("e7", "2026-03-10T12:05:00Z", "g6", "m-b", 150, "success"),
    review("r1", "2026-03-10T01:00:00Z", "g0", "approved", 1000),  # generated the day before: 2 h
    review("r2", "2026-03-10T10:30:00Z", "g1", "edited", 3000),  # 30 min
    review("r3", "2026-03-10T11:10:00.125Z", "g4", "rejected", 2000),  # 10 min 125 ms
    review("r4", "2026-03-10T12:15:00Z", "g6", "approved", 4000),  # 10 min after the successful g6
    review("r5", "2026-03-10T13:00:00Z", "g-unknown", "approved", 6000),  # no generation: overall only
    review("r6", "2026-03-10T20:00:00Z", "g5", "approved", 1000),  # before its generation: no time to review
    review("r7", "2026-03-12T10:00:00Z", "g1", "approved", 500),  # two days after g1
]

EXPECTED = {
    # 2026-03-09: one generation, no reviews
    (D0, "content.generations", OVERALL): 1,
    (D0, "content.generation_error_rate", OVERALL): 0.0,
    (D0, "content.generation_latency_ms.p50", OVERALL): 500,
    (D0, "content.generation_latency_ms.p95", OVERALL): 500,
    (D0, "content.generations", MODEL_A): 1,
    (D0, "content.generation_error_rate", MODEL_A): 0.0,
    (D0, "content.generation_latency_ms.p50", MODEL_A): 500,
    (D0, "content.generation_latency_ms.p95", MODEL_A): 500,
    # 2026-03-10 overall: 6 generations (2 errors), successful latencies 100 150 200 300; 6 reviews
    (D1, "content.generations", OVERALL): 6,
    (D1, "content.generation_error_rate", OVERALL): 2 / 6,
    (D1, "content.generation_latency_ms.p50", OVERALL): 175,
    (D1, "content.generation_latency_ms.p95", OVERALL): 200 + 0.85 * 100,
    (D1, "content.approval_rate", OVERALL): 4 / 6,
    (D1, "content.edit_rate", OVERALL): 1 / 6,
    (D1, "content.rejection_rate", OVERALL): 1 / 6,
    (D1, "content.review_time_ms.mean", OVERALL): 17000 / 6,
    (D1, "content.time_to_review_ms.p50", OVERALL): (600_125 + 1_800_000) / 2,  # of 600000 600125 1800000 7200000
    # m-a: e1 e2 e3; reviews r1 r2
    (D1, "content.generations", MODEL_A): 3,
    (D1, "content.generation_error_rate", MODEL_A): 1 / 3,
    (D1, "content.generation_latency_ms.p50", MODEL_A): 200,
    (D1, "content.generation_latency_ms.p95", MODEL_A): 100 + 0.95 * 200,
    (D1, "content.approval_rate", MODEL_A): 1 / 2,
    (D1, "content.edit_rate", MODEL_A): 1 / 2,
    (D1, "content.rejection_rate", MODEL_A): 0.0,
    (D1, "content.review_time_ms.mean", MODEL_A): 2000,
    (D1, "content.time_to_review_ms.p50", MODEL_A): (7_200_000 + 1_800_000) / 2,
    # m-b: e4 e6 e7; reviews r3 r4 r6
    (D1, "content.generations", MODEL_B): 3,
    (D1, "content.generation_error_rate", MODEL_B): 1 / 3,
    (D1, "content.generation_latency_ms.p50", MODEL_B): 175,
    (D1, "content.generation_latency_ms.p95", MODEL_B): 150 + 0.95 * 50,
    (D1, "content.approval_rate", MODEL_B): 2 / 3,
    (D1, "content.edit_rate", MODEL_B): 0.0,
    (D1, "content.rejection_rate", MODEL_B): 1 / 3,
    (D1, "content.review_time_ms.mean", MODEL_B): 7000 / 3,
    (D1, "content.time_to_review_ms.p50", MODEL_B): (600_125 + 600_000) / 2,
    # 2026-03-11: e5 only, no reviews
    (D2, "content.generations", OVERALL): 1,
    (D2, "content.generation_error_rate", OVERALL): 0.0,
    (D2, "content.generation_latency_ms.p50", OVERALL): 700,
    (D2, "content.generation_latency_ms.p95", OVERALL): 700,
    (D2, "content.generations", MODEL_B): 1,
    (D2, "content.generation_error_rate", MODEL_B): 0.0,
    (D2, "content.generation_latency_ms.p50", MODEL_B): 700,
    (D2, "content.generation_latency_ms.p95", MODEL_B): 700,
    # 2026-03-12: r7 only, no generations: no generation rate, latency or count
    **{
        (D3, name, dims): value
        for dims in (OVERALL, MODEL_A)
        for name, value in {
            "content.approval_rate": 1.0,
            "content.edit_rate": 0.0,
            "content.rejection_rate": 0.0,
            "content.review_time_ms.mean": 500,
            "content.time_to_review_ms.p50": 2 * 86_400_000,
        }.items()
    },
}


def test_every_metric_matches_hand_computed_values(warehouse, write_events):
    load_events(warehouse, write_events, EVENTS)
    got = metric_values(compute_content_generation(warehouse, D0, dt.date(2026, 3, 13)))
    assert got == pytest.approx(EXPECTED, abs=1e-6)


def test_a_one_day_window_still_joins_generations_of_other_days(warehouse, write_events):
    load_events(warehouse, write_events, EVENTS)
    got = metric_values(compute_content_generation(warehouse, D3, D3 + dt.timedelta(days=1)))
    assert got == pytest.approx({key: value for key, value in EXPECTED.items() if key[0] == D3}, abs=1e-6)


def test_no_events_no_rows(warehouse, write_events):
    load_events(warehouse, write_events, EVENTS)
    assert compute_content_generation(warehouse, dt.date(2026, 4, 1), dt.date(2026, 4, 3)) == []


def test_only_failed_generations_write_no_latency(warehouse, write_events):
    load_events(warehouse, write_events, [generation("x1", "2026-03-10T10:00:00Z", "gx", "m-c", 900, "error")])
    got = metric_values(compute_content_generation(warehouse, D1, D2))
    assert got == {
        (D1, "content.generations", OVERALL): 1.0,
        (D1, "content.generation_error_rate", OVERALL): 1.0,
        (D1, "content.generations", json.dumps({"model": "m-c"})): 1.0,
        (D1, "content.generation_error_rate", json.dumps({"model": "m-c"})): 1.0,
    }


def test_asset_writes_its_partition_once(warehouse, write_events):
    load_events(warehouse, write_events, EVENTS)
    resource = warehouse_resource(warehouse)
    for _ in range(2):  # re-materializing replaces the partition's rows
        result = materialize([content_generation_metrics], partition_key=D1.isoformat(), resources={"warehouse": resource})
        assert result.success
    rows = warehouse.query(
        "SELECT metric_name, dimensions, metric_value FROM kpi_metrics WHERE source_asset = 'content_generation_metrics'"
    )
    expected = {(name, dims): value for (day, name, dims), value in EXPECTED.items() if day == D1}
    assert {(name, dims): value for name, dims, value in rows} == pytest.approx(expected, abs=1e-6)
    assert len(rows) == len(expected)
