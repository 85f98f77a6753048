"""`alert_evaluation_job`: one op that evaluates every active rule and delivers what is due.

Sensors run in the Dagster daemon and must not open the DuckDB warehouse (one writing
process), so the evaluation sensor only requests this job; the run opens the warehouse.
"""


import datetime as dt

from dagster import (
    Config,
    MetadataValue,
    OpExecutionContext,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from kpi_pipelines.alerts.config import AlertingResource
from kpi_pipelines.alerts.engine import EvaluationReport, run_evaluation
from kpi_pipelines.alerts.rules import load_rules
from kpi_pipelines.retries import TRANSIENT_RETRY_POLICY, retry_only_transient
from kpi_pipelines.warehouse import WarehouseResource


def parse_at(text: str) -> dt.datetime:
    """An ISO-8601 evaluation time as naive UTC; a time without a zone is taken as UTC."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 time such as 2026-03-11T00:00:00Z") from None
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


class AlertEvaluationConfig(Config):
    at: str = Field(default="", description="evaluation time (ISO-8601); empty: when the run starts")


def report_metadata(report: EvaluationReport) -> dict[str, MetadataValue]:
    return {
        "evaluated_at": MetadataValue.text(report.evaluated_at.isoformat(sep=" ")),
        "rules": MetadataValue.int(report.rules),
        "series": MetadataValue.int(report.series),
        "firing": MetadataValue.int(report.firing),
        "pending": MetadataValue.int(report.pending),
        "resolved": MetadataValue.int(report.resolved),
        "notifications_queued": MetadataValue.int(report.queued),
        "notifications_delivered": MetadataValue.int(report.delivery.delivered),
        "messages_sent": MetadataValue.int(report.delivery.messages),
        "still_queued": MetadataValue.int(report.delivery.queued_after),
        "transitions": MetadataValue.json(
            [{"rule": rule, "dimensions": dims, "transition": change} for rule, dims, change in report.transitions[:100]]
        ),
    }


@op(
    description="Evaluate every active alert rule once and deliver the notifications that are due.",
    retry_policy=TRANSIENT_RETRY_POLICY,
)
def evaluate_alerts(
    context: OpExecutionContext, config: AlertEvaluationConfig, warehouse: WarehouseResource, alerting: AlertingResource
) -> dict:
    # only a transient error is retried: a broken rules file fails the run at once (the
    # failure sensor says so) instead of after three retries' back-off (about a minute)
    with retry_only_transient():
        settings = alerting.get_settings()
        ruleset = load_rules(settings.rules_path)
    for warning in ruleset.warnings:
        context.log.warning(f"{ruleset.path}: {warning}")
    at = parse_at(config.at) if config.at else None
    with retry_only_transient():
        report = run_evaluation(
            warehouse.get_warehouse(), ruleset, settings, at, trigger=context.run.tags.get("kpi/trigger", "dagster")
        )
    context.log.info(report.summary())
    for error in report.delivery.errors:
        context.log.warning(f"not delivered, stays queued: {error}")
    context.add_output_metadata(report_metadata(report))
    return {"firing": report.firing, "pending": report.pending, "queued": report.delivery.queued_after}


@job(
    executor_def=in_process_executor,
    tags={"kpi/kind": "alerts"},
    description="Evaluate the alert rules (KPI_ALERT_RULES) against the warehouse and deliver notifications.",
)
def alert_evaluation_job():
    evaluate_alerts()
