"""End to end on a real warehouse (DuckDB and PostgreSQL): KPI rows in, evaluations on a
fake clock, notifications through the real slack_sdk client / urllib / smtplib to local
servers that answer like Slack, a webhook receiver and an SMTP server."""

from __future__ import annotations

import datetime as dt
import json
import logging
import textwrap

import pytest
import sqlalchemy as sa

from kpi_pipelines.alerts.cli import list_alerts
from kpi_pipelines.alerts.config import AlertSettings
from kpi_pipelines.alerts.engine import run_evaluation
from kpi_pipelines.alerts.rules import load_rules
from kpi_pipelines.alerts.store import add_silence, expire_silences
from kpi_pipelines.alerts.testing import FakeHTTPServer, FakeSMTPServer
from kpi_pipelines.alerts.transports import Pacer, Transports, WebhookTransport
from kpi_pipelines.kpis.store import Metric, replace_daily_metrics

pytestmark = pytest.mark.timeout(120)

D = dt.date(2026, 3, 10)
T = dt.datetime(2026, 3, 11, 1, 0)  # evaluations during day D+1: the window [T-1d, T) holds its bucket
H = dt.timedelta(hours=1)


def put(warehouse, day: dt.date, values: dict[str, float], asset: str = "business_metrics", dims: dict | None = None) -> None:
    metrics = [Metric(name, value, day, dims or {}) for name, value in values.items()]
    replace_daily_metrics(warehouse, asset, day, day + dt.timedelta(days=1), metrics)


def rules_file(tmp_path, channels: str, rules: str):
    path = tmp_path / "rules.yaml"
    path.write_text("channels:\n" + textwrap.indent(textwrap.dedent(channels), "  ") + "rules:\n" + textwrap.indent(textwrap.dedent(rules), "  "))
    return load_rules(path)


LOW_CONVERSION = """
- name: low_conversion
  metric: business.conversion_rate
  condition: less_than
  thresholds: {warning: 0.03, critical: 0.02}
  window: 1d
  repeat_interval: 4h
  channels: [kpi-alerts]
"""
HIGH_NO_RESULTS = """
- name: high_no_results
  metric: search.no_results_rate
  condition: greater_than
  thresholds: {warning: 0.1}
  channels: [kpi-alerts]
"""
LOW_CTR = """
- name: low_ctr
  metric: search.click_through_rate
  condition: less_than
  thresholds: {warning: 0.5}
  channels: [kpi-alerts]
"""


def slack_settings(server: FakeHTTPServer, path: str = "") -> AlertSettings:
    return AlertSettings(rules_path=path, slack_token="xoxb-test", slack_base_url=server.base_url,
                         webserver_url="http://dagster.test:3000")


def count(warehouse, table: str) -> int:
    return int(warehouse.scalar(f"SELECT count(*) FROM {table}"))


