"""Assembles the domains into the project's Dagster definitions (`defs`)."""

from dagster import Definitions, in_process_executor, multiprocess_executor

from kpi_pipelines import (
    business,
    content_generation,
    data_quality,
    ingestion,
    retrieval,
    search_experience,
    system_performance,
)
from kpi_pipelines.jobs import daily_assets_job
from kpi_pipelines.ingestion.resources import EventIngestionResource
from kpi_pipelines.settings import resource_value, setting
from kpi_pipelines.warehouse import WarehouseResource, parse_warehouse_url

resources = {
    "warehouse": WarehouseResource(
        url=resource_value("KPI_WAREHOUSE_URL"), schema_name=resource_value("KPI_WAREHOUSE_SCHEMA")
    ),
    "ingestion": EventIngestionResource(
        pii_salt=resource_value("KPI_PII_SALT"), landing_dir=resource_value("KPI_LANDING_DIR")
    ),
}

# DuckDB takes one writing process: steps run inside the run's own process. PostgreSQL
# takes concurrent writers, so steps there run in parallel processes.
_embedded = parse_warehouse_url(setting("KPI_WAREHOUSE_URL")).get_backend_name() == "duckdb"
executor = in_process_executor if _embedded else multiprocess_executor.configured({"max_concurrent": 2})

defs = Definitions.merge(
    ingestion.defs,
    data_quality.defs,
    retrieval.defs,
    search_experience.defs,
    business.defs,
    content_generation.defs,
    system_performance.defs,
    Definitions(jobs=[daily_assets_job], resources=resources, executor=executor),
)
