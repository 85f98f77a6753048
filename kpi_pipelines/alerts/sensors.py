"""The alerting sensors (all RUNNING by default, each with a cursor).

- `alert_evaluation_sensor` watches asset materializations and requests
  `alert_evaluation_job` when there are new ones, at most once a minute, and at least every
  `KPI_ALERT_EVALUATION_INTERVAL` (15m) even without them: pending durations, repeat
  intervals, keep_firing_for and outbox retries need evaluations of their own. It never opens
  the warehouse (DuckDB has one writing process; sensors run in the daemon).
- `run_failure_alert_sensor` and `failed_asset_check_sensor` read the Dagster instance only
  and post directly to the rules file's `dagster_alerts` channels. Their cursor moves past
  an event only once it was delivered: a failed post is tried again on the next tick
  (at-least-once). Dagster does not fail a run when a non-blocking check fails, so the check
  sensor is how those failures reach people.
"""


import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    RunStatusChangeRecordsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)
from dagster._core.storage.asset_check_execution_record import (  # no public import in 1.13
    AssetCheckExecutionRecordStatus,
)

from kpi_pipelines.alerts.config import AlertingResource, AlertSettings
from kpi_pipelines.alerts.job import alert_evaluation_job
from kpi_pipelines.alerts.messages import render_dagster_events
from kpi_pipelines.alerts.rules import Channel, RuleSet, load_rules
from kpi_pipelines.alerts.transports import DeliveryError, Transports

logger = logging.getLogger("kpi_pipelines.alerts")
MINIMUM_INTERVAL_SECONDS = 60
FIRST_TICK_LOOKBACK_SECONDS = 3600  # a sensor without a cursor reports failures of the last hour
IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def _cursor(context: SensorEvaluationContext) -> dict[str, Any]:
    try:
        value = json.loads(context.cursor) if context.cursor else {}
    except ValueError:
        value = {}
    return value if isinstance(value, dict) else {}


def latest_materialization_id(context: SensorEvaluationContext, keys: Sequence[AssetKey]) -> int | None:
    """The newest materialization's storage id among `keys` (one event-log query)."""
    ids = [
        record.asset_entry.last_materialization_storage_id
        for record in context.instance.get_asset_records(list(keys))
        if record.asset_entry.last_materialization_storage_id is not None
    ]
    return max(ids) if ids else None


@sensor(
    job=alert_evaluation_job,
    minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Requests an alert evaluation run when assets were materialized (at most once a minute) "
        "and at least every KPI_ALERT_EVALUATION_INTERVAL."
    ),
)
def alert_evaluation_sensor(context: SensorEvaluationContext, alerting: AlertingResource):
    settings = alerting.get_settings()
    cursor = _cursor(context)
    seen, requested = cursor.get("storage_id"), cursor.get("requested_at")
    keys = sorted(context.repository_def.asset_graph.materializable_asset_keys) if context.repository_def else []
    newest = latest_materialization_id(context, keys) if keys else None
    now = time.time()
    fresh = newest is not None and (seen is None or newest > seen)
    heartbeat = requested is None or now - requested >= settings.evaluation_interval.total_seconds()
    if not fresh and not heartbeat:
        return SkipReason("no new materializations since the last evaluation")
    in_flight = context.instance.get_runs(RunsFilter(job_name=alert_evaluation_job.name, statuses=IN_FLIGHT), limit=1)
    if in_flight:  # the cursor stays: the next tick asks again
        return SkipReason(f"alert evaluation run {in_flight[0].run_id} is still queued or running")
    context.update_cursor(json.dumps({"storage_id": newest if newest is not None else seen, "requested_at": now}))
    reason = "materialization" if fresh else "interval"
    return RunRequest(
        run_key=f"alerts-{int(now * 1000)}",
        tags={"kpi/trigger": f"sensor:{reason}", "kpi/kind": "alerts"},
    )


def _dagster_channels(ruleset: RuleSet | None) -> list[Channel]:
    if ruleset is None or not ruleset.dagster_channels:
        return [Channel("dagster-log", "log", "the log")]
    return [ruleset.channels[name] for name in ruleset.dagster_channels]


def deliver_dagster_events(settings: AlertSettings, events: list[dict[str, Any]], transports: Transports | None = None) -> int:
    """Post `events` to the dagster_alerts channels, one message per channel; raise
    DeliveryError if any channel failed (the caller keeps its cursor)."""
    try:
        ruleset: RuleSet | None = load_rules(settings.rules_path)
    except Exception as error:  # a broken rules file must not silence run failures: log them
        logger.error("alert rules unreadable (%s); Dagster alerts go to the log", str(error).splitlines()[0])
        ruleset = None
    transports = transports or Transports(settings)
    failures = []
    for channel in _dagster_channels(ruleset):
        message = render_dagster_events(channel.name, events, settings.webserver_url)
        try:
            transports.for_channel(channel).send(channel, message)
        except DeliveryError as error:
            failures.append(f"{channel.name}: {error}")
    if failures:
        raise DeliveryError("; ".join(failures))
    return len(events)


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0][:500] if (text or "").strip() else ""


