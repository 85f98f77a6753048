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
  sensor is how those failures reach people. Without a cursor they report the last hour only.
  One incident is one alert: a run that Dagster's run retries will retry is reported by its
  final attempt, a failed check once per check and first run (a range run's failing days in
  one alert, its retries not again). An alert carries
  what failed and why (assets, partition, the cause's first lines, dbt's failing tests), read
  from the run's event log.
"""


import json
import logging
import re
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


# Dagster's tags on runs of the auto-retry daemon (dagster._core.storage.tags, no public export)
WILL_RETRY_TAG, AUTO_RETRY_RUN_ID_TAG, RETRY_NUMBER_TAG = "dagster/will_retry", "dagster/auto_retry_run_id", "dagster/retry_number"
PARTITION_TAG, RANGE_START_TAG, RANGE_END_TAG = (
    "dagster/partition", "dagster/asset_partition_range_start", "dagster/asset_partition_range_end",
)
WAIT_FOR_RETRY_SECONDS = 600  # a retry announced (will_retry) but not launched by then is reported as final
CAUSE_LINES = 8
DBT_ERRORS_MARKER = "Errors parsed from dbt logs:"  # dagster-dbt's DagsterDbtCliRuntimeError text
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
DBT_NOISE = re.compile(r"\d+ of \d+ (FAIL|ERROR)\b|compiled code at ")
OUTSIDE_FAILURE = "marked as failed from outside the execution context"  # report_run_failed's default message


def _lines(text: str | None) -> list[str]:
    return [line.strip()[:300] for line in (text or "").splitlines() if line.strip()]


def _cause_lines(error: Any) -> list[str]:
    """The first lines of the user's error under Dagster's wrappers (the deepest `cause`); for a
    dbt CLI failure, what dbt logged as errors (failing tests and models with their messages)
    instead of the command line."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    head, marker, dbt_errors = (error.message or "").partition(DBT_ERRORS_MARKER)
    if not marker:
        return _lines(head)[:CAUSE_LINES]
    code = re.search(r"exit code `?(-?\d+)", head)
    summary = f"{error.cls_name}: dbt failed" + (f" with exit code {code.group(1)}" if code else "")
    # dbt's error lines carry terminal colours, progress lines ("12 of 13 FAIL 2 name ....")
    # and paths of compiled SQL: keep the messages
    messages = [line for line in _lines(ANSI_ESCAPE.sub("", dbt_errors)) if not DBT_NOISE.match(line)]
    return [summary, *messages][:CAUSE_LINES]


def _error(entry: Any) -> Any:
    return getattr(entry.dagster_event.event_specific_data, "error", None)


def _run_cause(entry: Any, steps: Sequence[Any], engine: Sequence[Any]) -> list[str]:
    """Why a run failed: its failed steps' errors (and what the engine saw of a step worker
    that crashed); else the run's own error or message; for a run failed from outside (a
    killed run worker) the engine's last word before it."""
    lines: list[str] = []
    for step in steps:
        cause = _cause_lines(_error(step)) if _error(step) is not None else _lines(step.dagster_event.message)
        crash = [_lines(e.dagster_event.message)[0] for e in engine if e.step_key == step.step_key and _error(e) and e.dagster_event.message]
        lines += [f"step {step.step_key}: {cause[0] if cause else 'failed'}", *crash, *cause[1:]]
    if lines:
        return lines[:CAUSE_LINES]
    if _error(entry) is not None:
        return _cause_lines(_error(entry))
    message = entry.dagster_event.message or entry.user_message
    if OUTSIDE_FAILURE not in (message or ""):
        return _lines(message)[:CAUSE_LINES]
    before = [e for e in engine if e.timestamp <= entry.timestamp]
    with_error = [e for e in before if _error(e) is not None]
    last = _cause_lines(_error(with_error[-1])) if with_error else _lines(before[-1].dagster_event.message) if before else []
    return [_lines(message)[0], *last][:CAUSE_LINES]


def _partitions_text(partitions: Sequence[str]) -> str:
    ordered = sorted(set(partitions))
    if len(ordered) <= 3:
        return ", ".join(ordered)
    return f"{ordered[0]} … {ordered[-1]} ({len(ordered)} partitions)"


