"""The alert rules file: the packaged one loads; a file with mistakes names each of them."""

from __future__ import annotations

import datetime as dt
import logging
import textwrap

import pytest

from kpi_pipelines.alerts.config import DEFAULT_RULES_PATH
from kpi_pipelines.alerts.rules import (
    RulesError,
    format_duration,
    load_rules,
    parse_duration,
)
from kpi_pipelines_tests.conftest import warehouse_resource


def write(tmp_path, text: str):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(tmp_path, text: str) -> list[str]:
    with pytest.raises(RulesError) as caught:
        load_rules(write(tmp_path, text))
    return caught.value.errors


def test_packaged_rules_cover_the_seed_kpis():
    rules = load_rules(DEFAULT_RULES_PATH)
    metrics = {rule.metric for rule in rules.rules}
    assert {
        "business.conversion_rate", "business.average_order_value", "search.click_through_rate", "search.no_results_rate",
        "retrieval.ndcg_at_10", "retrieval.mrr", "data_quality.completeness", "content.generation_error_rate",
        "content.approval_rate", "system.error_rate", "system.latency_ms.p95",
    } <= metrics
    assert {rule.condition for rule in rules.rules} >= {"less_than", "greater_than", "change_pct", "anomaly"}
    low = rules.rule("low_conversion")
    assert low.window == dt.timedelta(days=1) and low.repeat_interval == dt.timedelta(hours=4)
    assert low.escalate_after == dt.timedelta(hours=2) and low.escalation_channels == ("data-team",)
    assert rules.dagster_channels == ("kpi-alerts",)


def test_the_design_example_loads_with_its_defaults(tmp_path):
    rules = load_rules(write(tmp_path, """
        channels:
          kpi-alerts: {type: slack, channel: "#kpi-alerts"}
          oncall:     {type: webhook, url: "https://hooks.example.com/kpi"}
          data-team:  {type: email, to: ["data-team@example.com"]}
        rules:
          - name: low_conversion
            metric: business.conversion_rate
            aggregation_level: day
            dimensions: {}
            condition: less_than
            thresholds: {warning: 0.03, critical: 0.02}
            window: 1d
            for: 0m
            keep_firing_for: 0m
            repeat_interval: 4h
            channels: [kpi-alerts]
            escalate_after: 2h
            escalation_channels: [oncall]
            labels: {team: growth}
            is_active: true
          - name: minimal
            metric: search.no_results_rate
            condition: greater_than
            thresholds: {critical: 0.2}
            channels: [data-team]
    """))
    minimal = rules.rule("minimal")
    assert (minimal.aggregation_level, dict(minimal.dimensions), minimal.window, minimal.for_, minimal.keep_firing_for,
            minimal.repeat_interval, minimal.is_active) == ("day", {}, dt.timedelta(days=1), dt.timedelta(0), dt.timedelta(0),
                                                            dt.timedelta(hours=4), True)
    assert rules.channels["data-team"].recipients == ("data-team@example.com",)
    assert rules.channels["oncall"].target == "https://hooks.example.com/kpi"