def _root_message(error: Any) -> str:
    """The user's error under Dagster's wrappers (the deepest `cause`), first line."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return _first_line(error.message)


def _failure_reason(entry: Any) -> str:
    event = entry.dagster_event
    data = getattr(event, "event_specific_data", None)
    step = getattr(data, "first_step_failure_event", None)
    if step is not None and getattr(step.event_specific_data, "error", None) is not None:
        return f"step {step.step_key}: {_root_message(step.event_specific_data.error)}"
    if getattr(data, "error", None) is not None:
        return _root_message(data.error)
    return _first_line(getattr(event, "message", None) or entry.user_message)


def _deliver_then_advance(
    context: SensorEvaluationContext, settings: Any, events: list[dict[str, Any]], cursor: dict[str, int], noun: str
) -> SkipReason:
    """Post the events; move the cursor past them only once delivered (else retried next tick)."""
    try:
        deliver_dagster_events(settings, events)
    except DeliveryError as error:
        return SkipReason(f"{len(events)} {noun} not delivered, tried again next tick: {error}")
    context.update_cursor(json.dumps(cursor))
    return SkipReason(f"posted {len(events)} {noun}")


@sensor(
    minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description="Posts every failed run (any job) to the dagster_alerts channels of the rules file.",
)
def run_failure_alert_sensor(context: SensorEvaluationContext, alerting: AlertingResource):
    settings = alerting.get_settings()
    cursor = _cursor(context).get("storage_id")
    records_filter = RunStatusChangeRecordsFilter(
        event_type=DagsterEventType.RUN_FAILURE,
        after_storage_id=cursor,
        after_timestamp=None if cursor is not None else time.time() - FIRST_TICK_LOOKBACK_SECONDS,
    )
    records = context.instance.fetch_run_status_changes(records_filter, limit=50, ascending=True).records
    if not records:
        if cursor is None:
            context.update_cursor(json.dumps({"storage_id": 0}))
        return SkipReason("no new run failures")
    base = settings.webserver_url.rstrip("/")
    events = [
        {
            "kind": "run_failure",
            "id": record.storage_id,
            "run_id": record.event_log_entry.run_id,
            "job": record.event_log_entry.job_name or "?",
            "error": _failure_reason(record.event_log_entry),
            "failed_at": record.event_log_entry.timestamp,
            "url": f"{base}/runs/{record.event_log_entry.run_id}",
        }
        for record in records
    ]
    last = max(record.storage_id for record in records)
    return _deliver_then_advance(context, settings, events, {"storage_id": last}, "run failure(s)")


@sensor(
    minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description="Posts failed asset checks (blocking or not) to the dagster_alerts channels of the rules file.",
)
def failed_asset_check_sensor(context: SensorEvaluationContext, alerting: AlertingResource):
    settings = alerting.get_settings()
    cursor = _cursor(context).get("id")
    since = None if cursor is not None else time.time() - FIRST_TICK_LOOKBACK_SECONDS
    check_keys = sorted(context.repository_def.asset_graph.asset_check_keys, key=str) if context.repository_def else []
    failed = []
    storage = context.instance.event_log_storage
    for key in check_keys:
        for record in storage.get_asset_check_execution_history(key, limit=50, status={AssetCheckExecutionRecordStatus.FAILED}):
            if (cursor is not None and record.id > cursor) or (cursor is None and record.create_timestamp >= since):
                failed.append(record)
    if not failed:
        if cursor is None:
            context.update_cursor(json.dumps({"id": 0}))
        return SkipReason("no new failed asset checks")
    failed.sort(key=lambda record: record.id)
    base = settings.webserver_url.rstrip("/")
    events = []
    for record in failed:
        evaluation = record.event.dagster_event.event_specific_data if record.event and record.event.dagster_event else None
        asset = record.key.asset_key.to_user_string()
        events.append(
            {
                "kind": "check_failed",
                "id": record.id,
                "run_id": record.run_id,
                "asset": asset,
                "check": record.key.name,
                "partition": record.partition or getattr(evaluation, "partition", None),
                "severity": getattr(getattr(evaluation, "severity", None), "value", "ERROR"),
                "description": getattr(evaluation, "description", None) or "",
                "blocking": bool(getattr(evaluation, "blocking", False)),
                "url": f"{base}/assets/{'/'.join(record.key.asset_key.path)}?view=checks",
            }
        )
    last = max(record.id for record in failed)
    return _deliver_then_advance(context, settings, events, {"id": last}, "failed asset check(s)")