def _run_failure_details(instance: Any, entry: Any, run: Any) -> tuple[list[str], str, list[str]]:
    """(the assets of the failed steps that did not materialize or failed a check, else all
    their assets; the partition(s) of the run; the cause's first lines), from one read of the
    run's event log."""
    logs = instance.all_logs(
        entry.run_id,
        of_type={
            DagsterEventType.STEP_FAILURE, DagsterEventType.ENGINE_EVENT, DagsterEventType.ASSET_CHECK_EVALUATION,
            DagsterEventType.ASSET_MATERIALIZATION_PLANNED, DagsterEventType.ASSET_MATERIALIZATION,
        },
    )
    steps = [e for e in logs if e.dagster_event.event_type == DagsterEventType.STEP_FAILURE]
    engine = [e for e in logs if e.dagster_event.event_type == DagsterEventType.ENGINE_EVENT]
    failed_steps = {e.step_key for e in steps}
    planned: dict[str, list[str | None]] = {}
    materialized, checked = set(), set()
    for e in logs:
        event = e.dagster_event
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            materialized.add(event.asset_key.to_user_string())
        elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION and not event.event_specific_data.passed:
            checked.add(event.event_specific_data.asset_key.to_user_string())
        elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED and (not failed_steps or e.step_key in failed_steps):
            planned.setdefault(event.asset_key.to_user_string(), []).append(event.partition)
    # not materialized, or materialized with a failed check (dbt: the model built, its test failed)
    assets = sorted((set(planned) - materialized) | (set(planned) & checked)) or sorted(planned)
    tags = run.tags if run is not None else {}
    if tags.get(PARTITION_TAG):
        partition = tags[PARTITION_TAG]
    elif tags.get(RANGE_START_TAG):
        partition = f"{tags[RANGE_START_TAG]} … {tags.get(RANGE_END_TAG, '?')}"
    else:
        partition = _partitions_text([p for values in planned.values() for p in values if p])
    return assets, partition, _run_cause(entry, steps, engine)


def _attempt(run: Any) -> str:
    """'' for a run never retried, else which attempt of which first run it was."""
    if run is None or not run.tags.get(RETRY_NUMBER_TAG):
        return ""
    return f"attempt {int(run.tags[RETRY_NUMBER_TAG]) + 1}, first run {run.root_run_id}"


def _retry_pending(run: Any, failed_at: float, now: float) -> bool | None:
    """True while the auto-retry daemon announced a retry it has not launched yet; None when
    it launched one (that run reports the incident); False when this failure is final."""
    if run is None or run.tags.get(WILL_RETRY_TAG) != "true":
        return False
    if run.tags.get(AUTO_RETRY_RUN_ID_TAG):
        return None
    return now - failed_at < WAIT_FOR_RETRY_SECONDS


def _deliver_then_advance(
    context: SensorEvaluationContext, settings: Any, events: list[dict[str, Any]], cursor: dict[str, Any], noun: str
) -> SkipReason:
    """Post the events; move the cursor past them only once delivered (else retried next tick)."""
    if not events:
        context.update_cursor(json.dumps(cursor))
        return SkipReason(f"no new {noun}")
    try:
        deliver_dagster_events(settings, events)
    except DeliveryError as error:
        return SkipReason(f"{len(events)} {noun} not delivered, tried again next tick: {error}")
    context.update_cursor(json.dumps(cursor))
    return SkipReason(f"posted {len(events)} {noun}")


def _newest_failure_before(instance: Any, timestamp: float) -> int:
    """The storage id of the newest run failure older than `timestamp` (0 if none): where a
    sensor without a cursor starts, so older failures are never sent."""
    older = instance.fetch_run_status_changes(
        RunStatusChangeRecordsFilter(event_type=DagsterEventType.RUN_FAILURE, before_timestamp=timestamp), limit=1
    ).records
    return older[0].storage_id if older else 0


