"""What a rule sees (an `Observation`) and what it does about it (the state machine).

Both are pure: no database, no clock. `observe_*` turn a window's aggregates into an
observation; `step(state, observation, now, rule, silenced)` returns the series' next state
and the notifications to queue. The states are Grafana's:

    Normal ──holds──► Pending ──held for `for`──► Firing ──stops holding──► Recovering
      ▲                  │ stops holding            ▲  │ (keep_firing_for = 0)   │ held again: Firing
      └──────────────────┴──────────────────────────┼──┴──► Resolved ◄──────────┘ stopped for keep_firing_for

A firing series is notified once, then again every `repeat_interval` (and at once when its
severity rises); its resolution is notified once, to whoever heard of it firing. A silenced
series goes through the same states but queues nothing (its instance shows `suppressed`);
when the silence ends, a series still firing is notified as if for the first time (unless
it was notified less than a repeat interval ago). A critical series firing for
`escalate_after` is also sent to the escalation channels, again every repeat interval.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kpi_pipelines.alerts.rules import SEVERITIES, Rule

NORMAL, PENDING, FIRING, RECOVERING = "normal", "pending", "firing", "recovering"
_RANK = {severity: rank for rank, severity in enumerate(reversed(SEVERITIES))}  # info 0 < warning 1 < critical 2


def fingerprint(rule_name: str, labels: Mapping[str, str], dimensions: Mapping[str, str]) -> str:
    """Identity of a rule's series: a hash of the rule name, its labels and the series'
    dimensions, each sorted (so the file's key order does not matter)."""
    text = json.dumps(
        {"rule": rule_name, "labels": sorted(labels.items()), "dimensions": sorted(dimensions.items())},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Observation:
    """One rule and series at one evaluation.

    `holds` is None when there is no data (nothing in the window); else whether the
    condition holds at `severity` (the most severe threshold crossed)."""

    holds: bool | None
    severity: str | None = None
    value: float | None = None
    threshold: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def no_data(self) -> bool:
        return self.holds is None


NO_DATA = Observation(None)


def _crossed(condition: str, value: float, threshold: float) -> bool:
    if condition == "greater_than":
        return value > threshold
    if condition == "less_than":
        return value < threshold
    if condition == "equals":
        return math.isclose(value, threshold, rel_tol=1e-9, abs_tol=1e-12)
    if condition == "not_equals":
        return not math.isclose(value, threshold, rel_tol=1e-9, abs_tol=1e-12)
    if condition == "change_pct":  # the thresholds' sign gives the direction
        return value <= threshold if threshold < 0 else value >= threshold
    if condition == "anomaly":  # value is |z|
        return value >= threshold
    raise ValueError(f"unknown condition {condition!r}")


def classify(rule: Rule, value: float) -> tuple[str | None, float | None]:
    """The most severe (severity, threshold) whose threshold `value` crosses, or (None, the
    mildest threshold) when none is crossed."""
    for severity in SEVERITIES:
        if severity in rule.thresholds and _crossed(rule.condition, value, rule.thresholds[severity]):
            return severity, rule.thresholds[severity]
    mildest = next((rule.thresholds[s] for s in reversed(SEVERITIES) if s in rule.thresholds), None)
    return None, mildest


def observe_value(rule: Rule, mean: float | None, details: Mapping[str, Any] | None = None) -> Observation:
    """greater_than / less_than / equals / not_equals: the window's mean against the thresholds."""
    if mean is None or not math.isfinite(mean):
        return NO_DATA
    severity, threshold = classify(rule, mean)
    return Observation(severity is not None, severity, mean, threshold, dict(details or {}))


def percent_change(current: float | None, previous: float | None) -> float | None:
    """(current − previous) ÷ |previous| × 100: positive is a rise, negative a drop; None
    when either window is empty or the previous mean is 0."""
    if current is None or previous is None or previous == 0:
        return None
    return (current - previous) / abs(previous) * 100.0


def observe_change(rule: Rule, current: float | None, previous: float | None, details: Mapping[str, Any] | None = None) -> Observation:
    """change_pct: the window's mean against the previous window's mean, in percent."""
    change = percent_change(current, previous)
    if change is None:
        return NO_DATA
    severity, threshold = classify(rule, change)
    info = {**(details or {}), "current_mean": current, "previous_mean": previous, "change_pct": change}
    return Observation(severity is not None, severity, change, threshold, info)


@dataclass(frozen=True)
class AnomalyPoint:
    """A kpi_anomalies row inside the window."""

    timestamp: dt.datetime
    status: str  # normal | anomalous | not_enough_data
    z_score: float | None
    value: float
    lower_bound: float | None
    upper_bound: float | None
    direction: str | None  # spike | drop | None


def observe_anomaly(rule: Rule, points: Sequence[AnomalyPoint], details: Mapping[str, Any] | None = None) -> Observation:
    """anomaly: the window's most extreme anomalous point (in the rule's direction) by |z|; a
    flat history (z undefined) counts as infinitely far. The severity is the most severe
    threshold that |z| reaches. Only `not_enough_data` points (or none) is no data."""
    judged = [p for p in points if p.status in ("normal", "anomalous")]
    if not judged:
        return NO_DATA
    anomalous = [
        p for p in judged
        if p.status == "anomalous" and (rule.direction == "both" or p.direction == rule.direction)
    ]
    base = dict(details or {})
    if not anomalous:
        latest = max(judged, key=lambda p: p.timestamp)
        return Observation(False, None, latest.value, None, {**base, "z_score": latest.z_score,
                                                            "expected": [latest.lower_bound, latest.upper_bound]})
    worst = max(anomalous, key=lambda p: (math.inf if p.z_score is None else abs(p.z_score), p.timestamp))
    magnitude = math.inf if worst.z_score is None else abs(worst.z_score)
    severity, _ = classify(rule, magnitude)
    crossed = worst.upper_bound if worst.direction == "spike" else worst.lower_bound
    info = {
        **base,
        "z_score": worst.z_score,
        "direction": worst.direction,
        "anomaly_at": worst.timestamp.isoformat(sep=" "),
        "expected": [worst.lower_bound, worst.upper_bound],
    }
    return Observation(severity is not None, severity, worst.value, crossed, info)


@dataclass(frozen=True)
class SeriesState:
    """A rule's series between evaluations (an open alert instance, or Normal)."""

    state: str = NORMAL
    severity: str | None = None
    pending_since: dt.datetime | None = None
    triggered_at: dt.datetime | None = None
    recovering_since: dt.datetime | None = None
    critical_since: dt.datetime | None = None
    last_notified_at: dt.datetime | None = None
    last_escalated_at: dt.datetime | None = None
    firing_notified: bool = False  # a firing notification was queued this episode
    escalation_notified: bool = False
    value: float | None = None
    threshold: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state in (FIRING, RECOVERING)


@dataclass(frozen=True)
class Notify:
    """Queue a notification of this series to `channels`.

    kind: firing (first, or severity raised), repeat, escalation, resolved."""

    kind: str
    channels: tuple[str, ...]
    severity: str | None


@dataclass(frozen=True)
class Step:
    state: SeriesState
    actions: tuple[Notify, ...]
    transition: str | None  # e.g. 'normal->pending', None when the state did not change
    resolved: bool = False  # the episode ended (Firing/Recovering -> Resolved, or Pending -> Normal)
    suppressed: tuple[str, ...] = ()  # kinds a silence held back

    @property
    def closed(self) -> bool:
        return self.resolved


def _due(last: dt.datetime | None, now: dt.datetime, interval: dt.timedelta) -> bool:
    return last is None or now - last >= interval


def step(state: SeriesState, observation: Observation, now: dt.datetime, rule: Rule, silenced: bool = False) -> Step:
    """The next state of one series and the notifications to queue (pure)."""
    before = state.state
    holds = observation.holds
    if holds is None and rule.no_data == "ok":
        holds = False
    s = state
    if holds is not None:
        s = replace(s, value=observation.value, threshold=observation.threshold, details=dict(observation.details))

    actions: list[Notify] = []
    suppressed: list[str] = []
    resolved = False
    previous_severity = state.severity

    if holds:
        severity = observation.severity
        critical_since = s.critical_since if severity == "critical" and s.critical_since else (now if severity == "critical" else None)
        s = replace(s, severity=severity, critical_since=critical_since)
        if s.state == NORMAL:
            s = replace(s, state=PENDING, pending_since=now)
        if s.state == PENDING and now - (s.pending_since or now) >= rule.for_:
            s = replace(s, state=FIRING, triggered_at=now)
        elif s.state == RECOVERING:
            s = replace(s, state=FIRING, recovering_since=None)
    elif holds is False:
        if s.state == PENDING:
            s = SeriesState(value=s.value, threshold=s.threshold, details=s.details)
            resolved = True
        elif s.state == FIRING:
            if rule.keep_firing_for > dt.timedelta(0):
                s = replace(s, state=RECOVERING, recovering_since=now)
            else:
                resolved = True
        elif s.state == RECOVERING and now - (s.recovering_since or now) >= rule.keep_firing_for:
            resolved = True
        if resolved and state.state in (FIRING, RECOVERING):
            for kind, channels, sent in (
                ("resolved", rule.channels, state.firing_notified),
                ("resolved", rule.escalation_channels, state.escalation_notified),
            ):
                if sent and channels:
                    if silenced:
                        suppressed.append(kind)
                    else:
                        actions.append(Notify(kind, channels, state.severity))
            s = SeriesState(value=s.value, threshold=s.threshold, details=s.details)

    if s.active:
        raised = previous_severity is not None and _RANK.get(s.severity or "", 0) > _RANK.get(previous_severity, 0)
        first = not s.firing_notified
        if first or (raised and state.active) or _due(s.last_notified_at, now, rule.repeat_interval):
            kind = "firing" if first or raised else "repeat"
            if silenced:
                suppressed.append(kind)
            elif rule.channels:
                actions.append(Notify(kind, rule.channels, s.severity))
                s = replace(s, last_notified_at=now, firing_notified=True)
            else:  # a rule without channels records state only
                s = replace(s, last_notified_at=now, firing_notified=True)
        if (
            rule.escalate_after is not None
            and rule.escalation_channels
            and s.severity == "critical"
            and s.critical_since is not None
            and now - s.critical_since >= rule.escalate_after
            and _due(s.last_escalated_at, now, rule.repeat_interval)
        ):
            if silenced:
                suppressed.append("escalation")
            else:
                actions.append(Notify("escalation", rule.escalation_channels, s.severity))
                s = replace(s, last_escalated_at=now, escalation_notified=True)

    after = "resolved" if resolved and before in (FIRING, RECOVERING) else s.state
    transition = None if after == before else f"{before}->{after}"
    return Step(s, tuple(actions), transition, resolved, tuple(suppressed))
