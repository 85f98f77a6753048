"""`business_metrics`: the daily business KPIs in `kpi_metrics`."""

from kpi_pipelines.business.metrics import business_metrics as compute_business_metrics
from kpi_pipelines.kpis.asset_factory import daily_kpi_asset

business_metrics = daily_kpi_asset(
    name="business_metrics",
    group_name="business",
    compute=compute_business_metrics,
    description=(
        "Conversion rate, average order value, revenue per session, revenue (total and by currency), "
        "orders, day-1 and day-7 retention and 30-day customer lifetime value per UTC day "
        "(docs/metrics.md)."
    ),
)
