"""Search experience: click-through, no-results, success, click position, time to first click, refinements, satisfaction, engagement."""

from dagster import Definitions

from kpi_pipelines.search_experience.assets import search_experience_metrics

defs = Definitions(assets=[search_experience_metrics])
