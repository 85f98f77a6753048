"""The daily data-quality asset."""

from kpi_pipelines.data_quality.metrics import compute_data_quality
from kpi_pipelines.ingestion.checks import CATALOG_CHECK, PRODUCT_FIELD_MOSTLY, products_check_result
from kpi_pipelines.kpis.asset_factory import ExtraCheck, daily_kpi_asset

data_quality_metrics = daily_kpi_asset(
    name="data_quality_metrics",
    group_name="data_quality",
    compute=compute_data_quality,
    description=(
        "Catalog completeness (overall, per field, per category), normalization of brand, category, price "
        "and title, a quality score and the product count, from `products` as it stands when materialized "
        "(the same values on every day of the partition range); and the daily mean of each catalog "
        "data-quality signal. Definitions: docs/metrics.md."
    ),
    deps=("products", "raw_events"),
    extra_checks=[
        ExtraCheck(
            CATALOG_CHECK,
            f"GX on the catalog measured: product ids unique, each required field present for at least "
            f"{PRODUCT_FIELD_MOSTLY:.0%} of products, prices positive (a warning: gaps are what the KPIs measure).",
            products_check_result,
        )
    ],
)