def test_slack_one_message_when_firing_none_inside_the_repeat_interval_one_on_resolution(warehouse, slack, tmp_path):
    rules = rules_file(tmp_path, 'kpi-alerts: {type: slack, channel: "#kpi-alerts"}\n', LOW_CONVERSION)
    settings = slack_settings(slack)
    transports = Transports(settings, pacer=Pacer(interval=0))
    put(warehouse, D + dt.timedelta(days=1), {"business.conversion_rate": 0.015})

    report = run_evaluation(warehouse, rules, settings, at=T, transports=transports)
    assert (report.firing, report.queued, report.delivery.delivered, report.delivery.messages) == (1, 1, 1, 1)
    posts = slack.posts()
    assert len(posts) == 1 and posts[0].status == 200
    body = posts[0].body
    assert posts[0].headers["authorization"] == "Bearer xoxb-test"
    assert body["channel"] == "#kpi-alerts"
    assert body["text"].startswith("KPI alerts: 1 firing") and "low_conversion" in body["text"]
    section = next(b for b in body["blocks"] if b["type"] == "section")["text"]["text"]
    assert "FIRING · CRITICAL · low_conversion" in section
    assert "0.015 < 0.02" in section
    assert "window 1d [2026-03-10T01:00 → 2026-03-11T01:00) UTC" in section
    assert "<http://dagster.test:3000/assets/business_metrics|business_metrics in Dagster>" in section

    for hours in (1, 2, 3):  # inside the 4h repeat interval: nothing new
        report = run_evaluation(warehouse, rules, settings, at=T + hours * H, transports=transports)
        assert report.firing == 1 and report.queued == 0
    assert len(slack.posts()) == 1

    put(warehouse, D + dt.timedelta(days=1), {"business.conversion_rate": 0.05})
    report = run_evaluation(warehouse, rules, settings, at=T + 3.5 * H, transports=transports)
    assert report.resolved == 1
    assert len(slack.posts()) == 2
    assert slack.posts()[1].body["text"].startswith("KPI alerts: 1 resolved")
    run_evaluation(warehouse, rules, settings, at=T + 8 * H, transports=transports)
    assert len(slack.posts()) == 2

    (status, state, triggered, resolved, sent, value, threshold), = warehouse.query(
        "SELECT status, state, triggered_at, resolved_at, notification_sent, current_value, threshold_value FROM alert_instances"
    )
    assert (status, state, triggered, resolved, sent) == ("resolved", "resolved", T, T + 3.5 * H, True)
    assert (value, threshold) == (pytest.approx(0.05), pytest.approx(0.03))
    logged = warehouse.query("SELECT kind, channel, channel_type, destination, message_id FROM alert_notification_log ORDER BY sent_at")
    assert [tuple(row[:4]) for row in logged] == [("firing", "kpi-alerts", "slack", "#kpi-alerts"), ("resolved", "kpi-alerts", "slack", "#kpi-alerts")]
    assert all(row[4].startswith("1700000000.") for row in logged)
    assert count(warehouse, "alert_outbox") == 0


def test_slack_429_retry_after_is_honoured_and_the_message_delivered(warehouse, slack, tmp_path):
    rules = rules_file(tmp_path, 'kpi-alerts: {type: slack, channel: "#kpi-alerts"}\n', LOW_CONVERSION)
    settings = slack_settings(slack)
    put(warehouse, D + dt.timedelta(days=1), {"business.conversion_rate": 0.015})
    slack.answer(429, retry_after=1)
    report = run_evaluation(warehouse, rules, settings, at=T, transports=Transports(settings, pacer=Pacer(interval=0)))
    attempts = slack.posts()
    assert [a.status for a in attempts] == [429, 200]
    assert attempts[1].at - attempts[0].at >= 1.0  # RateLimitErrorRetryHandler waited Retry-After
    assert report.delivery.delivered == 1 and count(warehouse, "alert_notification_log") == 1
    assert count(warehouse, "alert_outbox") == 0


def test_slack_429_beyond_the_client_retries_waits_in_the_outbox_for_retry_after(warehouse, slack, tmp_path):
    rules = rules_file(tmp_path, 'kpi-alerts: {type: slack, channel: "#kpi-alerts"}\n', LOW_CONVERSION)
    settings = slack_settings(slack)
    transports = Transports(settings, pacer=Pacer(interval=0), slack_rate_limit_retries=0)
    put(warehouse, D + dt.timedelta(days=1), {"business.conversion_rate": 0.015})
    slack.answer(429, retry_after=120)
    report = run_evaluation(warehouse, rules, settings, at=T, transports=transports)
    assert report.delivery.failed == 1 and report.delivery.queued_after == 1
    (attempts, next_at, error), = warehouse.query("SELECT attempts, next_attempt_at, last_error FROM alert_outbox")
    assert (attempts, next_at) == (1, T + dt.timedelta(seconds=120)) and "429" in error
    assert count(warehouse, "alert_notification_log") == 0  # the log is written only after a send

    run_evaluation(warehouse, rules, settings, at=T + dt.timedelta(seconds=60), transports=transports)
    assert len(slack.posts()) == 1  # Retry-After not over: not tried
    report = run_evaluation(warehouse, rules, settings, at=T + dt.timedelta(seconds=180), transports=transports)
    assert [a.status for a in slack.posts()] == [429, 200] and report.delivery.delivered == 1
    assert count(warehouse, "alert_outbox") == 0
    assert warehouse.scalar("SELECT attempts FROM alert_notification_log") == 2


