"""The Dagster alert sensors on real instances (SQLite storage, and PostgreSQL storage as
deployed) and real failing runs, posting to the local fake Slack over HTTP: a sensor without
a cursor sends only the last hour's failures; a run retried by Dagster's run retries is one
alert, and so are its failed checks; an alert names the assets, partition, check or dbt test,
the cause's first lines and the run."""

from __future__ import annotations

import datetime as dt
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetKey,
    DagsterEvent,
    DagsterEventType,
    DailyPartitionsDefinition,
    Definitions,
    ReexecutionOptions,
    asset,
    asset_check,
    build_sensor_context,
    define_asset_job,
    execute_job,
    in_process_executor,
    instance_for_test,
    job,
    materialize,
    op,
    reconstructable,
)

from sqlalchemy.engine import make_url

from kpi_pipelines.alerts.config import AlertingResource
from kpi_pipelines.alerts.sensors import failed_asset_check_sensor, run_failure_alert_sensor
from kpi_pipelines_tests.conftest import postgres_or_skip, warehouse_resource
from kpi_pipelines_tests.test_alerts_dagster import broken_job
from kpi_pipelines_tests.test_deployment import fresh_database

pytestmark = pytest.mark.timeout(300)

RULES = "channels:\n  ops: {type: slack, channel: '#ops'}\ndagster_alerts:\n  channels: [ops]\nrules: []\n"
HOUR = 3600


@pytest.fixture
def resources(tmp_path, slack):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return {"alerting": AlertingResource(rules_path=str(path), slack_token="xoxb-test", slack_base_url=slack.base_url,
                                         webserver_url="http://dagster.test:3000")}


@contextlib.contextmanager
def dagster_instance(storage: str, **overrides) -> Iterator:
    """A temporary Dagster instance on SQLite files, or on a fresh PostgreSQL database
    (dagster-postgres, as dagster.yaml deploys it)."""
    if storage == "sqlite":
        with instance_for_test(overrides=overrides or None) as instance:
            yield instance
        return
    url = postgres_or_skip()
    with fresh_database(url, "kpi_alerts_instance") as name:
        instance_url = make_url(url).set(drivername="postgresql+psycopg2", database=name)
        storage_config = {"postgres": {"postgres_url": instance_url.render_as_string(hide_password=False)}}
        with instance_for_test(overrides={"storage": storage_config, **overrides}) as instance:
            yield instance


@pytest.fixture(params=["sqlite", "postgresql"])
def make_instance(request) -> Callable:
    return lambda **overrides: dagster_instance(request.param, **overrides)


def tick(sensor, instance, definitions, resources, cursor):
    """One evaluation of `sensor`; returns (its skip message, the cursor it left)."""
    context = build_sensor_context(instance=instance, definitions=definitions, resources=resources, cursor=cursor)
    return sensor(context).skip_message, context.cursor


# --- jobs and assets that fail -------------------------------------------------------------


days = DailyPartitionsDefinition(start_date="2026-03-01")


@asset(partitions_def=days)
def daily_kpi(context) -> int:
    raise ValueError(f"3 rows of {context.partition_key} have no session\nfirst: event e1\nsecond: event e2")


@asset
def checked_kpi() -> int:
    return 1


@asset_check(asset=checked_kpi, blocking=True)
def no_negative_values() -> AssetCheckResult:
    return AssetCheckResult(passed=False, description="values below 0", metadata={"negative_count": 2, "rows_checked": 40})


def retried_job():
    """checked_kpi with its blocking check, as the run retries re-execute it (reconstructable)."""
    definitions = Definitions(assets=[checked_kpi], asset_checks=[no_negative_values], jobs=[define_asset_job("retried_job", executor_def=in_process_executor)])
    return definitions.resolve_job_def("retried_job")


@op
def killed():
    os.kill(os.getpid(), signal.SIGKILL)


@job  # the default multiprocess executor: the step runs in a child process that dies
def killed_worker_job():
    killed()


def plant_run_failure(instance, seconds_ago: float) -> str:
    """A run of broken_job whose failure was recorded `seconds_ago` (the event's own time)."""
    run = instance.create_run_for_job(broken_job)
    instance.report_dagster_event(
        DagsterEvent(DagsterEventType.RUN_FAILURE.value, job_name="broken_job", message="an old failure"),
        run.run_id, timestamp=time.time() - seconds_ago,
    )
    return run.run_id


