"""Anomaly detection over every daily KPI series (z-score against a trailing window)."""

from dagster import Definitions

from kpi_pipelines.anomalies.assets import kpi_anomalies

defs = Definitions(assets=[kpi_anomalies])
