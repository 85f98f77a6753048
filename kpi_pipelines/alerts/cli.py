"""`kpi alerts evaluate | list | silence | unsilence`: `add_alert_commands(subparsers)` adds
them to the `kpi` parser (kpi_pipelines/cli.py calls it from build_parser)."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sys
from collections.abc import Callable
from typing import Any

from kpi_pipelines.alerts.config import AlertSettings
from kpi_pipelines.settings import Settings
from kpi_pipelines.alerts.rules import (
    RulesError,
    RuleSet,
    format_duration,
    load_rules,
    parse_duration,
)
from kpi_pipelines.display import readable_number


def _at(text: str) -> dt.datetime:
    from kpi_pipelines.alerts.job import parse_at

    try:
        return parse_at(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _duration(text: str) -> dt.timedelta:
    try:
        value = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if value <= dt.timedelta(0):
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than 0")
    return value


def _rules(settings: AlertSettings) -> RuleSet | None:
    """The rules, or None after printing every problem (one line each) to stderr."""
    try:
        return load_rules(settings.rules_path)
    except RulesError as error:
        for problem in error.errors:
            print(f"kpi: error: {error.path}: {problem}", file=sys.stderr)
        return None


def _warn(ruleset: RuleSet) -> None:
    """The rules' warnings (metrics the registry does not know), one line each, on stderr."""
    for warning in ruleset.warnings:
        print(f"kpi: warning: {ruleset.path}: {warning}", file=sys.stderr)


def _rule_exists(name: str, also: str = "") -> bool:
    """Whether the rules file validates and defines `name`; else says why on stderr."""
    settings = AlertSettings.from_env()
    ruleset = _rules(settings)
    if ruleset is None:
        return False
    if ruleset.rule(name) is None:
        known = ", ".join(rule.name for rule in ruleset.rules)
        print(f"kpi: error: no rule named {name!r} in {settings.rules_path}{also} (rules: {known})", file=sys.stderr)
        return False
    return True