def plant_check_failure(instance, seconds_ago: float, partitions: tuple[str | None, ...] = (None,)) -> None:
    """One run whose check failed on each of `partitions` (a range run records one per day)."""
    run = instance.create_run_for_job(broken_job)
    for partition in partitions:
        evaluation = AssetCheckEvaluation(asset_key=AssetKey("checked_kpi"), check_name="no_negative_values", passed=False,
                                          description="an old failure", partition=partition)
        instance.report_dagster_event(
            DagsterEvent(DagsterEventType.ASSET_CHECK_EVALUATION.value, job_name="broken_job", event_specific_data=evaluation),
            run.run_id, timestamp=time.time() - seconds_ago,
        )


# --- a sensor without a cursor -------------------------------------------------------------


@pytest.mark.slow
def test_without_a_cursor_the_run_failure_sensor_sends_only_the_last_hour(slack, resources, make_instance):
    definitions = Definitions(jobs=[broken_job], sensors=[run_failure_alert_sensor])
    with make_instance() as instance:
        old = [plant_run_failure(instance, seconds_ago) for seconds_ago in (3 * HOUR, 2 * HOUR, HOUR + 60)]
        # only older failures: nothing now, and nothing on the next tick either (the cursor
        # must start after them, not at 0)
        message, cursor = tick(run_failure_alert_sensor, instance, definitions, resources, None)
        assert message == "no new run failure(s)"
        message, cursor = tick(run_failure_alert_sensor, instance, definitions, resources, cursor)
        assert message == "no new run failure(s)" and slack.posts() == []

        recent = plant_run_failure(instance, HOUR - 120)
        fresh = broken_job.execute_in_process(instance=instance, raise_on_error=False).run_id
        message, cursor = tick(run_failure_alert_sensor, instance, definitions, resources, cursor)
        assert message == "posted 2 run failure(s)"

        # the cursor deleted: the failures of the last hour again, none of the three older ones
        message, _ = tick(run_failure_alert_sensor, instance, definitions, resources, None)
        assert message == "posted 2 run failure(s)"
        text = slack.posts()[-1].body["text"]
        assert recent in text and fresh in text
        assert not any(run_id in text for run_id in old)
        assert len(slack.posts()) == 2


def test_without_a_cursor_the_check_sensor_sends_only_the_last_hour(slack, resources, make_instance):
    definitions = Definitions(assets=[checked_kpi], asset_checks=[no_negative_values], sensors=[failed_asset_check_sensor])
    with make_instance() as instance:
        for seconds_ago in (5 * HOUR, 2 * HOUR, HOUR + 60):
            plant_check_failure(instance, seconds_ago)
        message, cursor = tick(failed_asset_check_sensor, instance, definitions, resources, None)
        assert message == "no new failed asset check(s)"
        message, cursor = tick(failed_asset_check_sensor, instance, definitions, resources, cursor)
        assert message == "no new failed asset check(s)" and slack.posts() == []

        plant_check_failure(instance, HOUR - 120)
        message, _ = tick(failed_asset_check_sensor, instance, definitions, resources, None)
        assert message == "posted 1 failed asset check(s)"
        (post,) = slack.posts()
        assert post.body["text"].count("check no_negative_values on checked_kpi failed") == 1


# --- one incident, one alert ---------------------------------------------------------------


@pytest.mark.slow
def test_a_run_retried_twice_is_one_run_alert_and_one_check_alert(slack, resources, make_instance):
    definitions = Definitions(assets=[checked_kpi], asset_checks=[no_negative_values], sensors=[run_failure_alert_sensor, failed_asset_check_sensor])
    overrides = {"run_retries": {"enabled": True, "max_retries": 2}}
    with make_instance(**overrides) as instance:
        run_cursor = check_cursor = None
        parent = None
        attempts = []
        for retry_number in range(3):
            # what the auto-retry daemon does (instance.create_reexecuted_run): re-execute from
            # failure with the run group's tags, then tag the failed run with the retry's id
            options = ReexecutionOptions.from_failure(parent, instance) if parent else None
            tags = {"dagster/retry_number": str(retry_number), "dagster/parent_run_id": parent,
                    "dagster/root_run_id": attempts[0]} if parent else {}
            with execute_job(reconstructable(retried_job), instance, tags=tags, reexecution_options=options) as result:
                assert not result.success
                run_id = result.run_id
            if parent:
                instance.add_run_tags(parent, {"dagster/auto_retry_run_id": run_id})
            attempts.append(run_id)
            parent = run_id
            message, run_cursor = tick(run_failure_alert_sensor, instance, definitions, resources, run_cursor)
            _, check_cursor = tick(failed_asset_check_sensor, instance, definitions, resources, check_cursor)
            if retry_number < 2:  # a retry follows: nothing yet
                assert message == "no new run failure(s)", message
        assert [instance.get_run_by_id(r).tags.get("dagster/will_retry") for r in attempts] == ["true", "true", "false"]
        assert message == "posted 1 run failure(s)"

        run_posts = [p for p in slack.posts() if "run failure" in p.body["text"]]
        check_posts = [p for p in slack.posts() if "failed asset check" in p.body["text"]]
        assert len(run_posts) == 1 and len(check_posts) == 1 and len(slack.posts()) == 2
        run_text, check_text = run_posts[0].body["text"], check_posts[0].body["text"]
        assert f"attempt 3, first run {attempts[0]}" in run_text
        assert f"http://dagster.test:3000/runs/{attempts[2]}" in run_text
        assert "step checked_kpi_no_negative_values" in run_text
        assert "check no_negative_values on checked_kpi failed (ERROR, blocking)" in check_text
        assert "values below 0" in check_text and "negative_count=2; rows_checked=40" in check_text
        assert f"run: http://dagster.test:3000/runs/{attempts[0]}" in check_text

        # nothing more on later ticks
        assert tick(run_failure_alert_sensor, instance, definitions, resources, run_cursor)[0] == "no new run failure(s)"
        assert tick(failed_asset_check_sensor, instance, definitions, resources, check_cursor)[0] == "no new failed asset check(s)"


