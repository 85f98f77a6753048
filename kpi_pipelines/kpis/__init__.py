"""What every KPI domain shares: the metric registry, the `Metric` value, its storage in
`kpi_metrics`, and the daily asset factory."""

from kpi_pipelines.kpis.registry import producers

# Every asset that writes daily rows to kpi_metrics (the anomaly detection reads them all;
# the dbt source kpi_metrics depends on them all), from the metric registry.
KPI_METRICS_PRODUCERS = producers()
