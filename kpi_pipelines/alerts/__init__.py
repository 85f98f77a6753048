"""Alerting: rules (YAML) over the KPI values, Grafana-style states, Slack / webhook / e-mail
delivery through a warehouse outbox, and the Dagster sensors that drive it (docs/alerts.md)."""

from dagster import Definitions

from kpi_pipelines.alerts.config import AlertingResource
from kpi_pipelines.alerts.job import alert_evaluation_job
from kpi_pipelines.alerts.sensors import (
    alert_evaluation_sensor,
    failed_asset_check_sensor,
    run_failure_alert_sensor,
)

defs = Definitions(
    jobs=[alert_evaluation_job],
    sensors=[alert_evaluation_sensor, run_failure_alert_sensor, failed_asset_check_sensor],
    resources={"alerting": AlertingResource.from_env()},
)