def test_slack_down_for_several_evaluations_then_everything_is_delivered(warehouse, slack, tmp_path):
    rules = rules_file(tmp_path, 'kpi-alerts: {type: slack, channel: "#kpi-alerts"}\n', LOW_CONVERSION + HIGH_NO_RESULTS)
    settings = slack_settings(slack)
    transports = Transports(settings, pacer=Pacer(interval=0))
    day = D + dt.timedelta(days=1)
    slack.stop()  # connections refused
    put(warehouse, day, {"business.conversion_rate": 0.015})
    r1 = run_evaluation(warehouse, rules, settings, at=T, transports=transports)
    put(warehouse, day, {"search.no_results_rate": 0.2}, asset="search_experience_metrics")
    r2 = run_evaluation(warehouse, rules, settings, at=T + 0.25 * H, transports=transports)
    put(warehouse, day, {"business.conversion_rate": 0.05})
    r3 = run_evaluation(warehouse, rules, settings, at=T + 0.5 * H, transports=transports)
    assert (r1.queued, r2.queued, r3.queued) == (1, 1, 1)
    assert all(r.delivery.failed and r.delivery.delivered == 0 for r in (r1, r2, r3))
    assert "unreachable" in r3.delivery.errors[0]
    assert count(warehouse, "alert_outbox") == 3 and count(warehouse, "alert_notification_log") == 0
    assert warehouse.scalar("SELECT max(attempts) FROM alert_outbox") == 3

    slack.start()
    report = run_evaluation(warehouse, rules, settings, at=T + 0.75 * H, transports=transports)
    assert report.delivery.delivered == 3 and report.delivery.messages == 1  # grouped
    (post,) = slack.posts()
    assert post.body["text"].splitlines()[0] == "KPI alerts: 2 firing, 1 resolved"
    lines = post.body["text"].splitlines()[1:]
    assert [line.split("]")[0] for line in lines] == ["- [FIRING", "- [FIRING", "- [RESOLVED"]
    assert "low_conversion" in lines[0] and "high_no_results" in lines[1] and "low_conversion" in lines[2]
    assert count(warehouse, "alert_outbox") == 0 and count(warehouse, "alert_notification_log") == 3
    run_evaluation(warehouse, rules, settings, at=T + 1 * H, transports=transports)
    assert len(slack.posts()) == 1  # nothing sent twice


def test_several_alerts_of_one_evaluation_go_out_as_one_message_per_channel(warehouse, slack, tmp_path):
    rules = rules_file(
        tmp_path,
        'kpi-alerts: {type: slack, channel: "#kpi-alerts"}\nsearch: {type: slack, channel: "#search"}\n',
        LOW_CONVERSION + HIGH_NO_RESULTS.replace("[kpi-alerts]", "[kpi-alerts, search]") + LOW_CTR.replace("[kpi-alerts]", "[kpi-alerts, search]"),
    )
    settings = slack_settings(slack)
    day = D + dt.timedelta(days=1)
    put(warehouse, day, {"business.conversion_rate": 0.015})
    put(warehouse, day, {"search.no_results_rate": 0.2, "search.click_through_rate": 0.3}, asset="search_experience_metrics")
    report = run_evaluation(warehouse, rules, settings, at=T, transports=Transports(settings, pacer=Pacer(interval=0)))
    assert report.firing == 3 and report.queued == 5
    by_channel = {post.body["channel"]: post.body for post in slack.posts()}
    assert len(slack.posts()) == 2
    assert sum(b["type"] == "section" for b in by_channel["#kpi-alerts"]["blocks"]) == 3
    assert sum(b["type"] == "section" for b in by_channel["#search"]["blocks"]) == 2
    assert warehouse.scalar("SELECT max(group_size) FROM alert_notification_log") == 3