def test_a_range_runs_failing_days_are_one_alert_naming_the_days(slack, resources, make_instance):
    definitions = Definitions(assets=[checked_kpi], asset_checks=[no_negative_values], sensors=[failed_asset_check_sensor])
    with make_instance() as instance:
        _, cursor = tick(failed_asset_check_sensor, instance, definitions, resources, None)
        plant_check_failure(instance, 60, tuple(f"2026-03-0{day}" for day in range(1, 6)))
        plant_check_failure(instance, 30, ("2026-03-06",))  # another run: another incident
        message, cursor = tick(failed_asset_check_sensor, instance, definitions, resources, cursor)
        assert message == "posted 2 failed asset check(s)"
        (post,) = slack.posts()
        text = post.body["text"]
        assert text.count("check no_negative_values on checked_kpi failed") == 2
        assert "partition 2026-03-01 … 2026-03-05 (5 partitions)" in text and "partition 2026-03-06" in text
        assert tick(failed_asset_check_sensor, instance, definitions, resources, cursor)[0] == "no new failed asset check(s)"


@pytest.mark.slow
def test_a_retry_announced_but_never_launched_is_reported_after_ten_minutes(slack, resources, make_instance):
    definitions = Definitions(jobs=[broken_job], sensors=[run_failure_alert_sensor])
    with make_instance(run_retries={"enabled": True, "max_retries": 1}) as instance:
        waiting = plant_run_failure(instance, 5 * 60)
        stale = plant_run_failure(instance, 11 * 60)
        assert instance.get_run_by_id(waiting).tags["dagster/will_retry"] == "true"
        message, cursor = tick(run_failure_alert_sensor, instance, definitions, resources, None)
        assert message == "posted 1 run failure(s)"
        text = slack.posts()[0].body["text"]
        assert stale in text and "its retry was not launched within 10 min" in text and waiting not in text
        assert json.loads(cursor)["waiting"]  # the other one is looked at again next tick
        instance.add_run_tags(waiting, {"dagster/will_retry": "false"})  # the daemon gave up on it
        assert tick(run_failure_alert_sensor, instance, definitions, resources, cursor)[0] == "posted 1 run failure(s)"
        assert waiting in slack.posts()[1].body["text"]


# --- what an alert says --------------------------------------------------------------------


def test_a_run_alert_names_the_asset_partition_cause_lines_and_run(slack, resources, make_instance):
    definitions = Definitions(assets=[daily_kpi], sensors=[run_failure_alert_sensor])
    with make_instance() as instance:
        result = materialize([daily_kpi], instance=instance, partition_key="2026-03-10", raise_on_error=False)
        assert not result.success
        assert tick(run_failure_alert_sensor, instance, definitions, resources, None)[0] == "posted 1 run failure(s)"
        (post,) = slack.posts()
        lines = post.body["text"].splitlines()
        assert lines[1].startswith(f"- run {result.run_id[:8]} of job __ephemeral_asset_job__ failed (assets daily_kpi; partition 2026-03-10)")
        assert lines[2:5] == [
            "    step daily_kpi: ValueError: 3 rows of 2026-03-10 have no session",
            "    first: event e1",
            "    second: event e2",
        ]
        assert f"http://dagster.test:3000/runs/{result.run_id}" in lines[1]
        blocks = json.dumps(post.body["blocks"])
        assert "assets daily_kpi; partition 2026-03-10" in blocks and "second: event e2" in blocks


