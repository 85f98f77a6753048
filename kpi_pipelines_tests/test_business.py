"""Business KPIs on DuckDB and PostgreSQL, against a plain-Python reference over the events
as written (time zones converted to UTC days here, independently of the loader)."""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from typing import Any

import pytest
from dagster import materialize

from kpi_pipelines.business.assets import business_metrics as business_metrics_asset
from kpi_pipelines.business.metrics import business_metrics
from kpi_pipelines.ingestion.loader import EventLoader
from kpi_pipelines.kpis.store import Metric
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines_tests.conftest import SALT, event, warehouse_resource

UTC = dt.timezone.utc
ZONES = [UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-8)),
         dt.timezone(dt.timedelta(hours=14)), dt.timezone(dt.timedelta(hours=-11))]  # fmt: skip


def order(event_id: str, timestamp: str, session_id: str, revenue: float, currency: str = "USD",
          user_id: str | None = "user-1", order_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    return event(event_id, "business", timestamp, session_id, user_id, action="order",
                 order_id=order_id or f"o-{event_id}", revenue=revenue, currency=currency, product_ids=["P1"])  # fmt: skip


def search(event_id: str, timestamp: str, session_id: str, user_id: str | None = "user-1") -> dict[str, Any]:
    return event(event_id, "search", timestamp, session_id, user_id)


def load(warehouse: Warehouse, write_events, events: list[dict[str, Any]]) -> None:
    result = EventLoader(warehouse, SALT).load_file(write_events(events))
    assert result.rejected == 0


def values(metrics: list[Metric]) -> dict[tuple[str, str, str], float]:
    """{(day, name, dimensions): value}, asserting no metric is written twice."""
    out = {(m.day.isoformat(), m.name, m.dimensions_text): m.value for m in metrics}
    assert len(out) == len(metrics)
    return out


# --- an independent reference over the events as written ---------------------------------


def utc_day(timestamp: str) -> dt.date:
    return dt.datetime.fromisoformat(timestamp).astimezone(UTC).date()


def reference(events: list[dict[str, Any]], start: dt.date, end: dt.date) -> dict[tuple[str, str, str], float]:
    unique = {e["id"]: e for e in reversed(events)}.values()  # the first line of each id is kept
    sessions: dict[dt.date, set[str]] = defaultdict(set)
    order_sessions: dict[dt.date, set[str]] = defaultdict(set)
    orders: dict[dt.date, list[tuple[str | None, float, str]]] = defaultdict(list)
    active: dict[dt.date, set[str]] = defaultdict(set)
    first_seen: dict[str, dt.date] = {}
    for e in unique:
        day, user = utc_day(e["timestamp"]), e.get("user_id")
        sessions[day].add(e["session_id"])
        if user is not None:
            active[day].add(user)
            first_seen[user] = min(first_seen.get(user, day), day)
        if e["type"] == "business" and e["metadata"]["action"] == "order":
            order_sessions[day].add(e["session_id"])
            orders[day].append((user, float(e["metadata"]["revenue"]), e["metadata"]["currency"].strip().upper()))
    out: dict[tuple[str, str, str], float] = {}
    day = start
    while day < end:
        key = day.isoformat()
        if sessions[day]:
            revenue = sum(r for _, r, _ in orders[day])
            out[(key, "business.conversion_rate", "{}")] = len(order_sessions[day]) / len(sessions[day])
            out[(key, "business.revenue_per_session", "{}")] = revenue / len(sessions[day])
            out[(key, "business.revenue", "{}")] = revenue
            out[(key, "business.orders", "{}")] = len(orders[day])
            if orders[day]:
                out[(key, "business.average_order_value", "{}")] = revenue / len(orders[day])
            for currency in {c for _, _, c in orders[day]}:
                out[(key, "business.revenue", f'{{"currency": "{currency}"}}')] = sum(
                    r for _, r, c in orders[day] if c == currency
                )
        for n in (1, 7):
            cohort = {u for u, first in first_seen.items() if first == day - dt.timedelta(days=n)}
            if cohort:
                out[(key, f"business.retention.day_{n}", "{}")] = len(cohort & active[day]) / len(cohort)
        window = [(u, r) for d, rows in orders.items() if day - dt.timedelta(days=29) <= d <= day for u, r, _ in rows]
        payers = {u for u, _ in window if u is not None}
        if payers:
            out[(key, "business.customer_lifetime_value_30d", "{}")] = sum(r for u, r in window if u) / len(payers)
        day += dt.timedelta(days=1)
    return out


def random_events(seed: int, days: int = 12, sessions: int = 160) -> list[dict[str, Any]]:
    """Sessions of a few events each, written in assorted time zones, some with orders."""
    rng = random.Random(seed)
    origin = dt.datetime(2026, 3, 1, tzinfo=UTC)
    events = []
    for s in range(sessions):
        user = rng.choice([None] + [f"user-{u}" for u in range(40)])
        start = origin + dt.timedelta(minutes=rng.randrange(days * 24 * 60))
        for k in range(rng.randint(1, 4)):
            instant = start + dt.timedelta(minutes=rng.randrange(0, 180))
            timestamp = instant.astimezone(rng.choice(ZONES)).isoformat()
            event_id = f"e-{s}-{k}"
            if rng.random() < 0.25:
                revenue = rng.choice([round(rng.uniform(1, 300), 2), 0, 10])
                events.append(order(event_id, timestamp, f"s-{s}", revenue, rng.choice(["USD", "eur", " gbp "]), user))
            else:
                events.append(search(event_id, timestamp, f"s-{s}", user))
    return events


# --- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_every_business_metric_matches_the_reference_over_a_range(warehouse, write_events, seed):
    events = random_events(seed)
    events.append(dict(events[0]))  # a repeated id is stored once
    load(warehouse, write_events, events)
    start, end = dt.date(2026, 3, 1), dt.date(2026, 3, 14)
    got = values(business_metrics(warehouse, start, end))
    expected = reference(events, start, end)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_pinned_definitions_on_a_hand_made_day(warehouse, write_events):
    load(warehouse, write_events, [
        search("a1", "2026-03-10T08:00:00Z", "s-a"),
        order("a2", "2026-03-10T08:05:00Z", "s-a", 30.0, "usd"),
        order("a3", "2026-03-10T08:06:00Z", "s-a", 20.0, "USD"),  # a second order of the same session
        search("b1", "2026-03-10T09:00:00Z", "s-b"),
        order("c1", "2026-03-10T23:30:00-05:00", "s-c", 99.0),  # 2026-03-11 04:30 UTC: day 11
        order("d1", "2026-03-11T01:00:00+03:00", "s-d", 50.0, "EUR"),  # 2026-03-10 22:00 UTC: day 10
        search("e1", "2026-03-12T10:00:00Z", "s-e"),  # a day without orders
    ])  # fmt: skip
    got = values(business_metrics(warehouse, dt.date(2026, 3, 10), dt.date(2026, 3, 14)))
    day10 = {name: v for (day, name, dims), v in got.items() if day == "2026-03-10" and dims == "{}"}
    assert day10["business.conversion_rate"] == pytest.approx(2 / 3)  # s-a and s-d of s-a, s-b, s-d
    assert day10["business.orders"] == 3
    assert day10["business.revenue"] == pytest.approx(100.0)
    assert day10["business.average_order_value"] == pytest.approx(100.0 / 3)
    assert day10["business.revenue_per_session"] == pytest.approx(100.0 / 3)
    assert got[("2026-03-10", "business.revenue", '{"currency": "USD"}')] == pytest.approx(50.0)
    assert got[("2026-03-10", "business.revenue", '{"currency": "EUR"}')] == pytest.approx(50.0)
    assert got[("2026-03-11", "business.conversion_rate", "{}")] == 1.0
    # a day with events and no orders: conversion 0, no average order value (zero denominator)
    assert got[("2026-03-12", "business.conversion_rate", "{}")] == 0.0
    assert got[("2026-03-12", "business.orders", "{}")] == 0.0
    assert ("2026-03-12", "business.average_order_value", "{}") not in got
    # a day without any event: no row at all, except the trailing lifetime value
    assert {name for (day, name, _) in got if day == "2026-03-13"} == {"business.customer_lifetime_value_30d"}


def test_two_order_events_with_one_order_id_count_as_two_orders(warehouse, write_events):
    load(warehouse, write_events, [
        order("x1", "2026-03-10T08:00:00Z", "s-x", 40.0, order_id="o-1"),
        order("x2", "2026-03-10T08:01:00Z", "s-x", 40.0, order_id="o-1"),
    ])  # fmt: skip
    got = values(business_metrics(warehouse, dt.date(2026, 3, 10), dt.date(2026, 3, 11)))
    assert got[("2026-03-10", "business.orders", "{}")] == 2
    assert got[("2026-03-10", "business.revenue", "{}")] == 80.0
    assert got[("2026-03-10", "business.average_order_value", "{}")] == 40.0


def test_retention_cohorts_use_all_stored_history(warehouse, write_events):
    load(warehouse, write_events, [
        search("h1", "2026-03-01T10:00:00Z", "s-1", "old"),  # first seen long before the partition
        search("h2", "2026-03-09T10:00:00Z", "s-2", "old"),
        search("h3", "2026-03-10T10:00:00Z", "s-3", "old"),
        search("n1", "2026-03-09T10:00:00Z", "s-4", "new-1"),  # cohort of 2026-03-09
        search("n2", "2026-03-10T23:59:59Z", "s-5", "new-1"),  # returns on day 1
        search("n3", "2026-03-09T12:00:00+02:00", "s-6", "new-2"),  # cohort of 2026-03-09, no return
        search("n4", "2026-03-10T00:30:00+01:00", "s-7", "new-2"),  # 2026-03-09 23:30 UTC: same day
        search("w1", "2026-03-03T10:00:00Z", "s-8", "week"),  # cohort of 2026-03-03
        search("w2", "2026-03-10T10:00:00Z", "s-9", "week"),  # returns on day 7
        search("anon", "2026-03-09T10:00:00Z", "s-10", None),  # no user: in no cohort
    ])  # fmt: skip
    got = values(business_metrics(warehouse, dt.date(2026, 3, 10), dt.date(2026, 3, 11)))
    assert got[("2026-03-10", "business.retention.day_1", "{}")] == 0.5
    assert got[("2026-03-10", "business.retention.day_7", "{}")] == 1.0
    got = values(business_metrics(warehouse, dt.date(2026, 3, 11), dt.date(2026, 3, 12)))
    assert ("2026-03-11", "business.retention.day_1", "{}") not in got  # nobody first seen on 2026-03-10


def test_lifetime_value_averages_30_days_of_revenue_over_paying_users(warehouse, write_events):
    load(warehouse, write_events, [
        order("o1", "2026-02-08T10:00:00Z", "s-1", 1000.0, user_id="u1"),  # 30 days before: outside
        order("o2", "2026-02-09T10:00:00Z", "s-2", 10.0, user_id="u1"),  # first day of the window
        order("o3", "2026-03-10T10:00:00Z", "s-3", 20.0, user_id="u1"),
        order("o4", "2026-03-10T11:00:00Z", "s-4", 30.0, user_id="u2"),
        order("o5", "2026-03-10T12:00:00Z", "s-5", 500.0, user_id=None),  # anonymous: not a customer
    ])  # fmt: skip
    got = values(business_metrics(warehouse, dt.date(2026, 3, 10), dt.date(2026, 3, 11)))
    assert got[("2026-03-10", "business.customer_lifetime_value_30d", "{}")] == pytest.approx(60.0 / 2)


@pytest.mark.slow
def test_the_asset_replaces_its_partition_rows(warehouse, write_events):
    load(warehouse, write_events, random_events(3, days=3, sessions=40))
    resource = warehouse_resource(warehouse)
    for _ in range(2):
        result = materialize([business_metrics_asset], partition_key="2026-03-02", resources={"warehouse": resource})
        assert result.success
    stored = warehouse.query(
        "SELECT metric_name, dimensions, metric_value FROM kpi_metrics WHERE source_asset = 'business_metrics'"
    )
    expected = {
        (name, dims): value
        for (day, name, dims), value in values(business_metrics(warehouse, dt.date(2026, 3, 2), dt.date(2026, 3, 3))).items()
    }
    assert {(name, dims): value for name, dims, value in stored} == expected
    assert len(stored) == len(expected)