def test_pacing_one_message_per_second_per_channel():
    clock = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    pacer = Pacer(interval=1.0, sleep=sleep, clock=lambda: clock[0])
    pacer.wait("#a")
    pacer.wait("#b")  # another channel: no wait
    clock[0] += 0.25
    pacer.wait("#a")
    assert slept == [pytest.approx(0.75)]
    clock[0] += 5
    pacer.wait("#a")
    assert len(slept) == 1


def test_without_a_slack_token_notifications_go_to_the_log(warehouse, tmp_path, caplog):
    rules = rules_file(tmp_path, 'kpi-alerts: {type: slack, channel: "#kpi-alerts"}\n', LOW_CONVERSION)
    settings = AlertSettings(rules_path="")
    put(warehouse, D + dt.timedelta(days=1), {"business.conversion_rate": 0.015})
    with caplog.at_level(logging.WARNING, logger="kpi_pipelines.alerts"):
        report = run_evaluation(warehouse, rules, settings, at=T)
    assert report.delivery.delivered == 1
    assert any("low_conversion" in record.getMessage() and "#kpi-alerts" in record.getMessage() for record in caplog.records)
    assert warehouse.query("SELECT channel, channel_type, kind FROM alert_notification_log") == [("kpi-alerts", "log", "firing")]
    text = "\n".join(list_alerts(warehouse, now=T))
    assert "open alerts: 1" in text and "low_conversion" in text and "kpi-alerts (log)" in text


def test_a_silence_suppresses_notifications_and_marks_the_alert_suppressed(warehouse, slack, tmp_path):
    rules = rules_file(tmp_path, 'kpi-alerts: {type: slack, channel: "#kpi-alerts"}\n', LOW_CONVERSION)
    settings = slack_settings(slack)
    transports = Transports(settings, pacer=Pacer(interval=0))
    put(warehouse, D + dt.timedelta(days=1), {"business.conversion_rate": 0.015})
    add_silence(warehouse, "low_conversion", T - H, T + 2 * H, "deploying the new ranker", "tester")
    report = run_evaluation(warehouse, rules, settings, at=T, transports=transports)
    assert report.firing == 1 and report.queued == 0 and report.suppressed == 1
    assert slack.posts() == []
    assert warehouse.scalar("SELECT status FROM alert_instances") == "suppressed"
    text = "\n".join(list_alerts(warehouse, now=T))
    assert "suppressed" in text and "deploying the new ranker" in text

    expire_silences(warehouse, "low_conversion", T + H)
    run_evaluation(warehouse, rules, settings, at=T + H, transports=transports)
    assert len(slack.posts()) == 1 and slack.posts()[0].body["text"].startswith("KPI alerts: 1 firing")
    assert warehouse.scalar("SELECT status FROM alert_instances") == "active"


def test_removed_rules_close_their_alerts_quietly_and_wildcard_series_alert_separately(warehouse, slack, tmp_path):
    settings = slack_settings(slack)
    transports = Transports(settings, pacer=Pacer(interval=0))
    channel = 'kpi-alerts: {type: slack, channel: "#kpi-alerts"}\n'
    rules = rules_file(tmp_path, channel, """
        - name: endpoint_latency_rise
          metric: system.latency_ms.p95
          dimensions: {endpoint: "*", service: "*"}
          condition: change_pct
          thresholds: {warning: 50}
          channels: [kpi-alerts]
    """)
    for day, search, generate in ((D, 200.0, 3000.0), (D + dt.timedelta(days=1), 600.0, 3100.0)):
        metrics = [
            Metric("system.latency_ms.p95", 500.0, day),
            Metric("system.latency_ms.p95", search, day, {"endpoint": "/api/search", "service": "search-api"}),
            Metric("system.latency_ms.p95", generate, day, {"endpoint": "/api/generate", "service": "generation-api"}),
        ]
        replace_daily_metrics(warehouse, "system_performance_metrics", day, day + dt.timedelta(days=1), metrics)
    report = run_evaluation(warehouse, rules, settings, at=dt.datetime(2026, 3, 12), transports=transports)
    assert report.series == 2 and report.firing == 1
    (dims, value), = warehouse.query("SELECT dimensions, current_value FROM alert_instances")
    assert json.loads(dims) == {"endpoint": "/api/search", "service": "search-api"} and value == pytest.approx(200.0)
    assert "changed +200.0%" in slack.posts()[0].body["text"]

    rules = rules_file(tmp_path, channel, LOW_CONVERSION)
    run_evaluation(warehouse, rules, settings, at=dt.datetime(2026, 3, 12, 1), transports=transports)
    assert warehouse.scalar("SELECT status FROM alert_instances") == "resolved"
    assert len(slack.posts()) == 1


