"""Search experience metrics on DuckDB and PostgreSQL, against hand-computed values:
cross-day clicks and refinements, time zones, zero denominators."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from dagster import materialize

from kpi_pipelines.search_experience import search_experience_metrics
from kpi_pipelines.search_experience.metrics import compute_search_experience_metrics
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines_tests.conftest import event, load_events, warehouse_resource

D = dt.date(2026, 3, 10)


def query(event_id: str, timestamp: str, session: str, user: str | None, results: list[str], **extra: Any) -> dict:
    return event(
        event_id, timestamp=timestamp, session_id=session, user_id=user, action="query", query_id=event_id,
        query="red shoes", result_ids=results, response_time_ms=15, **extra,
    )


def click(event_id: str, timestamp: str, session: str, user: str | None, query_id: str, position: int) -> dict:
    return event(
        event_id, timestamp=timestamp, session_id=session, user_id=user, action="click", query_id=query_id,
        product_id="P1", position=position,
    )


def feedback(event_id: str, timestamp: str, session: str, user: str | None, query_id: str, satisfaction: int) -> dict:
    return event(
        event_id, timestamp=timestamp, session_id=session, user_id=user, action="feedback", query_id=query_id,
        satisfaction=satisfaction,
    )


EVENTS = [
    # Day D, session s1 of user u1
    query("qa", "2026-03-10T10:00:00Z", "s1", "u1", ["P1", "P2"]),
    click("ca1", "2026-03-10T10:00:05Z", "s1", "u1", "qa", 2),
    click("ca2", "2026-03-10T10:00:02Z", "s1", "u1", "qa", 1),  # the first click: 2 000 ms
    feedback("fa", "2026-03-10T10:00:30Z", "s1", "u1", "qa", 5),
    query("qb", "2026-03-10T10:01:00Z", "s1", "u1", []),  # no results
    feedback("fb", "2026-03-10T10:01:10Z", "s1", "u1", "qb", 1),
    query("qc", "2026-03-10T10:02:00Z", "s1", "u1", ["P3"], refinement_of="qb"),
    click("cc", "2026-03-10T10:02:10.5Z", "s1", "u1", "qc", 1),  # 10 500 ms; but qd refines qc
    feedback("fc", "2026-03-10T10:02:30Z", "s1", "u1", "qc", 4),
    query("qd", "2026-03-10T10:03:00Z", "s1", "u1", ["P4"], refinement_of="qc"),
    # Anonymous session s2: a query at 04:00 on March 11 in India (22:30 UTC on D), clicked
    # two hours later, on the next UTC day; feedback from India landing on D as well
    query("qe", "2026-03-11T04:00:00+05:30", "s2", None, ["P5"]),
    click("ce", "2026-03-11T00:30:00Z", "s2", None, "qe", 3),
    feedback("fe", "2026-03-11T05:00:00+05:30", "s2", None, "qe", 3),
    # Session s3 of user u2: a click stamped a second before its query (clock skew) counts
    # as a click, not as a time to first click
    query("qf", "2026-03-10T23:59:00Z", "s3", "u2", ["P6"]),
    click("cf", "2026-03-10T23:58:59Z", "s3", "u2", "qf", 1),
    # Session s4 of user u3: active on D without searching
    event("o1", "business", timestamp="2026-03-10T12:00:00Z", session_id="s4", user_id="u3", action="order",
          order_id="o-1", revenue=10.0, currency="USD", product_ids=["P1"]),
    # 02:00 on D in India is 20:30 UTC the day before: an anonymous query with no click
    query("qz", "2026-03-10T02:00:00+05:30", "s9", None, ["P1"]),
]

EXPECTED = {
    D - dt.timedelta(days=1): {
        "search.queries": 1,
        "search.click_through_rate": 0.0,
        "search.no_results_rate": 0.0,
        "search.success_rate": 0.0,
        "search.refinements_per_session": 0.0,
        # no click, no feedback, no identified user: those metrics write no row
    },
    D: {
        "search.queries": 6,  # qa qb qc qd qe qf
        "search.click_through_rate": 4 / 6,  # qa qc qe qf
        "search.no_results_rate": 1 / 6,  # qb
        "search.success_rate": 3 / 6,  # clicked and not refined: qa qe qf (qd refines qc)
        "search.average_click_position": (2 + 1 + 1 + 1) / 4,  # ca1 ca2 cc cf (ce falls on D + 1)
        "search.time_to_first_click_ms.p50": 10_500,  # of 2 000, 10 500, 7 200 000
        "search.time_to_first_click_ms.p90": 10_500 + 0.8 * (7_200_000 - 10_500),
        "search.refinements_per_session": 2 / 3,  # qc qd over sessions s1 s2 s3
        "search.satisfaction": (5 + 1 + 4 + 3) / 4,
        "search.satisfaction.csat": 2 / 4,
        "search.searches_per_user": 5 / 3,  # qa qb qc qd (u1) qf (u2) over u1 u2 u3
        "search.sessions_per_user": 3 / 3,  # s1 s3 s4; anonymous s2 left out
    },
    D + dt.timedelta(days=1): {
        "search.queries": 0,  # events but no query: volume 0, every rate left out
        "search.average_click_position": 3.0,  # ce
    },
}


def by_day(warehouse: Warehouse, start: dt.date, end: dt.date) -> dict[dt.date, dict[str, float]]:
    out: dict[dt.date, dict[str, float]] = {}
    for metric in compute_search_experience_metrics(warehouse, start, end):
        assert metric.dimensions == {}
        out.setdefault(metric.day, {})[metric.name] = metric.value
    return out


def test_every_metric_by_hand(warehouse, write_events):
    load_events(warehouse, write_events, EVENTS)
    got = by_day(warehouse, D - dt.timedelta(days=3), D + dt.timedelta(days=3))
    assert got.keys() == EXPECTED.keys()
    for day, values in EXPECTED.items():
        assert got[day] == pytest.approx(values, rel=1e-12), day


def test_a_range_computes_only_its_days_but_matches_clicks_and_refinements_from_any_day(warehouse, write_events):
    load_events(warehouse, write_events, EVENTS)
    got = by_day(warehouse, D, D + dt.timedelta(days=1))
    assert list(got) == [D]
    assert got[D] == pytest.approx(EXPECTED[D], rel=1e-12)


def test_days_without_searches(warehouse, write_events):
    load_events(warehouse, write_events, [event("x", "generation", generation_id="g", product_id="P1", model="m",
                                         latency_ms=5, status="success", timestamp="2026-03-10T12:00:00Z")])
    assert by_day(warehouse, D - dt.timedelta(days=1), D) == {}
    # a day with events but no search at all: only the volume, 0, and the engagement it has
    assert by_day(warehouse, D, D + dt.timedelta(days=1)) == {
        D: {"search.queries": 0, "search.searches_per_user": 0.0, "search.sessions_per_user": 1.0}
    }


def test_asset_writes_its_partition_once(warehouse, write_events):
    load_events(warehouse, write_events, EVENTS)
    resource = warehouse_resource(warehouse)
    for _ in range(2):  # re-materializing replaces the partition's rows
        result = materialize([search_experience_metrics], partition_key=D.isoformat(), resources={"warehouse": resource})
        assert result.success
    rows = warehouse.query(
        "SELECT metric_name, metric_value FROM kpi_metrics WHERE source_asset = 'search_experience_metrics'"
    )
    assert dict(rows) == pytest.approx(EXPECTED[D], rel=1e-12)
    assert len(rows) == len(EXPECTED[D])
