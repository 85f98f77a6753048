"""The Dagster side of alerting (the evaluation job and the three sensors, on real
instances) and the `kpi alerts` commands."""

from __future__ import annotations

import datetime as dt
import json
import textwrap

import pytest
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    DagsterRunStatus,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    SkipReason,
    asset,
    asset_check,
    build_sensor_context,
    instance_for_test,
    job,
    materialize,
    op,
)

from kpi_pipelines.alerts import defs as alert_defs
from kpi_pipelines.alerts.config import AlertingResource
from kpi_pipelines.alerts.job import alert_evaluation_job, parse_at
from kpi_pipelines.alerts.sensors import (
    alert_evaluation_sensor,
    failed_asset_check_sensor,
    run_failure_alert_sensor,
)
from kpi_pipelines.alerts.testing import FakeHTTPServer
from kpi_pipelines.kpis.store import Metric, replace_daily_metrics
from kpi_pipelines.warehouse import WarehouseResource
from kpi_pipelines_tests.conftest import warehouse_resource

pytestmark = pytest.mark.timeout(180)

RULES = """
channels:
  kpi-alerts: {type: slack, channel: "#kpi-alerts"}
dagster_alerts:
  channels: [kpi-alerts]
rules:
  - name: low_conversion
    metric: business.conversion_rate
    condition: less_than
    thresholds: {warning: 0.03, critical: 0.02}
    channels: [kpi-alerts]
"""


