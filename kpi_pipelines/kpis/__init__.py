"""What every KPI domain shares: the `Metric` value, its storage in `kpi_metrics`, and the
daily asset factory."""

# Every asset that writes daily rows to kpi_metrics (the anomaly detection reads them all;
# the dbt source kpi_metrics depends on them all). A new KPI asset is added here.
KPI_METRICS_PRODUCERS = (
    "data_quality_metrics",
    "retrieval_metrics",
    "search_experience_metrics",
    "business_metrics",
    "content_generation_metrics",
    "system_performance_metrics",
    "experiment_results",
)
