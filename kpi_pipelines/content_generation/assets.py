"""The daily content-generation asset."""

from kpi_pipelines.content_generation.metrics import compute_content_generation
from kpi_pipelines.kpis.asset_factory import daily_kpi_asset

content_generation_metrics = daily_kpi_asset(
    name="content_generation_metrics",
    group_name="content_generation",
    compute=compute_content_generation,
    description=(
        "Review approval, edit and rejection rates, generation error rate and latency percentiles, "
        "time to review and review time, generation counts: overall and by model, per UTC day. "
        "Definitions: docs/metrics.md."
    ),
)
