"""Catalog data quality: completeness, normalization and quality scores."""

from dagster import Definitions

from kpi_pipelines.data_quality.assets import data_quality_metrics

defs = Definitions(assets=[data_quality_metrics])