@pytest.mark.slow
def test_a_killed_step_worker_says_it_was_killed(slack, resources, make_instance):
    definitions = Definitions(jobs=[killed_worker_job], sensors=[run_failure_alert_sensor])
    with make_instance() as instance:
        with execute_job(reconstructable(killed_worker_job), instance) as result:
            assert not result.success
        assert tick(run_failure_alert_sensor, instance, definitions, resources, None)[0] == "posted 1 run failure(s)"
        text = slack.posts()[0].body["text"]
        assert "step killed:" in text and "signal 9 (SIGKILL)" in text, text


def test_a_run_failed_from_outside_says_what_the_engine_saw(slack, resources, make_instance):
    definitions = Definitions(jobs=[broken_job], sensors=[run_failure_alert_sensor])
    with make_instance() as instance:
        run = instance.create_run_for_job(broken_job)
        # what the code server records when a run worker process dies (dagster/_grpc/server.py)
        instance.report_engine_event("Run execution process for x was terminated by signal 9 (SIGKILL).", run)
        instance.report_run_failed(run)
        assert tick(run_failure_alert_sensor, instance, definitions, resources, None)[0] == "posted 1 run failure(s)"
        lines = slack.posts()[0].body["text"].splitlines()
        assert lines[2:4] == [
            "    This run has been marked as failed from outside the execution context.",
            "    Run execution process for x was terminated by signal 9 (SIGKILL).",
        ]


# --- a dbt test failing in a real run of the project's dbt assets, on both backends ---------


@pytest.mark.slow
def test_a_failing_dbt_test_alerts_with_the_test_name_its_message_and_the_failing_rows(warehouse, slack, resources):
    from kpi_pipelines import rollups
    from kpi_pipelines.kpis.store import Metric, replace_daily_metrics
    from kpi_pipelines.rollups import rollups_dbt_resource
    dbt = rollups_dbt_resource(warehouse_resource(warehouse))
    day = dt.date(2026, 3, 10)  # the warehouse's tables (created on first use) and one rate above 1
    replace_daily_metrics(warehouse, "business_metrics", day, day + dt.timedelta(days=1),
                          [Metric("business.conversion_rate", 1.5, day), Metric("business.ctr_rate", 0.5, day)])
    warehouse.dispose()  # DuckDB: dbt's process writes the file
    run = dbt.cli(["run"], raise_on_error=False)  # every model (the rollup tables the views read)
    run.wait()
    assert run.is_successful(), run.get_error()

    definitions = Definitions(assets=[rollups.rollup_models, rollups.rollup_views], resources={"dbt": dbt, **resources},
                              sensors=[run_failure_alert_sensor, failed_asset_check_sensor])
    # the instance on the warehouse's kind of database: SQLite files beside DuckDB, PostgreSQL beside PostgreSQL
    with dagster_instance("sqlite" if warehouse.duckdb_path else "postgresql") as instance:
        result = materialize([rollups.rollup_views], instance=instance, resources={"dbt": dbt}, raise_on_error=False)
        assert not result.success
        test_name = "rates_within_unit_interval_kpi_metrics_all_metric_value"
        assert tick(run_failure_alert_sensor, instance, definitions, resources, None)[0] == "posted 1 run failure(s)"
        assert tick(failed_asset_check_sensor, instance, definitions, resources, None)[0] == "posted 1 failed asset check(s)"
    run_text, check_text = (post.body["text"] for post in slack.posts())
    lines = run_text.splitlines()
    assert lines[1].startswith(f"- run {result.run_id[:8]} of job __ephemeral_asset_job__ failed (assets kpi_metrics_all)")
    assert lines[2] == "    step rollup_views: DagsterDbtCliRuntimeError: dbt failed with exit code 1"
    assert lines[3] == f"    Failure in test {test_name} (models/marts/marts.yml)"
    # the day's 1.5 and the weekly mean of that one day (rollup_daily_kpis_weekly), 1.5 too
    assert lines[4] == "    Got 2 results, configured to fail if != 0"
    assert f"http://dagster.test:3000/runs/{result.run_id}" in lines[1]
    assert check_text.splitlines()[1].startswith(f"- check {test_name} on kpi_metrics_all failed (ERROR")
    assert "    failed_row_count=2" in check_text.splitlines()
