"""Content generation: review outcomes, generation errors and latency, time to review, by model."""

from dagster import Definitions

from kpi_pipelines.content_generation.assets import content_generation_metrics

defs = Definitions(assets=[content_generation_metrics])
