"""The ingestion domain's Dagster definitions, `kpi_pipelines.ingestion.defs`."""

from dagster import Definitions

from kpi_pipelines.ingestion.assets import products, raw_events, relevance_judgments
from kpi_pipelines.ingestion.jobs import ingest_job
from kpi_pipelines.ingestion.sensors import landing_sensor

defs = Definitions(
    assets=[raw_events, products, relevance_judgments],
    jobs=[ingest_job],
    sensors=[landing_sensor],
)