def evaluate_and_print(at: dt.datetime | None = None, out: Callable[[str], Any] = print, trigger: str = "cli") -> int:
    """One evaluation as the job does it; prints the summary and what changed. `kpi demo`
    calls this too."""
    from kpi_pipelines.alerts.engine import run_evaluation

    settings = AlertSettings.from_env()
    ruleset = _rules(settings)
    if ruleset is None:
        return 1
    _warn(ruleset)
    report = run_evaluation(Settings.from_env().warehouse(), ruleset, settings, at, trigger=trigger)
    out(report.summary())
    for rule, dims, transition in report.transitions:
        dims_text = f" {json.dumps(dims, sort_keys=True)}" if dims else ""
        out(f"  {rule}{dims_text}: {transition}")
    for error in report.delivery.errors:
        out(f"  not delivered (stays queued, retried on the next evaluation): {error}")
    if not settings.slack_token and any(c.type == "slack" for c in ruleset.channels.values()):
        out("  (SLACK_BOT_TOKEN is not set: Slack notifications were written to the log; `kpi alerts list` shows them)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    return evaluate_and_print(args.at)


def _table(rows: list[list[Any]], header: list[str]) -> list[str]:
    cells = [[("" if v is None else str(v)) for v in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(value.ljust(widths[i]) for i, value in enumerate(row)).rstrip() for row in cells]


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return readable_number(value)
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


def list_alerts(warehouse, now: dt.datetime | None = None, recent: int = 10) -> list[str]:
    """The lines `kpi alerts list` prints: open alerts, silences, queued and recent notifications."""
    from kpi_pipelines.alerts.store import utcnow

    now = now or utcnow()
    lines: list[str] = []
    alerts = warehouse.query(
        "SELECT state, status, severity, rule_name, metric_name, dimensions, current_value, threshold_value, "
        "COALESCE(triggered_at, pending_since), notification_sent FROM alert_instances WHERE status <> 'resolved' "
        "ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, rule_name, dimensions"
    )
    lines.append(f"open alerts: {len(alerts)}")
    if alerts:
        rows = [
            [state, status, severity, rule, metric, "" if dims == "{}" else dims, _fmt(value), _fmt(threshold), _fmt(since),
             "yes" if sent else "no"]
            for state, status, severity, rule, metric, dims, value, threshold, since, sent in alerts
        ]
        lines += ["  " + line for line in _table(rows, ["state", "status", "severity", "rule", "metric", "dimensions",
                                                          "value", "threshold", "since (UTC)", "notified"])]
    silences = warehouse.query(
        "SELECT id, rule_name, ends_at, reason, created_by FROM alert_silences WHERE ends_at > :now ORDER BY ends_at",
        {"now": now},
    )
    lines.append(f"silences: {len(silences)}")
    if silences:
        rows = [[sid, rule, _fmt(ends), reason, by] for sid, rule, ends, reason, by in silences]
        lines += ["  " + line for line in _table(rows, ["id", "rule", "until (UTC)", "reason", "by"])]
    queued = warehouse.query(
        "SELECT channel, count(*), max(attempts), min(next_attempt_at), max(last_error) FROM alert_outbox GROUP BY channel ORDER BY channel"
    )
    lines.append(f"queued notifications: {sum(row[1] for row in queued)}")
    for channel, count, attempts, next_at, error in queued:
        lines.append(f"  {channel}: {count} queued, {attempts} attempts, next at {_fmt(next_at)}" + (f", last error: {error}" if error else ""))
    sent = warehouse.query(
        "SELECT sent_at, channel, channel_type, kind, severity, rule_name, dimensions FROM alert_notification_log AS n "
        "LEFT JOIN (SELECT id AS instance_id, dimensions FROM alert_instances) AS i ON i.instance_id = n.alert_id "
        "ORDER BY sent_at DESC, n.id LIMIT :limit",
        {"limit": recent},
    )
    lines.append(f"recent notifications (last {recent}):")
    if sent:
        rows = [[_fmt(at), f"{channel} ({kind_of})", kind, severity, rule, "" if dims in (None, "{}") else dims]
                for at, channel, kind_of, kind, severity, rule, dims in sent]
        lines += ["  " + line for line in _table(rows, ["sent (UTC)", "channel", "kind", "severity", "rule", "dimensions"])]
    return lines


def cmd_list(args: argparse.Namespace) -> int:
    """The stored alerts are listed even when the rules file is broken (they are what the
    last good rules produced), but the exit status says the rules are invalid."""
    ruleset = _rules(AlertSettings.from_env())
    if ruleset is not None:
        _warn(ruleset)
    for line in list_alerts(Settings.from_env().warehouse()):
        print(line)
    return 0 if ruleset is not None else 1


def cmd_silence(args: argparse.Namespace) -> int:
    from kpi_pipelines.alerts.store import add_silence, utcnow

    if not _rule_exists(args.rule):
        return 1
    if not args.reason.strip():
        print("kpi: error: --reason must say why", file=sys.stderr)
        return 2
    now = utcnow()
    ends = now + getattr(args, "for")
    try:
        by = getpass.getuser()
    except Exception:
        by = "unknown"
    silence_id = add_silence(Settings.from_env().warehouse(), args.rule, now, ends, args.reason.strip(), by)
    print(f"silenced {args.rule} for {format_duration(getattr(args, 'for'))} until {ends:%Y-%m-%d %H:%M} UTC (silence {silence_id})")
    return 0


def cmd_unsilence(args: argparse.Namespace) -> int:
    from kpi_pipelines.alerts.store import expire_silences, utcnow

    count = expire_silences(Settings.from_env().warehouse(), args.rule, utcnow())
    if count == 0 and not _rule_exists(args.rule, " and no silence of it"):
        return 1
    print(f"ended {count} silence(s) of {args.rule}")
    return 0


def add_alert_commands(subparsers: Any) -> None:
    """Add `kpi alerts ...` to the `kpi` command's subparsers."""
    alerts = subparsers.add_parser("alerts", help="evaluate alert rules, list alerts, silence rules")
    sub = alerts.add_subparsers(dest="alerts_command", required=True, parser_class=type(alerts))

    p = sub.add_parser("evaluate", help="evaluate every active rule once, as the sensor's job does, and deliver what is due")
    p.add_argument("--at", type=_at, default=None, help="evaluation time, ISO-8601 (default: now; no zone = UTC)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("list", help="show open (active, pending, silenced) alerts, silences and queued notifications")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("silence", help="suppress a rule's notifications for a while")
    p.add_argument("rule")
    p.add_argument("--for", dest="for", type=_duration, required=True, help="how long: 30m, 2h, 1d")
    p.add_argument("--reason", required=True, help="why (shown by `kpi alerts list`)")
    p.set_defaults(func=cmd_silence)

    p = sub.add_parser("unsilence", help="end a rule's silences now")
    p.add_argument("rule")
    p.set_defaults(func=cmd_unsilence)