@sensor(
    minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Posts every failed run (any job) to the dagster_alerts channels of the rules file, once "
        "per incident: a run the auto-retry daemon retries is reported by its last attempt."
    ),
)
def run_failure_alert_sensor(context: SensorEvaluationContext, alerting: AlertingResource):
    settings = alerting.get_settings()
    state = _cursor(context)
    after = state.get("storage_id")
    waiting: list[int] = [int(i) for i in state.get("waiting", [])]
    now = time.time()
    if after is None:
        since = now - FIRST_TICK_LOOKBACK_SECONDS
        after = _newest_failure_before(context.instance, since)
    new = context.instance.fetch_run_status_changes(
        RunStatusChangeRecordsFilter(event_type=DagsterEventType.RUN_FAILURE, after_storage_id=after), limit=50, ascending=True
    ).records
    pending = (
        context.instance.fetch_run_status_changes(
            RunStatusChangeRecordsFilter(event_type=DagsterEventType.RUN_FAILURE, storage_ids=waiting), limit=len(waiting)
        ).records
        if waiting
        else []
    )
    records = sorted({record.storage_id: record for record in [*pending, *new]}.values(), key=lambda r: r.storage_id)
    runs = (
        {run.run_id: run for run in context.instance.get_runs(RunsFilter(run_ids=[r.event_log_entry.run_id for r in records]))}
        if records
        else {}
    )
    base = settings.webserver_url.rstrip("/")
    events, still_waiting = [], []
    for record in records:
        entry = record.event_log_entry
        run = runs.get(entry.run_id)
        retry = _retry_pending(run, entry.timestamp, now)
        if retry is None:
            continue
        if retry:
            still_waiting.append(record.storage_id)
            continue
        assets, partition, cause = _run_failure_details(context.instance, entry, run)
        attempt = _attempt(run)
        if run is not None and run.tags.get(WILL_RETRY_TAG) == "true":
            attempt = (attempt + "; " if attempt else "") + f"its retry was not launched within {WAIT_FOR_RETRY_SECONDS // 60} min"
        events.append(
            {
                "kind": "run_failure",
                "id": record.storage_id,
                "run_id": entry.run_id,
                "job": entry.job_name or "?",
                "assets": assets,
                "partition": partition,
                "attempt": attempt,
                "cause": cause,
                "failed_at": entry.timestamp,
                "url": f"{base}/runs/{entry.run_id}",
            }
        )
    cursor = {"storage_id": max([after, *(r.storage_id for r in new)]), "waiting": still_waiting}
    return _deliver_then_advance(context, settings, events, cursor, "run failure(s)")


def _check_details(metadata: Any) -> str:
    """The failing counts a check reported in its metadata (dbt: failed_row_count; the GX
    checks: unexpected_count per expectation, rows_checked)."""
    parts = []
    for key, raw in (metadata or {}).items():
        value = getattr(raw, "value", raw)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not re.search(r"count|fail|rows", key):
            continue
        if value or key == "rows_checked":
            parts.append(f"{key.removeprefix('dagster_dbt/')}={value:g}")
    return "; ".join(parts)


@sensor(
    minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Posts failed asset checks (blocking or not) to the dagster_alerts channels of the rules "
        "file, once per check and first run: the days of a range run and the run's retries in one alert."
    ),
)
def failed_asset_check_sensor(context: SensorEvaluationContext, alerting: AlertingResource):
    settings = alerting.get_settings()
    cursor = _cursor(context).get("id")
    since = time.time() - FIRST_TICK_LOOKBACK_SECONDS
    check_keys = sorted(context.repository_def.asset_graph.asset_check_keys, key=str) if context.repository_def else []
    storage = context.instance.event_log_storage
    history = [
        record
        for key in check_keys
        for record in storage.get_asset_check_execution_history(key, limit=50, status={AssetCheckExecutionRecordStatus.FAILED})
    ]
    if cursor is None:  # start after the newest failure evaluated before the lookback
        cursor = max((record.id for record in history if (record.event.timestamp if record.event else record.create_timestamp) < since), default=0)
    history.sort(key=lambda record: record.id)
    roots = {run.run_id: run for run in context.instance.get_runs(RunsFilter(run_ids=list({r.run_id for r in history})))} if history else {}
    base = settings.webserver_url.rstrip("/")
    # one incident: a check's failures in one run and its retries, whatever the days (a
    # range run records a result per day); earlier attempts' records mark it reported
    reported: set[tuple[Any, ...]] = set()
    incidents: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in history:
        evaluation = record.event.dagster_event.event_specific_data if record.event and record.event.dagster_event else None
        partition = record.partition or getattr(evaluation, "partition", None)
        run = roots.get(record.run_id)
        incident = (record.key, (run.root_run_id or run.run_id) if run is not None else record.run_id)
        if record.id <= cursor:
            reported.add(incident)
            continue
        if incident in reported:
            continue
        if incident in incidents:
            incidents[incident]["partitions"].append(partition)
            continue
        incidents[incident] = {
            "kind": "check_failed",
            "id": record.id,
            "run_id": record.run_id,
            "asset": record.key.asset_key.to_user_string(),
            "check": record.key.name,
            "partitions": [partition],
            "severity": getattr(getattr(evaluation, "severity", None), "value", "ERROR"),
            "description": getattr(evaluation, "description", None) or "",
            "details": _check_details(getattr(evaluation, "metadata", None)),
            "blocking": bool(getattr(evaluation, "blocking", False)),
            "attempt": _attempt(run),
            "url": f"{base}/assets/{'/'.join(record.key.asset_key.path)}?view=checks",
            "run_url": f"{base}/runs/{record.run_id}",
        }
    events = []
    for event in incidents.values():
        days = [p for p in event.pop("partitions") if p]
        events.append({**event, "partition": _partitions_text(days) if days else None})
    last = max([cursor, *(record.id for record in history)])
    return _deliver_then_advance(context, settings, events, {"id": last}, "failed asset check(s)")
