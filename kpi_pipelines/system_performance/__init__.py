"""System performance: latency percentiles and error rates by endpoint."""

from dagster import Definitions

from kpi_pipelines.system_performance.assets import system_performance_metrics

defs = Definitions(assets=[system_performance_metrics])
