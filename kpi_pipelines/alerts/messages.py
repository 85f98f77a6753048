"""Rendering notifications: one grouped `Message` per channel, in the form each transport
needs (Slack Block Kit with a `text` fallback, an Alertmanager-style webhook JSON body, a
plain-text e-mail)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Where a metric's values come from, for the link to the asset in the Dagster UI; a rule's
# `asset:` key overrides it (dbt rollups, new domains).
METRIC_ASSETS = (
    ("data_quality.", "data_quality_metrics"),
    ("retrieval.", "retrieval_metrics"),
    ("search.", "search_experience_metrics"),
    ("business.", "business_metrics"),
    ("experiment.", "business_metrics"),
    ("content.", "content_generation_metrics"),
    ("system.", "system_performance_metrics"),
)
SLACK_MAX_BLOCKS = 50
MAX_ALERTS_PER_MESSAGE = 20  # header + one section each + footer stays far under Slack's 50 blocks
_EMOJI = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"}
_KIND = {"firing": "FIRING", "repeat": "STILL FIRING", "escalation": "ESCALATED", "resolved": "RESOLVED"}
_SYMBOL = {"greater_than": ">", "less_than": "<", "equals": "=", "not_equals": "≠"}


@dataclass(frozen=True)
class Message:
    subject: str
    text: str  # plain text: Slack's fallback, the e-mail body
    blocks: list[dict[str, Any]]
    payload: dict[str, Any]  # the webhook body
    key: str  # idempotency key: the same notifications give the same key
    items: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)


def asset_for(metric: str, condition: str, override: str | None) -> str | None:
    if override:
        return override
    if condition == "anomaly":
        return "kpi_anomalies"
    return next((asset for prefix, asset in METRIC_ASSETS if metric.startswith(prefix)), None)


def asset_url(webserver_url: str, asset: str | None) -> str | None:
    if not asset:
        return None
    return f"{webserver_url.rstrip('/')}/assets/{'/'.join(asset.split('/'))}"


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value in (float("inf"), float("-inf")):
            return "∞" if value > 0 else "-∞"
        return f"{value:.4g}"
    return str(value)


def dimensions_text(dimensions: Mapping[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(dimensions.items())) or "overall"


def describe(item: Mapping[str, Any]) -> str:
    """One line: what was measured against what."""
    condition, value, threshold = item["condition"], item.get("value"), item.get("threshold")
    details = item.get("details") or {}
    if condition == "change_pct":
        return (
            f"changed {value:+.1f}% (mean {fmt(details.get('current_mean'))} vs {fmt(details.get('previous_mean'))} "
            f"in the window before; threshold {threshold:+g}%)"
            if value is not None and threshold is not None
            else f"change {fmt(value)}%"
        )
    if condition == "anomaly":
        low, high = (list(details.get("expected") or []) + [None, None])[:2]
        z = details.get("z_score")
        ztext = "flat history" if z is None else f"z = {z:+.1f}"
        return f"{fmt(value)} outside the expected range [{fmt(low)}, {fmt(high)}] ({ztext})"
    symbol = _SYMBOL.get(condition, condition)
    if item.get("status") == "resolved":
        return f"{fmt(value)} (threshold {symbol} {fmt(threshold)})"
    return f"{fmt(value)} {symbol} {fmt(threshold)}"


def window_text(item: Mapping[str, Any]) -> str:
    window = item.get("window") or {}
    start, end = window.get("start", ""), window.get("end", "")
    return f"window {window.get('duration', '')} [{start[:16]} → {end[:16]}) UTC"


def _headline(items: Sequence[Mapping[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for item in items:
        counts[item["kind"]] = counts.get(item["kind"], 0) + 1
    order = ("firing", "escalation", "repeat", "resolved")
    parts = [f"{counts[k]} {_KIND[k].lower()}" for k in order if k in counts]
    return "KPI alerts: " + ", ".join(parts)


def _item_line(item: Mapping[str, Any]) -> str:
    severity = (item.get("severity") or "").upper()
    return (
        f"[{_KIND[item['kind']]}] [{severity}] {item['rule']}: {item['metric']} "
        f"({dimensions_text(item.get('dimensions') or {})}) {describe(item)}"
    )


def _group_key(channel: str, items: Sequence[Mapping[str, Any]]) -> str:
    ids = ",".join(sorted(str(item.get("notification_id", "")) for item in items))
    return hashlib.sha256(f"{channel}|{ids}".encode()).hexdigest()[:24]


def render_alerts(channel: str, items: Sequence[Mapping[str, Any]], webserver_url: str) -> Message:
    """One message for several alert notifications to one channel."""
    headline = _headline(items)
    lines = [headline]
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": headline[:150]}}]
    alerts_json = []
    for item in items:
        url = item.get("asset_url")
        lines.append("- " + _item_line(item) + f"; {window_text(item)}" + (f"; {url}" if url else ""))
        emoji = ":white_check_mark:" if item["kind"] == "resolved" else _EMOJI.get(item.get("severity") or "", ":bell:")
        link = f"\n<{url}|{item.get('asset')} in Dagster>" if url else ""
        description = f"\n_{item['description']}_" if item.get("description") else ""
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": (
                        f"{emoji} *{_KIND[item['kind']]} · {(item.get('severity') or '').upper()} · {item['rule']}*\n"
                        f"`{item['metric']}` ({dimensions_text(item.get('dimensions') or {})}, {item['aggregation_level']}): "
                        f"*{describe(item)}*\n{window_text(item)}{description}{link}"
                    )[:3000],
                },
            }
        )
        resolved = item["kind"] == "resolved"
        alerts_json.append(
            {
                "status": "resolved" if resolved else "firing",
                "kind": item["kind"],
                "labels": {
                    "alertname": item["rule"],
                    "severity": item.get("severity"),
                    "metric": item["metric"],
                    **(item.get("labels") or {}),
                    **(item.get("dimensions") or {}),
                },
                "annotations": {"summary": _item_line(item), "description": item.get("description") or ""},
                "startsAt": item.get("triggered_at"),
                "endsAt": item.get("resolved_at") if resolved else None,
                "fingerprint": item["fingerprint"],
                "generatorURL": url,
                "value": item.get("value"),
                "threshold": item.get("threshold"),
                "condition": item["condition"],
                "window": item.get("window"),
                "details": item.get("details") or {},
            }
        )
    evaluated = max((item.get("evaluated_at") or "") for item in items)
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"evaluated at {evaluated[:19]} UTC · `kpi alerts list`"}]})
    key = _group_key(channel, items)
    common = {k: v for k, v in alerts_json[0]["labels"].items() if all(a["labels"].get(k) == v for a in alerts_json)}
    payload = {
        "version": "1",
        "receiver": channel,
        "status": "firing" if any(a["status"] == "firing" for a in alerts_json) else "resolved",
        "groupKey": key,
        "commonLabels": common,
        "externalURL": webserver_url,
        "alerts": alerts_json,
    }
    rules = sorted({item["rule"] for item in items})
    subject = f"[KPI] {headline.removeprefix('KPI alerts: ')}: {', '.join(rules[:5])}{' …' if len(rules) > 5 else ''}"
    return Message(subject, "\n".join(lines)[:3900], blocks, payload, key, items=len(items))


def _run_failure_lines(event: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(which assets, partitions and attempt; the cause's first lines) of a run failure."""
    assets = list(event.get("assets") or [])
    what = "; ".join(
        part
        for part in (
            ("assets " + ", ".join(assets[:10]) + (f" and {len(assets) - 10} more" if len(assets) > 10 else "")) if assets else "",
            f"partition {event['partition']}" if event.get("partition") else "",
            event.get("attempt") or "",
        )
        if part
    )
    return what, list(event.get("cause") or ["see the run"])


