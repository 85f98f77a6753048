"""The daily data-quality asset."""

from kpi_pipelines.data_quality.metrics import compute_data_quality
from kpi_pipelines.kpis.asset_factory import daily_kpi_asset

data_quality_metrics = daily_kpi_asset(
    name="data_quality_metrics",
    group_name="data_quality",
    compute=compute_data_quality,
    description=(
        "Catalog completeness (overall, per field, per category), normalization of brand, category, price "
        "and title, a quality score and the product count, from `products` as it stands when materialized "
        "(the same values on every day of the partition range); and the daily mean of each catalog "
        "data-quality signal. Definitions: docs/metrics/data_quality.md."
    ),
    deps=("products", "raw_events"),
)
