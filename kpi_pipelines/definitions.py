"""Assembles the domains into the project's Dagster definitions (`defs`)."""

import warnings
from typing import get_args

from dagster import BetaWarning, Definitions, EnvVar, in_process_executor, multiprocess_executor

from kpi_pipelines import (
    alerts,
    anomalies,
    business,
    content_generation,
    data_quality,
    experiments,
    ingestion,
    retrieval,
    rollups,
    search_experience,
    system_performance,
)
from kpi_pipelines.ingestion.resources import AfterLoad, EventIngestionResource
from kpi_pipelines.jobs import daily_assets_job
from kpi_pipelines.rollups import rollups_dbt_resource
from kpi_pipelines.schedules import SchedulingResource, hourly_today, nightly_backfill
from kpi_pipelines.settings import choice_setting, resource_value, seconds_setting, setting
from kpi_pipelines.warehouse import WarehouseResource, parse_warehouse_url

# Binding the resources below makes Dagster copy each sensor that targets a job
# (`SensorDefinition.with_attributes`), and that copy passes the sensor's empty `owners` on to
# the beta `owners` parameter: a BetaWarning on every load and run although no sensor here sets
# owners. Only that message is ignored; any other beta use still warns.
warnings.filterwarnings(
    "ignore", message=r"Parameter `owners` of initializer `SensorDefinition.__init__`", category=BetaWarning
)


def build_definitions(
    warehouse: WarehouseResource,
    ingestion_resource: EventIngestionResource,
    scheduling: SchedulingResource | None = None,
) -> Definitions:
    url = warehouse.url.get_value() if isinstance(warehouse.url, EnvVar) else warehouse.url
    # DuckDB takes one writing process: steps run inside the run's own process. PostgreSQL
    # takes concurrent writers, so steps there run in parallel processes.
    embedded = parse_warehouse_url(str(url)).get_backend_name() == "duckdb"
    executor = in_process_executor if embedded else multiprocess_executor.configured({"max_concurrent": 2})
    return Definitions.merge(
        ingestion.defs,
        data_quality.defs,
        retrieval.defs,
        search_experience.defs,
        business.defs,
        experiments.defs,
        content_generation.defs,
        system_performance.defs,
        anomalies.defs,
        alerts.defs,
        rollups.defs,
        Definitions(
            jobs=[daily_assets_job],
            schedules=[hourly_today, nightly_backfill],
            resources={
                "warehouse": warehouse,
                "ingestion": ingestion_resource,
                "scheduling": scheduling or SchedulingResource(),
                "dbt": rollups_dbt_resource(warehouse),
            },
            executor=executor,
        ),
    )


defs = build_definitions(
    WarehouseResource(
        url=resource_value("KPI_WAREHOUSE_URL"),
        schema_name=resource_value("KPI_WAREHOUSE_SCHEMA"),
        lock_timeout=seconds_setting("KPI_WAREHOUSE_LOCK_TIMEOUT"),
    ),
    EventIngestionResource(
        pii_salt=resource_value("KPI_PII_SALT"),
        landing_dir=resource_value("KPI_LANDING_DIR"),
        after_load=choice_setting("KPI_LANDING_AFTER_LOAD", get_args(AfterLoad)),
    ),
    SchedulingResource(nightly_lookback_days=int(setting("KPI_NIGHTLY_LOOKBACK_DAYS"))),
)
