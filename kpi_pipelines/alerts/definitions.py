"""The alerting domain's Dagster definitions, `kpi_pipelines.alerts.defs`."""

from dagster import Definitions

from kpi_pipelines.alerts.job import alert_evaluation_job
from kpi_pipelines.alerts.resource import AlertingResource
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