def test_a_file_with_mistakes_names_each_rule_and_field(tmp_path):
    errors = errors_of(tmp_path, """
        channels:
          kpi-alerts: {type: slack, channel: "#kpi-alerts"}
          pager: {type: sms, number: "123"}
          hook: {type: webhook, url: "ftp://x"}
        rules:
          - name: ok_rule
            metric: search.no_results_rate
            condition: greater_than
            thresholds: {warning: 0.1}
            channels: [kpi-alerts]
          - name: typo_keys
            metric: search.click_through_rate
            condition: less_than
            treshold: {warning: 0.5}
            thresholds: {warning: 0.5}
            channels: [kpi-alerts]
          - name: low_conversion
            metric: business.conversion_rate
            condition: less_than
            thresholds: {warning: 0.03, critical: low}
            channels: [kpi-alerts, slack-typo]
          - name: bad_durations
            metric: system.error_rate
            condition: above
            thresholds: {warning: 0.02, urgent: 0.5}
            window: 5 minutes
            for: -1m
            repeat_interval: 0m
            channels: [kpi-alerts]
            escalate_after: 1h
          - name: short_window
            metric: system.error_rate
            aggregation_level: day
            condition: greater_than
            thresholds: {warning: 0.05, critical: 0.01}
            window: 1h
            channels: [kpi-alerts]
            is_active: "yes"
          - name: ok_rule
            metric: x
            condition: change_pct
            thresholds: {warning: -20, critical: 40}
            channels: [kpi-alerts]
    """)
    expected = [
        "channels.pager.type: expected one of slack, webhook, email, got 'sms'",
        "channels.hook.url: expected an http:// or https:// URL, got 'ftp://x'",
        "rules[1] (typo_keys).treshold: unknown key (did you mean 'thresholds'?)",
        "rules[2] (low_conversion).thresholds.critical: expected a number, got 'low'",
        "rules[2] (low_conversion).channels[1]: unknown channel 'slack-typo' (declared: kpi-alerts)",
        "rules[3] (bad_durations).condition: expected one of greater_than, less_than, equals, not_equals, anomaly, change_pct, got 'above'",
        "rules[3] (bad_durations).thresholds.urgent: unknown severity (allowed: critical, warning, info)",
        "rules[3] (bad_durations).window: expected a duration such as 30s, 15m, 4h or 1d, got '5 minutes'",
        "rules[3] (bad_durations).for: expected a duration such as 30s, 15m, 4h or 1d, got '-1m'",
        "rules[3] (bad_durations).repeat_interval: must be longer than 0, got '0m'",
        "rules[3] (bad_durations).escalation_channels: missing: escalate_after needs escalation_channels",
        "rules[4] (short_window).thresholds.critical: 0.01 must be at least warning (0.05) for greater_than",
        "rules[4] (short_window).window: 1h is shorter than one day bucket: the window would hold no value",
        "rules[4] (short_window).is_active: expected true or false, got 'yes'",
        "rules[5] (ok_rule).thresholds: change_pct thresholds must all be drops (negative) or all rises (positive)",
        "rules[5] (ok_rule).name: duplicate: rules[0] has the same name",
    ]
    assert sorted(errors) == sorted(expected)
    with pytest.raises(RulesError) as caught:
        load_rules(tmp_path / "rules.yaml")
    assert str(caught.value).splitlines()[0].startswith(str(tmp_path / "rules.yaml") + ": ")


@pytest.mark.parametrize(
    "text,message",
    [
        ("rules: [\n  - name: x\n    metric: [", "line 2, column 3: expected the node content"),
        ("- just\n- a list\n", "expected a mapping with 'channels' and 'rules', got a list"),
        ("channels: {}\nrule: []\n", "rule: unknown key (did you mean 'rules'?)"),
        ("channels: {}\nrules:\n  - name: a\n    metric: m\n    condition: equals\n    thresholds: {warning: true}\n    channels: []\n",
         "rules[0] (a).thresholds.warning: expected a number, got True"),
        ("channels: {}\nrules:\n  - metric: m\n    condition: equals\n    thresholds: {warning: 1}\n    channels: []\n",
         "rules[0].name: expected a rule name"),
        ("channels: {}\nrules:\n  - name: a\n    metric: m\n    condition: equals\n    thresholds: {warning: 1}\n",
         "rules[0] (a).channels: missing: name at least one declared channel"),
        ("channels: {}\nrules:\n  - name: a\n    metric: m\n    condition: greater_than\n    thresholds: {warning: 1}\n"
         "    channels: []\n    dimensions: {endpoint: [a]}\n", "rules[0] (a).dimensions.endpoint: expected a text value, got a list"),
        ("channels: {}\nrules:\n  - name: a\n    metric: m\n    condition: greater_than\n    thresholds: {warning: 1}\n"
         "    channels: []\n    direction: drop\n", "rules[0] (a).direction: only anomaly rules take a direction"),
        ("channels:\n  m: {type: email, to: [nobody]}\nrules: []\n", "channels.m.to: not an e-mail address: 'nobody'"),
        ("channels: {}\ndefaults: {window: 1x}\nrules: []\n", "defaults.window: expected a duration such as 30s, 15m, 4h or 1d, got '1x'"),
        ("channels: {}\ndefaults: {channels: [nope]}\nrules: []\n", "defaults.channels[0]: unknown channel 'nope' (declared: none)"),
        ("channels: {}\ndefaults: {metric: a}\nrules: []\n", "defaults.metric: unknown key"),
    ],
)
def test_each_mistake_is_named(tmp_path, text, message):
    errors = errors_of(tmp_path, text)
    assert any(message in error for error in errors), errors


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(RulesError) as caught:
        load_rules(tmp_path / "absent.yaml")
    assert caught.value.errors == ["cannot read the rules file: No such file or directory"]


@pytest.mark.parametrize(
    "text,seconds", [("30s", 30), ("15m", 900), ("4h", 14400), ("1d", 86400), ("1h30m", 5400), ("0m", 0)]
)
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds
    assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)