@pytest.fixture
def rules_path(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


def alerting(rules_path, slack: FakeHTTPServer) -> AlertingResource:
    return AlertingResource(rules_path=str(rules_path), slack_token="xoxb-test", slack_base_url=slack.base_url,
                            webserver_url="http://dagster.test:3000")


def test_project_definitions_load_with_the_alert_job_and_running_sensors():
    from kpi_pipelines.definitions import defs as project_defs

    merged = Definitions.merge(project_defs, alert_defs) if "alerting" not in (project_defs.resources or {}) else project_defs
    Definitions.validate_loadable(merged)
    repository = merged.get_repository_def()
    assert "alert_evaluation_job" in {j.name for j in repository.get_all_jobs()}
    sensors = {s.name: s for s in repository.sensor_defs}
    for name in ("alert_evaluation_sensor", "run_failure_alert_sensor", "failed_asset_check_sensor"):
        assert sensors[name].default_status == DefaultSensorStatus.RUNNING
        assert sensors[name].minimum_interval_seconds == 60


@pytest.mark.slow
def test_alert_evaluation_job_evaluates_and_delivers(warehouse, slack, rules_path):
    day = dt.date(2026, 3, 11)
    replace_daily_metrics(warehouse, "business_metrics", day, day + dt.timedelta(days=1), [Metric("business.conversion_rate", 0.01, day)])
    resources = {
        "warehouse": warehouse_resource(warehouse),
        "alerting": alerting(rules_path, slack),
    }
    with instance_for_test() as instance:
        result = alert_evaluation_job.execute_in_process(
            instance=instance, resources=resources,
            run_config={"ops": {"evaluate_alerts": {"config": {"at": "2026-03-11T01:00:00Z"}}}},
        )
    assert result.success
    assert result.output_for_node("evaluate_alerts") == {"firing": 1, "pending": 0, "queued": 0}
    (post,) = slack.posts()
    assert "low_conversion" in post.body["text"] and post.body["channel"] == "#kpi-alerts"
    assert warehouse.scalar("SELECT trigger FROM alert_evaluations") == "dagster"


def test_alert_evaluation_job_fails_on_a_broken_rules_file(duckdb_warehouse, slack, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("channels: {}\nrules:\n  - name: x\n    metric: m\n    condition: sometimes\n    thresholds: {warning: 1}\n    channels: []\n")
    resources = {
        "warehouse": warehouse_resource(duckdb_warehouse),
        "alerting": alerting(bad, slack),
    }
    with instance_for_test() as instance:
        result = alert_evaluation_job.execute_in_process(instance=instance, resources=resources, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "rules[0] (x).condition: expected one of" in failure.event_specific_data.error.cause.message
    assert not [e for e in result.all_events if e.is_step_up_for_retry]  # no retry can fix the file


@asset
def some_kpi() -> int:
    return 1


@pytest.mark.slow
def test_evaluation_sensor_requests_a_run_on_new_materializations_and_on_the_interval(slack, rules_path, tmp_path):
    resources = {"alerting": alerting(rules_path, slack)}
    definitions = Definitions(
        assets=[some_kpi], jobs=[alert_evaluation_job], sensors=[alert_evaluation_sensor],
        # the sensor never opens the warehouse: this file is never created
        resources={**resources, "warehouse": WarehouseResource(url=f"duckdb:///{tmp_path / 'never.duckdb'}")},
    )
    with instance_for_test() as instance:
        first = build_sensor_context(instance=instance, definitions=definitions, resources=resources)
        request = alert_evaluation_sensor(first)
        assert isinstance(request, RunRequest) and request.tags["kpi/trigger"] == "sensor:interval"  # no cursor yet

        quiet = build_sensor_context(instance=instance, definitions=definitions, resources=resources, cursor=first.cursor)
        assert isinstance(alert_evaluation_sensor(quiet), SkipReason)

        assert materialize([some_kpi], instance=instance).success
        fresh = build_sensor_context(instance=instance, definitions=definitions, resources=resources, cursor=first.cursor)
        request = alert_evaluation_sensor(fresh)
        assert isinstance(request, RunRequest) and request.tags["kpi/trigger"] == "sensor:materialization"
        cursor = json.loads(fresh.cursor)
        assert cursor["storage_id"] > (json.loads(first.cursor)["storage_id"] or 0)

        again = build_sensor_context(instance=instance, definitions=definitions, resources=resources, cursor=fresh.cursor)
        assert isinstance(alert_evaluation_sensor(again), SkipReason)

        stale = json.dumps({**cursor, "requested_at": cursor["requested_at"] - 16 * 60})  # KPI_ALERT_EVALUATION_INTERVAL 15m
        late = build_sensor_context(instance=instance, definitions=definitions, resources=resources, cursor=stale)
        request = alert_evaluation_sensor(late)
        assert isinstance(request, RunRequest) and request.tags["kpi/trigger"] == "sensor:interval"

        # an evaluation still running: no second one piles up, and the cursor waits
        queued = instance.create_run_for_job(alert_evaluation_job, status=DagsterRunStatus.STARTED)
        assert materialize([some_kpi], instance=instance).success
        busy = build_sensor_context(instance=instance, definitions=definitions, resources=resources, cursor=late.cursor)
        outcome = alert_evaluation_sensor(busy)
        assert isinstance(outcome, SkipReason) and queued.run_id in outcome.skip_message
        assert busy.cursor == late.cursor
    assert not (tmp_path / "never.duckdb").exists()


@op
def explode():
    raise RuntimeError("warehouse on fire")


@job
def broken_job():
    explode()


def test_run_failure_sensor_posts_each_failure_once_and_retries_when_slack_is_down(slack, rules_path):
    definitions = Definitions(jobs=[broken_job], sensors=[run_failure_alert_sensor])
    resources = {"alerting": alerting(rules_path, slack)}
    with instance_for_test() as instance:
        failed = broken_job.execute_in_process(instance=instance, raise_on_error=False)
        assert not failed.success
        context = build_sensor_context(instance=instance, definitions=definitions, resources=resources)
        outcome = run_failure_alert_sensor(context)
        assert "posted 1 run failure" in outcome.skip_message
        (post,) = slack.posts()
        assert "broken_job" in post.body["text"] and "step explode: RuntimeError: warehouse on fire" in post.body["text"]
        assert f"http://dagster.test:3000/runs/{failed.run_id}" in post.body["text"]

        again = build_sensor_context(instance=instance, definitions=definitions, resources=resources, cursor=context.cursor)
        assert "no new run failure(s)" in run_failure_alert_sensor(again).skip_message
        assert len(slack.posts()) == 1

        slack.stop()
        second = broken_job.execute_in_process(instance=instance, raise_on_error=False)
        down = build_sensor_context(instance=instance, definitions=definitions, resources=resources, cursor=context.cursor)
        assert "not delivered" in run_failure_alert_sensor(down).skip_message
        assert down.cursor == context.cursor  # not moved past the undelivered failure
        slack.start()
        back = build_sensor_context(instance=instance, definitions=definitions, resources=resources, cursor=down.cursor)
        assert "posted 1 run failure" in run_failure_alert_sensor(back).skip_message
        assert second.run_id in slack.posts()[-1].body["text"]


@asset
def checked_kpi() -> int:
    return 1


@asset_check(asset=checked_kpi, blocking=False)
def values_in_range() -> AssetCheckResult:
    return AssetCheckResult(passed=False, severity=AssetCheckSeverity.WARN, description="3 proportions above 1")


def test_failed_asset_check_sensor_posts_non_blocking_check_failures(slack, rules_path):
    definitions = Definitions(assets=[checked_kpi], asset_checks=[values_in_range], sensors=[failed_asset_check_sensor])
    resources = {"alerting": alerting(rules_path, slack)}
    with instance_for_test() as instance:
        result = materialize([checked_kpi, values_in_range], instance=instance)
        assert result.success  # Dagster does not fail the run for a non-blocking check
        context = build_sensor_context(instance=instance, definitions=definitions, resources=resources)
        outcome = failed_asset_check_sensor(context)
        assert "posted 1 failed asset check" in outcome.skip_message
        (post,) = slack.posts()
        assert "checked_kpi" in post.body["text"] and "values_in_range" in post.body["text"]
        assert "WARN" in json.dumps(post.body["blocks"]) and "3 proportions above 1" in json.dumps(post.body["blocks"])
        again = build_sensor_context(instance=instance, definitions=definitions, resources=resources, cursor=context.cursor)
        assert "no new failed asset check(s)" in failed_asset_check_sensor(again).skip_message
        assert len(slack.posts()) == 1


# --- the command line ----------------------------------------------------------------------


@pytest.fixture
def kpi(monkeypatch, tmp_path, rules_path):
    """`kpi ...` through kpi_pipelines.cli.main, on a test warehouse and rules file."""
    from kpi_pipelines import cli

    monkeypatch.setenv("KPI_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'cli.duckdb'}")
    monkeypatch.setenv("KPI_ALERT_RULES", str(rules_path))
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    return cli.main


def test_kpi_alerts_evaluate_list_silence(kpi, tmp_path, capsys):
    from kpi_pipelines.warehouse import Warehouse

    warehouse = Warehouse(f"duckdb:///{tmp_path / 'cli.duckdb'}")
    day = dt.date(2026, 3, 10)
    replace_daily_metrics(warehouse, "business_metrics", day, day + dt.timedelta(days=1), [Metric("business.conversion_rate", 0.025, day)])
    assert kpi(["alerts", "evaluate", "--at", "2026-03-11T00:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert "evaluated 1 rules (1 series) at 2026-03-11 00:00:00 UTC: 1 firing" in out
    assert "low_conversion: normal->firing" in out and "SLACK_BOT_TOKEN is not set" in out

    assert kpi(["alerts", "silence", "low_conversion", "--for", "2h", "--reason", "known: tracking outage"]) == 0
    assert "silenced low_conversion for 2h" in capsys.readouterr().out
    assert kpi(["alerts", "list"]) == 0
    out = capsys.readouterr().out
    assert "open alerts: 1" in out and "firing  active  warning   low_conversion" in out
    assert "silences: 1" in out and "known: tracking outage" in out
    assert "kpi-alerts (log)  firing" in out

    assert kpi(["alerts", "silence", "nope", "--for", "2h", "--reason", "x"]) == 1
    assert "kpi: error: no rule named 'nope'" in capsys.readouterr().err
    assert kpi(["alerts", "silence", "low_conversion", "--for", "soon", "--reason", "x"]) == 2
    assert "kpi: error: argument --for: expected a duration" in capsys.readouterr().err
    assert kpi(["alerts", "evaluate", "--at", "tomorrow"]) == 2
    assert "kpi: error: argument --at: 'tomorrow' is not an ISO-8601 time" in capsys.readouterr().err
    assert kpi(["alerts", "unsilence", "low_conversion"]) == 0
    assert "ended 1 silence(s)" in capsys.readouterr().out


def test_kpi_alerts_with_a_broken_rules_file_lists_every_mistake(kpi, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""
        channels: {kpi-alerts: {type: slack, channel: "#k"}}
        rules:
          - name: low_conversion
            metric: business.conversion_rate
            condition: less_than
            thresholds: {warning: 0.03, critical: low}
            window: 1 day
            channels: [kpi-alerts]
    """))
    monkeypatch.setenv("KPI_ALERT_RULES", str(bad))
    assert kpi(["alerts", "evaluate"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"kpi: error: {bad}: rules[0] (low_conversion).thresholds.critical: expected a number, got 'low'",
        f"kpi: error: {bad}: rules[0] (low_conversion).window: expected a duration such as 30s, 15m, 4h or 1d, got '1 day'",
    ]


def test_parse_at():
    assert parse_at("2026-03-11T02:00:00+02:00") == dt.datetime(2026, 3, 11)
    assert parse_at("2026-03-11T00:00:00Z") == dt.datetime(2026, 3, 11)
    assert parse_at("2026-03-11") == dt.datetime(2026, 3, 11)
    with pytest.raises(ValueError):
        parse_at("yesterday")


def test_benchmark_runs_small(duckdb_warehouse):
    from kpi_pipelines.alerts.bench import run

    figures = run(duckdb_warehouse, rules=40, metrics=10, series_per_metric=3, days=30, hours=24 * 7)
    assert figures["rules"] == 40
    assert figures["first_evaluation_window_queries"] == 2 and figures["steady_evaluation_window_queries"] == 2  # not one per rule
    assert figures["first_evaluation_s"] > 0 and figures["firing"] > 0
