"""The daily system-performance asset."""

from kpi_pipelines.kpis.asset_factory import daily_kpi_asset
from kpi_pipelines.system_performance.metrics import compute_system_performance

system_performance_metrics = daily_kpi_asset(
    name="system_performance_metrics",
    group_name="system_performance",
    compute=compute_system_performance,
    description=(
        "Request latency p50/p95/p99, server error rate (5xx) and request counts: overall and by "
        "(service, endpoint), per UTC day. Definitions: docs/metrics.md."
    ),
)
