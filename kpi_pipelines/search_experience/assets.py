"""`search_experience_metrics`: the daily search experience KPIs."""

from kpi_pipelines.kpis.asset_factory import daily_kpi_asset
from kpi_pipelines.search_experience.metrics import compute_search_experience_metrics

search_experience_metrics = daily_kpi_asset(
    name="search_experience_metrics",
    group_name="search_experience",
    compute=compute_search_experience_metrics,
    description=(
        "Search volume, click-through, no-results and success rates, click position, time to "
        "first click, refinements, satisfaction and per-user engagement of the day's searches. "
        "See docs/metrics.md."
    ),
)