def test_anomaly_rules_read_kpi_anomalies(warehouse, slack, tmp_path):
    settings = slack_settings(slack)
    rules = rules_file(tmp_path, 'kpi-alerts: {type: slack, channel: "#kpi-alerts"}\n', """
        - name: conversion_anomaly
          metric: business.conversion_rate
          condition: anomaly
          direction: drop
          thresholds: {warning: 3, critical: 5}
          channels: [kpi-alerts]
    """)
    with warehouse.begin() as connection:
        connection.execute(
            sa.text(
                'INSERT INTO kpi_anomalies (metric_name, dimensions, "timestamp", aggregation_level, metric_value, training_points, '
                "training_mean, training_stddev, z_score, lower_bound, upper_bound, sensitivity, status, direction, detected_at) "
                "VALUES ('business.conversion_rate', '{}', :ts, 'day', 0.01, 14, 0.04, 0.005, -6.0, 0.025, 0.055, 3, "
                "'anomalous', 'drop', :ts)"
            ),
            {"ts": dt.datetime(2026, 3, 11)},
        )
    report = run_evaluation(warehouse, rules, settings, at=T, transports=Transports(settings, pacer=Pacer(interval=0)))
    assert report.firing == 1
    text = slack.posts()[0].body["text"]
    assert "[CRITICAL] conversion_anomaly" in text and "outside the expected range [0.025, 0.055] (z = -6.0)" in text
    assert "http://dagster.test:3000/assets/kpi_anomalies" in text


@pytest.fixture
def hook():
    server = FakeHTTPServer().start()
    yield server
    server.stop()


def test_webhook_retries_with_backoff_survives_an_outage_and_escalates(warehouse, hook, tmp_path):
    rules = rules_file(
        tmp_path,
        f'kpi-alerts: {{type: slack, channel: "#kpi-alerts"}}\noncall: {{type: webhook, url: "{hook.url}", headers: {{X-Team: kpi}}}}\n',
        LOW_CONVERSION.replace("  channels: [kpi-alerts]", "  channels: [oncall]\n  escalate_after: 1h\n  escalation_channels: [oncall]"),
    )
    settings = AlertSettings()  # Slack goes to the log; the webhook is real
    waits: list[float] = []
    transports = Transports(settings, webhook=WebhookTransport(retries=2, backoff=0.5, sleep=waits.append))
    put(warehouse, D + dt.timedelta(days=1), {"business.conversion_rate": 0.015})

    hook.answer(500)
    run_evaluation(warehouse, rules, settings, at=T, transports=transports)
    assert [r.status for r in hook.requests] == [500, 200] and waits == [0.5]
    body = hook.requests[1].body
    assert hook.requests[1].headers["x-team"] == "kpi" and hook.requests[1].headers["x-kpi-notification-key"] == body["groupKey"]
    assert body["status"] == "firing" and body["receiver"] == "oncall"
    (alert,) = body["alerts"]
    assert alert["labels"]["alertname"] == "low_conversion" and alert["labels"]["severity"] == "critical"
    assert alert["value"] == pytest.approx(0.015) and alert["threshold"] == pytest.approx(0.02)
    assert alert["generatorURL"] == "http://localhost:3000/assets/business_metrics"

    hook.stop()
    for minutes in (30, 60, 90):  # down: the escalation (due at 1h) waits in the outbox
        report = run_evaluation(warehouse, rules, settings, at=T + dt.timedelta(minutes=minutes), transports=transports)
        assert report.delivery.delivered == 0
    assert count(warehouse, "alert_outbox") == 1
    hook.start()
    run_evaluation(warehouse, rules, settings, at=T + 2 * H, transports=transports)
    delivered = hook.delivered
    assert [[a["kind"] for a in b["alerts"]] for b in delivered] == [["firing"], ["escalation"]]

    put(warehouse, D + dt.timedelta(days=1), {"business.conversion_rate": 0.05})
    run_evaluation(warehouse, rules, settings, at=T + 3 * H, transports=transports)
    last = hook.delivered[-1]
    assert last["status"] == "resolved" and [a["kind"] for a in last["alerts"]] == ["resolved", "resolved"]
    assert len(hook.delivered) == 3
    assert count(warehouse, "alert_outbox") == 0


