"""The alert state machine on a fake clock, no database: table tests in the style of
Grafana's state-transition tests and Alertmanager's dedup/notification-log tests."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from kpi_pipelines.alerts.messages import render_alerts
from kpi_pipelines.alerts.rules import Rule
from kpi_pipelines.alerts.state import (
    NO_DATA,
    AnomalyPoint,
    Observation,
    SeriesState,
    classify,
    fingerprint,
    observe_anomaly,
    observe_change,
    observe_value,
    percent_change,
    step,
)

T0 = dt.datetime(2026, 3, 11, 0, 0)
M = dt.timedelta(minutes=1)


def rule(**overrides) -> Rule:
    base = dict(
        name="low_conversion",
        metric="business.conversion_rate",
        condition="less_than",
        thresholds={"warning": 0.03, "critical": 0.02},
        channels=("kpi-alerts",),
        repeat_interval=dt.timedelta(hours=4),
    )
    base.update(overrides)
    return Rule(**base)


def run(r: Rule, timeline: list[tuple[int, float | None]], silenced_minutes: set[int] = frozenset()):
    """Feed (minute, value) observations; return [(minute, state, severity, [(kind, channels)...])]."""
    state = SeriesState()
    out = []
    for minute, value in timeline:
        observation = NO_DATA if value is None else observe_value(r, value)
        result = step(state, observation, T0 + minute * M, r, silenced=minute in silenced_minutes)
        state = result.state
        shown = "resolved" if result.resolved and result.transition and result.transition.endswith("resolved") else state.state
        out.append((minute, shown, state.severity, [(a.kind, a.channels) for a in result.actions]))
    return out


def kinds(trace) -> list[tuple[int, str]]:
    return [(minute, kind) for minute, _, _, actions in trace for kind, _ in actions]


FIRE = [("firing", ("kpi-alerts",))]


@pytest.mark.parametrize(
    "name,r,timeline,states,notified",
    [
        (
            "fires at once when for is 0, once",
            rule(),
            [(0, 0.01), (1, 0.01), (2, 0.01)],
            ["firing", "firing", "firing"],
            [(0, "firing")],
        ),
        (
            "pending until the condition held for `for`",
            rule(for_=10 * M),
            [(0, 0.025), (5, 0.025), (10, 0.025), (15, 0.025)],
            ["pending", "pending", "firing", "firing"],
            [(10, "firing")],
        ),
        (
            "pending that stops holding goes back to normal without a word",
            rule(for_=10 * M),
            [(0, 0.025), (5, 0.05), (10, 0.025), (15, 0.025), (20, 0.025)],
            ["pending", "normal", "pending", "pending", "firing"],
            [(20, "firing")],
        ),
        (
            "flapping around the threshold without for/keep_firing_for: every edge is notified",
            rule(),
            [(0, 0.029), (1, 0.031), (2, 0.029), (3, 0.031)],
            ["firing", "resolved", "firing", "resolved"],
            [(0, "firing"), (1, "resolved"), (2, "firing"), (3, "resolved")],
        ),
        (
            "flapping damped by for: never fires",
            rule(for_=2 * M),
            [(0, 0.029), (1, 0.031), (2, 0.029), (3, 0.031), (4, 0.029)],
            ["pending", "normal", "pending", "normal", "pending"],
            [],
        ),
        (
            "flapping damped by keep_firing_for: one firing, one resolution",
            rule(keep_firing_for=5 * M),
            [(0, 0.029), (1, 0.031), (2, 0.029), (3, 0.031), (4, 0.031), (8, 0.031)],
            ["firing", "recovering", "firing", "recovering", "recovering", "resolved"],
            [(0, "firing"), (8, "resolved")],
        ),
        (
            "repeat interval: again only after 4h, while still firing",
            rule(),
            [(0, 0.01), (60, 0.01), (239, 0.01), (240, 0.01), (300, 0.01), (480, 0.01)],
            ["firing"] * 6,
            [(0, "firing"), (240, "repeat"), (480, "repeat")],
        ),
        (
            "resolution is notified once",
            rule(),
            [(0, 0.01), (1, 0.05), (2, 0.05), (3, 0.05)],
            ["firing", "resolved", "normal", "normal"],
            [(0, "firing"), (1, "resolved")],
        ),
        (
            "severity rising is notified at once; falling waits for the repeat",
            rule(),
            [(0, 0.025), (1, 0.015), (2, 0.025), (240, 0.025), (241, 0.025)],
            ["firing"] * 5,
            [(0, "firing"), (1, "firing"), (241, "repeat")],  # 4h after the last notification
        ),
        (
            "no data keeps the state (and a firing alert keeps repeating)",
            rule(),
            [(0, 0.01), (60, None), (240, None), (300, 0.05)],
            ["firing", "firing", "firing", "resolved"],
            [(0, "firing"), (240, "repeat"), (300, "resolved")],
        ),
        (
            "no_data: ok resolves",
            rule(no_data="ok"),
            [(0, 0.01), (60, None)],
            ["firing", "resolved"],
            [(0, "firing"), (60, "resolved")],
        ),
    ],
)
def test_state_transitions(name, r, timeline, states, notified):
    trace = run(r, timeline)
    assert [state for _, state, _, _ in trace] == states, name
    assert kinds(trace) == notified, name


def test_firing_notification_goes_to_the_rule_channels_with_its_severity():
    r = rule(channels=("kpi-alerts", "data-team"))
    result = step(SeriesState(), observe_value(r, 0.015), T0, r)
    assert [(a.kind, a.channels, a.severity) for a in result.actions] == [("firing", ("kpi-alerts", "data-team"), "critical")]
    assert result.state.triggered_at == T0 and result.state.value == 0.015 and result.state.threshold == 0.02


def test_silence_suppresses_then_a_still_firing_alert_is_notified_when_it_ends():
    r = rule()
    trace = run(r, [(0, 0.01), (30, 0.01), (60, 0.01), (90, 0.01), (120, 0.05)], silenced_minutes={0, 30})
    assert kinds(trace) == [(60, "firing"), (120, "resolved")]


def test_silence_holds_back_the_resolution_too():
    r = rule()
    trace = run(r, [(0, 0.01), (30, 0.05)], silenced_minutes={30})
    assert kinds(trace) == [(0, "firing")]
    assert trace[-1][1] == "resolved"


def test_a_silenced_alert_that_never_was_notified_resolves_quietly():
    r = rule()
    trace = run(r, [(0, 0.01), (30, 0.05)], silenced_minutes={0})
    assert kinds(trace) == []


def test_escalation_after_escalate_after_while_critical_then_every_repeat_interval():
    r = rule(escalate_after=dt.timedelta(hours=2), escalation_channels=("oncall",))
    trace = run(r, [(0, 0.01), (60, 0.01), (120, 0.01), (180, 0.01), (240, 0.01), (360, 0.01), (400, 0.05)])
    sent = [(minute, kind, channels) for minute, _, _, actions in trace for kind, channels in actions]
    assert sent == [
        (0, "firing", ("kpi-alerts",)),
        (120, "escalation", ("oncall",)),
        (240, "repeat", ("kpi-alerts",)),
        (360, "escalation", ("oncall",)),
        (400, "resolved", ("kpi-alerts",)),
        (400, "resolved", ("oncall",)),
    ]


def test_escalation_needs_critical_for_the_whole_escalate_after():
    r = rule(escalate_after=dt.timedelta(hours=1), escalation_channels=("oncall",))
    # warning for an hour, then critical: the clock starts when it became critical
    trace = run(r, [(0, 0.025), (60, 0.015), (90, 0.015), (120, 0.015)])
    assert kinds(trace) == [(0, "firing"), (60, "firing"), (120, "escalation")]


def test_a_rule_without_channels_keeps_state_but_sends_nothing():
    r = rule(channels=())
    trace = run(r, [(0, 0.01), (300, 0.01), (301, 0.05)])
    assert [s for _, s, _, _ in trace] == ["firing", "firing", "resolved"]
    assert kinds(trace) == []


@pytest.mark.parametrize(
    "condition,thresholds,value,expected",
    [
        ("greater_than", {"warning": 0.05, "critical": 0.1}, 0.2, "critical"),
        ("greater_than", {"warning": 0.05, "critical": 0.1}, 0.07, "warning"),
        ("greater_than", {"warning": 0.05, "critical": 0.1}, 0.05, None),  # strictly greater
        ("less_than", {"info": 0.95, "warning": 0.9, "critical": 0.8}, 0.93, "info"),
        ("equals", {"critical": 0.0}, 0.0, "critical"),
        ("equals", {"critical": 0.0}, 1e-15, "critical"),
        ("not_equals", {"warning": 2000.0}, 1999.0, "warning"),
        ("not_equals", {"warning": 2000.0}, 2000.0, None),
        ("change_pct", {"warning": -20.0, "critical": -40.0}, -25.0, "warning"),
        ("change_pct", {"warning": -20.0, "critical": -40.0}, -40.0, "critical"),
        ("change_pct", {"warning": -20.0}, 30.0, None),
        ("change_pct", {"warning": 50.0}, 60.0, "warning"),
    ],
)
def test_classify(condition, thresholds, value, expected):
    assert classify(rule(condition=condition, thresholds=thresholds), value)[0] == expected


def test_change_pct_sign_convention_and_empty_windows():
    assert percent_change(0.03, 0.04) == pytest.approx(-25.0)
    assert percent_change(-1.0, -2.0) == pytest.approx(50.0)  # divided by |previous|
    assert percent_change(1.0, 0.0) is None and percent_change(None, 1.0) is None
    r = rule(condition="change_pct", thresholds={"warning": -20.0})
    observation = observe_change(r, 0.03, 0.04)
    assert observation.holds and observation.value == pytest.approx(-25.0) and observation.details["previous_mean"] == 0.04
    assert observe_change(r, 0.03, None).no_data


def point(day: int, status: str, z: float | None, direction: str | None = None) -> AnomalyPoint:
    return AnomalyPoint(T0 + dt.timedelta(days=day), status, z, 0.5, 0.4, 0.6, direction)


def test_anomaly_observations():
    r = rule(condition="anomaly", thresholds={"warning": 3.0, "critical": 5.0})
    assert observe_anomaly(r, []).no_data
    assert observe_anomaly(r, [point(0, "not_enough_data", None)]).no_data
    assert observe_anomaly(r, [point(0, "normal", 1.0)]).holds is False
    spike = observe_anomaly(r, [point(0, "anomalous", 3.5, "spike"), point(1, "normal", 0.2)])
    assert (spike.holds, spike.severity, spike.threshold, spike.details["z_score"]) == (True, "warning", 0.6, 3.5)
    flat = observe_anomaly(r, [point(0, "anomalous", None, "drop")])
    assert (flat.severity, flat.threshold) == ("critical", 0.4)  # flat history: infinitely far
    drops_only = rule(condition="anomaly", thresholds={"warning": 0.0}, direction="drop")
    assert observe_anomaly(drops_only, [point(0, "anomalous", 4.0, "spike")]).holds is False
    assert observe_anomaly(drops_only, [point(0, "anomalous", -4.0, "drop")]).holds is True


def test_fingerprint_is_stable_across_key_order_and_differs_per_series():
    a = fingerprint("r", {"team": "x", "a": "1"}, {"endpoint": "/s", "service": "api"})
    b = fingerprint("r", {"a": "1", "team": "x"}, {"service": "api", "endpoint": "/s"})
    assert a == b
    assert a != fingerprint("r", {"team": "x", "a": "1"}, {"endpoint": "/t", "service": "api"})
    assert a != fingerprint("other", {"team": "x", "a": "1"}, {"endpoint": "/s", "service": "api"})


def test_wildcard_dimensions_match_series_with_the_same_keys():
    r = rule(dimensions={"endpoint": "*", "service": "search-api"})
    assert r.matches({"endpoint": "/api/search", "service": "search-api"})
    assert not r.matches({"endpoint": "/api/search", "service": "catalog-api"})
    assert not r.matches({"endpoint": "/api/search"})
    assert not r.matches({})
    assert rule().matches({}) and not rule().matches({"endpoint": "/x"})


def test_several_alerts_of_one_evaluation_render_as_one_grouped_message():
    items = [
        {"notification_id": f"n{i}", "kind": kind, "rule": f"rule_{i}", "severity": "critical", "metric": "m", "condition": "less_than",
         "aggregation_level": "day", "dimensions": {}, "labels": {}, "value": 0.01, "threshold": 0.02, "fingerprint": f"f{i}",
         "window": {"start": "2026-03-10T00:00:00", "end": "2026-03-11T00:00:00", "duration": "1d"}, "evaluated_at": "2026-03-11T00:00:00",
         "asset": "business_metrics", "asset_url": "http://localhost:3000/assets/business_metrics"}
        for i, kind in enumerate(["firing", "firing", "resolved"])
    ]
    message = render_alerts("kpi-alerts", items, "http://localhost:3000")
    assert message.items == 3
    assert message.text.startswith("KPI alerts: 2 firing, 1 resolved")
    sections = [b for b in message.blocks if b["type"] == "section"]
    assert len(sections) == 3 and all("business_metrics in Dagster" in s["text"]["text"] for s in sections)
    assert [a["status"] for a in message.payload["alerts"]] == ["firing", "firing", "resolved"]
    assert len(message.blocks) <= 50
    # the same notifications give the same idempotency key
    assert render_alerts("kpi-alerts", items, "http://x").key == message.key


def test_observation_value_none_or_nan_is_no_data():
    assert observe_value(rule(), None).no_data
    assert observe_value(rule(), math.nan).no_data
    assert Observation(True, "warning", 1.0).no_data is False