@pytest.mark.parametrize("text", ["", "4", "4 h", "h", "1w", "-1m", 5, None, True])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# --- metrics the registry does not know: a warning, not an error (issue 12, item 10) ---------

UNKNOWN_METRIC_RULES = """
    channels:
      kpi-alerts: {type: slack, channel: "#kpi-alerts"}
    rules:
      - name: typo
        metric: search.clickthrough_rate
        condition: less_than
        thresholds: {warning: 0.5}
        channels: [kpi-alerts]
      - name: pattern
        metric: "search.*_ratio"
        condition: less_than
        thresholds: {warning: 0.5}
        channels: [kpi-alerts]
      - name: hourly_conversion
        metric: business.conversion_rate
        aggregation_level: hour
        window: 1h
        condition: less_than
        thresholds: {warning: 0.5}
        channels: [kpi-alerts]
        min_samples: {metric: search.querys, count: 10}
      - name: fine
        metric: search.click_through_rate
        condition: less_than
        thresholds: {warning: 0.5}
        channels: [kpi-alerts]
        min_samples: {metric: search.queries, count: 10}
"""


def test_a_rule_on_an_unknown_metric_loads_with_one_warning_naming_the_closest_names(tmp_path):
    rules = load_rules(write(tmp_path, UNKNOWN_METRIC_RULES))
    assert [rule.name for rule in rules.rules] == ["typo", "pattern", "hourly_conversion", "fine"]  # all loaded
    typo, pattern, hourly = rules.warnings  # one line per rule with a problem, none for `fine`
    assert typo == (
        "rule 'typo': unknown metric 'search.clickthrough_rate' (closest: search.click_through_rate, "
        "search.no_results_rate, search.success_rate); it is evaluated but finds no data"
    )
    assert pattern.startswith("rule 'pattern': metric 'search.*_ratio' is a pattern") and "matches no registered metric" in pattern
    assert hourly == (
        "rule 'hourly_conversion': metric 'business.conversion_rate' has no hour values (it has day, week); "
        "unknown metric 'search.querys' (closest: search.queries, search.sessions_per_user, search.searches_per_user); "
        "it is evaluated but finds no data"
    )
    assert all("\n" not in warning for warning in rules.warnings)


def test_the_packaged_rules_name_only_registered_metrics():
    assert load_rules(DEFAULT_RULES_PATH).warnings == ()


@pytest.mark.parametrize("command", [["alerts", "list"], ["alerts", "evaluate", "--at", "2026-03-11T01:00:00Z"]])
def test_kpi_alerts_shows_the_warnings_and_still_evaluates_the_rules(warehouse, tmp_path, monkeypatch, capsys, command):
    from kpi_pipelines import cli

    monkeypatch.setenv("KPI_WAREHOUSE_URL", warehouse.url.render_as_string(hide_password=False))
    monkeypatch.setenv("KPI_WAREHOUSE_SCHEMA", warehouse.schema or "")
    path = write(tmp_path, UNKNOWN_METRIC_RULES)
    monkeypatch.setenv("KPI_ALERT_RULES", str(path))
    assert cli.main(command) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("kpi: warning:") and "finds no data" in line]
    assert len(warnings) == 3 and "kpi: error" not in captured.err
    assert warnings[0].startswith(f"kpi: warning: {path}: rule 'typo': unknown metric 'search.clickthrough_rate' (closest: search.click_through_rate")
    if command[1] == "evaluate":
        assert "evaluated 4 rules" in captured.out  # the rules with unknown metrics are evaluated too: no data, no alert
        assert "0 firing, 0 pending" in captured.out
    else:
        assert "open alerts: 0" in captured.out


def test_the_evaluation_run_logs_the_warnings(duckdb_warehouse, tmp_path):
    from dagster import instance_for_test

    from kpi_pipelines.alerts.config import AlertingResource
    from kpi_pipelines.alerts.job import alert_evaluation_job

    path = write(tmp_path, UNKNOWN_METRIC_RULES)
    resources = {
        "warehouse": warehouse_resource(duckdb_warehouse),
        "alerting": AlertingResource(rules_path=str(path)),
    }
    with instance_for_test() as instance:
        result = alert_evaluation_job.execute_in_process(instance=instance, resources=resources)
        assert result.success
        logged = [
            record.user_message for record in instance.all_logs(result.run_id)
            if record.level == logging.WARNING and "finds no data" in record.user_message
        ]
    assert len(logged) == 3 and logged[0].startswith(f"{path}: rule 'typo': unknown metric 'search.clickthrough_rate'")