def test_webhook_client_errors_are_not_retried_in_the_pass_but_stay_queued(warehouse, hook, tmp_path):
    rules = rules_file(tmp_path, f'oncall: {{type: webhook, url: "{hook.url}"}}\n', LOW_CONVERSION.replace("[kpi-alerts]", "[oncall]"))
    settings = AlertSettings()
    waits: list[float] = []
    transports = Transports(settings, webhook=WebhookTransport(retries=3, sleep=waits.append))
    put(warehouse, D + dt.timedelta(days=1), {"business.conversion_rate": 0.015})
    hook.answer(404)
    report = run_evaluation(warehouse, rules, settings, at=T, transports=transports)
    assert len(hook.requests) == 1 and waits == [] and "404" in report.delivery.errors[0]
    assert count(warehouse, "alert_outbox") == 1
    run_evaluation(warehouse, rules, settings, at=T + H, transports=transports)
    assert len(hook.delivered) == 1 and count(warehouse, "alert_outbox") == 0


def test_email_through_smtp_with_an_outage(warehouse, tmp_path):
    smtp = FakeSMTPServer().start()
    try:
        rules = rules_file(tmp_path, 'data-team: {type: email, to: ["data-team@example.com", "oncall@example.com"]}\n',
                           LOW_CONVERSION.replace("[kpi-alerts]", "[data-team]"))
        settings = AlertSettings(smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_from="kpi@example.com")
        transports = Transports(settings)
        put(warehouse, D + dt.timedelta(days=1), {"business.conversion_rate": 0.015})
        smtp.refuse = 1  # 451 on MAIL FROM
        report = run_evaluation(warehouse, rules, settings, at=T, transports=transports)
        assert report.delivery.failed == 1 and smtp.messages == []
        run_evaluation(warehouse, rules, settings, at=T + H, transports=transports)
        (mail,) = smtp.messages
        assert mail["Subject"] == "[KPI] 1 firing: low_conversion"
        assert mail["From"] == "kpi@example.com" and smtp.envelopes[0] == ("kpi@example.com", ["data-team@example.com", "oncall@example.com"])
        assert "low_conversion" in mail.get_content() and "http://localhost:3000/assets/business_metrics" in mail.get_content()

        smtp.stop()
        put(warehouse, D + dt.timedelta(days=1), {"business.conversion_rate": 0.05})
        for hours in (2, 3):
            assert run_evaluation(warehouse, rules, settings, at=T + hours * H, transports=transports).delivery.failed == 1
        smtp.start()
        run_evaluation(warehouse, rules, settings, at=T + 4 * H, transports=transports)
        assert [m["Subject"] for m in smtp.messages] == ["[KPI] 1 firing: low_conversion", "[KPI] 1 resolved: low_conversion"]
        assert count(warehouse, "alert_outbox") == 0
        assert [r[0] for r in warehouse.query("SELECT channel_type FROM alert_notification_log")] == ["email", "email"]
    finally:
        smtp.stop()


def test_without_an_smtp_host_email_goes_to_the_log(warehouse, tmp_path):
    rules = rules_file(tmp_path, 'data-team: {type: email, to: ["data-team@example.com"]}\n', LOW_CONVERSION.replace("[kpi-alerts]", "[data-team]"))
    put(warehouse, D + dt.timedelta(days=1), {"business.conversion_rate": 0.015})
    run_evaluation(warehouse, rules, AlertSettings(), at=T)
    assert warehouse.query("SELECT channel_type, destination FROM alert_notification_log") == [("log", "data-team@example.com")]
