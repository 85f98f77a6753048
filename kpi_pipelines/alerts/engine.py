"""One evaluation: read every active rule's windows (set-based), step each series' state
machine, write the instances and queue notifications in one transaction, then deliver what
is due from the outbox. The Dagster job, `kpi alerts evaluate` and `kpi demo` all call
`run_evaluation`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from kpi_pipelines.alerts import store
from kpi_pipelines.alerts.config import AlertSettings
from kpi_pipelines.alerts.messages import (
    MAX_ALERTS_PER_MESSAGE,
    asset_for,
    asset_url,
    iso,
    payload_json,
    render_alerts,
)
from kpi_pipelines.alerts.rules import Channel, Rule, RuleSet, format_duration
from kpi_pipelines.alerts.state import (
    FIRING,
    NO_DATA,
    PENDING,
    RECOVERING,
    Observation,
    SeriesState,
    Step,
    fingerprint,
    observe_anomaly,
    observe_change,
    observe_value,
    step,
)
from kpi_pipelines.alerts.transports import DeliveryError, Transports
from kpi_pipelines.warehouse import Warehouse

logger = logging.getLogger("kpi_pipelines.alerts")


@dataclass
class Series:
    rule: Rule
    dimensions: dict[str, str]
    fingerprint: str
    observation: Observation


@dataclass
class DeliveryReport:
    messages: int = 0
    delivered: int = 0
    failed: int = 0
    queued_after: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class EvaluationReport:
    evaluation_id: str
    evaluated_at: dt.datetime
    rules: int
    series: int
    pending: int
    firing: int
    resolved: int
    queued: int
    suppressed: int
    transitions: list[tuple[str, dict[str, str], str]]
    delivery: DeliveryReport = field(default_factory=DeliveryReport)

    def summary(self) -> str:
        d = self.delivery
        text = (
            f"evaluated {self.rules} rules ({self.series} series) at {self.evaluated_at:%Y-%m-%d %H:%M:%S} UTC: "
            f"{self.firing} firing, {self.pending} pending, {self.resolved} resolved; "
            f"queued {self.queued} notifications"
            + (f" ({self.suppressed} silenced)" if self.suppressed else "")
            + f"; delivered {d.delivered} in {d.messages} messages"
        )
        if d.failed or d.queued_after:
            text += f"; {d.queued_after} still queued for retry"
        return text


def _window(rule: Rule, now: dt.datetime, previous: bool = False, metric: str | None = None) -> store.WindowSpec:
    start, end = rule.window_bounds(now, previous)
    return store.WindowSpec(metric or rule.metric, rule.aggregation_level, not rule.dimensions, start, end)


def _too_few_samples(
    rule: Rule, windows: list[dict[str, tuple[float, int, dt.datetime]]], dims_text: str, base: dict
) -> Observation | None:
    """No data (with the reason in the details) when the rule's `min_samples` count metric
    sums to less than its minimum over a window it judges (change_pct: both windows); None
    when the rule may judge."""
    if rule.min_samples is None:
        return None
    totals = []
    for means in windows:
        mean = means.get(dims_text)
        totals.append(mean[0] * mean[1] if mean is not None else 0.0)  # the window's sum of the count metric
    if min(totals) >= rule.min_samples.count:
        return None
    return Observation(None, details={**base, "samples": min(totals), "min_samples": rule.min_samples.count,
                                      "samples_metric": rule.min_samples.metric})


def observe_rules(warehouse: Warehouse, rules: Iterable[Rule], now: dt.datetime, relation: str) -> list[Series]:
    """Every series of every rule with its observation at `now`, from two set-based reads
    (values and anomalies), whatever the number of rules."""
    rules = list(rules)
    value_specs: OrderedDict[store.WindowSpec, int] = OrderedDict()
    anomaly_specs: OrderedDict[store.WindowSpec, int] = OrderedDict()

    def index(specs: OrderedDict, spec: store.WindowSpec) -> int:
        return specs.setdefault(spec, len(specs))

    wanted: list[tuple[Rule, int, int | None, list[int]]] = []
    for rule in rules:
        samples = []
        if rule.min_samples is not None:
            samples.append(index(value_specs, _window(rule, now, metric=rule.min_samples.metric)))
            if rule.condition == "change_pct":
                samples.append(index(value_specs, _window(rule, now, previous=True, metric=rule.min_samples.metric)))
        if rule.condition == "anomaly":
            wanted.append((rule, index(anomaly_specs, _window(rule, now)), None, samples))
        elif rule.condition == "change_pct":
            previous = index(value_specs, _window(rule, now, previous=True))
            wanted.append((rule, index(value_specs, _window(rule, now)), previous, samples))
        else:
            wanted.append((rule, index(value_specs, _window(rule, now)), None, samples))
    means = store.window_means(warehouse, relation, list(value_specs)) if value_specs else {}
    points = store.anomaly_points(warehouse, list(anomaly_specs)) if anomaly_specs else {}

    parsed: dict[str, dict[str, str] | None] = {}

    def dims_of(text: str) -> dict[str, str] | None:
        if text not in parsed:
            parsed[text] = store.parse_dimensions(text)
        return parsed[text]

    out: list[Series] = []
    for rule, current, previous, samples_indexes in wanted:
        start, end = rule.window_bounds(now)
        base = {"window": {"start": iso(start), "end": iso(end), "duration": format_duration(rule.window)}}
        samples = [means.get(i, {}) for i in samples_indexes]
        if rule.condition == "anomaly":
            for text, series_points in points.get(current, {}).items():
                dims = dims_of(text)
                if dims is not None and rule.matches(dims):
                    observation = _too_few_samples(rule, samples, text, base) or observe_anomaly(rule, series_points, base)
                    out.append(Series(rule, dims, fingerprint(rule.name, rule.labels, dims), observation))
            continue
        now_means = means.get(current, {})
        before = means.get(previous, {}) if previous is not None else {}
        for text in list(now_means) + [t for t in before if t not in now_means]:
            dims = dims_of(text)
            if dims is None or not rule.matches(dims):
                continue
            mean = now_means.get(text)
            details = dict(base)
            if mean is not None:
                details.update(buckets=mean[1], last_bucket=iso(mean[2]))
            if rule.condition == "change_pct":
                previous_mean = before.get(text)
                judged = observe_change(rule, mean and mean[0], previous_mean and previous_mean[0], details)
            else:
                judged = observe_value(rule, mean and mean[0], details)
            observation = _too_few_samples(rule, samples, text, details) or judged
            out.append(Series(rule, dims, fingerprint(rule.name, rule.labels, dims), observation))
    return out


def _instance_row(
    instance_id: str, series_rule: Rule, fp: str, dims: dict[str, str], before: SeriesState, result: Step,
    now: dt.datetime, silenced: bool,
) -> dict[str, Any]:
    after = result.state
    if result.resolved:
        kept = before  # the episode's history, with the last observation
        state = "resolved" if before.state in (FIRING, RECOVERING) else "normal"
        status, resolved_at = "resolved", now
        kept_fields = dict(
            severity=kept.severity, pending_since=kept.pending_since, triggered_at=kept.triggered_at,
            recovering_since=kept.recovering_since, critical_since=kept.critical_since,
            last_notified_at=kept.last_notified_at, last_escalated_at=kept.last_escalated_at,
            firing_notified=kept.firing_notified, escalation_notified=kept.escalation_notified,
        )
    else:
        state, resolved_at = after.state, None
        status = "suppressed" if silenced else "active"
        kept_fields = dict(
            severity=after.severity, pending_since=after.pending_since, triggered_at=after.triggered_at,
            recovering_since=after.recovering_since, critical_since=after.critical_since,
            last_notified_at=after.last_notified_at, last_escalated_at=after.last_escalated_at,
            firing_notified=after.firing_notified, escalation_notified=after.escalation_notified,
        )
    return {
        "id": instance_id,
        "rule_name": series_rule.name,
        "fingerprint": fp,
        "metric_name": series_rule.metric,
        "aggregation_level": series_rule.aggregation_level,
        "dimensions": json.dumps(dims, sort_keys=True),
        "labels": json.dumps(dict(series_rule.labels), sort_keys=True),
        "state": state,
        "status": status,
        "resolved_at": resolved_at,
        "current_value": after.value,
        "threshold_value": after.threshold,
        "details": json.dumps(dict(after.details), sort_keys=True, default=str),
        "last_evaluated_at": now,
        "notification_sent": False,
        **kept_fields,
    }


def _payload(
    rule: Rule, dims: dict[str, str], fp: str, alert_id: str, kind: str, severity: str | None,
    before: SeriesState, after: SeriesState, now: dt.datetime, settings: AlertSettings,
) -> dict[str, Any]:
    asset = asset_for(rule.metric, rule.condition, rule.asset)
    resolved = kind == "resolved"
    return {
        "alert_id": alert_id,
        "rule": rule.name,
        "fingerprint": fp,
        "kind": kind,
        "status": "resolved" if resolved else "firing",
        "severity": severity,
        "metric": rule.metric,
        "aggregation_level": rule.aggregation_level,
        "dimensions": dims,
        "labels": dict(rule.labels),
        "condition": rule.condition,
        "thresholds": dict(rule.thresholds),
        "value": after.value,
        "threshold": after.threshold,
        "window": dict(after.details.get("window") or {}),
        "details": {k: v for k, v in after.details.items() if k != "window"},
        "triggered_at": iso(before.triggered_at if resolved else after.triggered_at),
        "resolved_at": iso(now) if resolved else None,
        "evaluated_at": iso(now),
        "description": rule.description,
        "asset": asset,
        "asset_url": asset_url(settings.webserver_url, asset),
    }


def evaluate(
    warehouse: Warehouse, ruleset: RuleSet, settings: AlertSettings, now: dt.datetime, trigger: str = "cli"
) -> EvaluationReport:
    """Step every series and persist the result (inside the caller's alerts lock)."""
    started = store.utcnow()
    rules = ruleset.active_rules
    by_name = {rule.name: rule for rule in rules}
    observed = observe_rules(warehouse, rules, now, settings.metrics_relation)
    evaluation_id = store.new_id()

    with warehouse.begin() as connection:
        instances = {(i.rule_name, i.fingerprint): i for i in store.open_instances(connection)}
        silences = store.silenced_rules(connection, now)

        inserts, updates, outbox = [], [], []
        transitions: list[tuple[str, dict[str, str], str]] = []
        counts = {"pending": 0, "firing": 0, "resolved": 0, "suppressed": 0}
        work: list[tuple[Rule, dict[str, str], str, Observation]] = [
            (s.rule, s.dimensions, s.fingerprint, s.observation) for s in observed
        ]
        seen = {(s.rule.name, s.fingerprint) for s in observed}
        for key, instance in instances.items():
            if key in seen:
                continue
            rule = by_name.get(instance.rule_name)
            stale = (
                rule is None
                or not rule.matches(instance.dimensions)
                or fingerprint(rule.name, rule.labels, instance.dimensions) != instance.fingerprint
            )
            if stale:  # the rule was removed, deactivated or redefined: close quietly
                row = {
                    "id": instance.id, "status": "resolved", "resolved_at": now, "last_evaluated_at": now,
                    "state": "resolved" if instance.state.active else "normal",
                }
                connection.execute(
                    sa.text(
                        "UPDATE alert_instances SET status = :status, state = :state, resolved_at = :resolved_at, "
                        "last_evaluated_at = :last_evaluated_at WHERE id = :id"
                    ),
                    row,
                )
                continue
            work.append((rule, instance.dimensions, instance.fingerprint, NO_DATA))

        for rule, dims, fp, observation in work:
            instance = instances.get((rule.name, fp))
            before = instance.state if instance else SeriesState()
            silenced = rule.name in silences
            result = step(before, observation, now, rule, silenced)
            if instance is None and result.state.state == "normal" and not result.resolved:
                continue  # Normal and staying Normal: nothing to store
            alert_id = instance.id if instance else store.new_id()
            row = _instance_row(alert_id, rule, fp, dims, before, result, now, silenced)
            (updates if instance else inserts).append(row)
            if result.transition:
                transitions.append((rule.name, dims, result.transition))
            if result.resolved and before.state in (FIRING, RECOVERING):
                counts["resolved"] += 1
            elif result.state.state == PENDING:
                counts["pending"] += 1
            elif result.state.active:
                counts["firing"] += 1
            counts["suppressed"] += len(result.suppressed)
            for action in result.actions:
                payload = _payload(rule, dims, fp, alert_id, action.kind, action.severity, before, result.state, now, settings)
                for channel in action.channels:
                    outbox.append(
                        {
                            "id": store.new_id(), "alert_id": alert_id, "rule_name": rule.name, "fingerprint": fp,
                            "channel": channel, "kind": action.kind, "severity": action.severity,
                            "payload": payload_json(payload), "evaluation_id": evaluation_id, "created_at": now,
                        }
                    )
        store.insert_instances(connection, inserts)
        store.update_instances(connection, updates)
        store.insert_outbox(connection, outbox)
        report = EvaluationReport(
            evaluation_id, now, len(rules), len(work), counts["pending"], counts["firing"], counts["resolved"],
            len(outbox), counts["suppressed"], transitions,
        )
        store.insert_evaluation(
            connection,
            {
                "id": evaluation_id, "evaluated_at": now, "started_at": started, "finished_at": store.utcnow(),
                "trigger": trigger, "rules": report.rules, "series": report.series, "pending": report.pending,
                "firing": report.firing, "resolved": report.resolved, "queued": report.queued,
            },
        )
    for rule_name, dims, transition in transitions:
        logger.info("alert %s %s: %s", rule_name, json.dumps(dims, sort_keys=True), transition)
    return report


def deliver_due(
    warehouse: Warehouse, ruleset: RuleSet, settings: AlertSettings, transports: Transports, now: dt.datetime,
    max_per_message: int = MAX_ALERTS_PER_MESSAGE,
) -> DeliveryReport:
    """Send every due outbox notification, grouped: one message per channel (split past
    `max_per_message` alerts). A channel that fails keeps its notifications queued and is
    not tried again in this pass."""
    report = DeliveryReport()
    by_channel: OrderedDict[str, list[store.OutboxItem]] = OrderedDict()
    for item in store.due_outbox(warehouse, now):
        by_channel.setdefault(item.channel, []).append(item)
    for name, items in by_channel.items():
        channel = ruleset.channels.get(name) or Channel(name, "log", f"undeclared channel {name}")
        transport = transports.for_channel(channel)
        for first in range(0, len(items), max_per_message):
            chunk = items[first : first + max_per_message]
            message = render_alerts(name, [item.payload for item in chunk], settings.webserver_url)
            try:
                sent = transport.send(channel, message)
            except DeliveryError as error:
                next_at = store.record_failed(warehouse, chunk, str(error), now, error.retry_after)
                report.failed += len(chunk)
                report.errors.append(f"{name}: {error}")
                logger.warning("alert notifications to %s not delivered (%s); %d stay queued until %s",
                               name, error, len(chunk), next_at.isoformat(sep=" "))
                break
            store.record_delivered(warehouse, chunk, sent.channel_type, sent.destination, sent.message_id, store.utcnow())
            report.messages += 1
            report.delivered += len(chunk)
    report.queued_after = int(warehouse.scalar("SELECT count(*) FROM alert_outbox") or 0)
    return report


def run_evaluation(
    warehouse: Warehouse,
    ruleset: RuleSet,
    settings: AlertSettings,
    at: dt.datetime | None = None,
    transports: Transports | None = None,
    trigger: str = "cli",
) -> EvaluationReport:
    """Evaluate every active rule at `at` (default now, naive UTC) and deliver what is due."""
    now = at or store.utcnow()
    transports = transports or Transports(settings)
    with store.alerts_lock(warehouse):
        report = evaluate(warehouse, ruleset, settings, now, trigger)
        report.delivery = deliver_due(warehouse, ruleset, settings, transports, now)
    return report
