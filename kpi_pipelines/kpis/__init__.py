"""What every KPI domain shares: the `Metric` value, its storage in `kpi_metrics`, and the
daily asset factory."""