def _check_failure_lines(event: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(severity, partition and attempt; description and failing counts) of a failed check."""
    what = "; ".join(
        part
        for part in (
            event.get("severity", "ERROR") + (", blocking" if event.get("blocking") else ""),
            f"partition {event['partition']}" if event.get("partition") else "",
            event.get("attempt") or "",
        )
        if part
    )
    cause = [line for line in (event.get("description") or "").splitlines()[:3] if line.strip()]
    return what, cause + ([event["details"]] if event.get("details") else [])


def render_dagster_events(channel: str, events: Sequence[Mapping[str, Any]], webserver_url: str) -> Message:
    """One message for run failures and failed asset checks (the Dagster-side sensors)."""
    failures = sum(event["kind"] == "run_failure" for event in events)
    checks = len(events) - failures
    parts = ([f"{failures} run failure{'s' * (failures != 1)}"] if failures else []) + (
        [f"{checks} failed asset check{'s' * (checks != 1)}"] if checks else []
    )
    headline = "Dagster: " + ", ".join(parts)
    lines = [headline]
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": headline[:150]}}]
    for event in events[:MAX_ALERTS_PER_MESSAGE]:
        if event["kind"] == "run_failure":
            what, cause = _run_failure_lines(event)
            line = f"run {event['run_id'][:8]} of job {event['job']} failed" + (f" ({what})" if what else "")
            mrkdwn = f":x: *Run failed · {event['job']}*" + (f"\n{what}" if what else "") + "\n```" + "\n".join(cause)[:1500] + "```"
        else:
            what, cause = _check_failure_lines(event)
            line = f"check {event['check']} on {event['asset']} failed ({what})"
            mrkdwn = f":warning: *Asset check failed · {event['asset']} / {event['check']}*\n{what}" + (
                "\n" + "\n".join(cause)[:1000] if cause else ""
            )
            if event.get("run_url"):
                mrkdwn += f"\n<{event['run_url']}|the run>"
        url = event.get("url")
        lines.append("- " + line + (f"; {url}" if url else ""))
        lines.extend("    " + cause_line for cause_line in cause)
        if event.get("run_url"):
            lines.append(f"    run: {event['run_url']}")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": (mrkdwn + (f"\n<{url}|open in Dagster>" if url else ""))[:3000]}})
    if len(events) > MAX_ALERTS_PER_MESSAGE:
        more = len(events) - MAX_ALERTS_PER_MESSAGE
        lines.append(f"... and {more} more")
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"… and {more} more in the Dagster UI"}]})
    key = hashlib.sha256(f"{channel}|{','.join(str(e['id']) for e in events)}".encode()).hexdigest()[:24]
    payload = {"version": "1", "receiver": channel, "status": "firing", "groupKey": key, "externalURL": webserver_url, "dagster_events": list(events)}
    return Message(headline, "\n".join(lines)[:3900], blocks, payload, key, items=len(events))


def iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.replace(microsecond=0).isoformat()


def payload_json(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, default=str)
