"""Jobs spanning every domain."""

from dagster import AssetSelection, define_asset_job


# Every materializable asset (ingestion, KPIs, rollups) with its checks, for a range of days:
# `kpi materialize`, the schedules and UI backfills use it.
daily_assets_job = define_asset_job(
    "daily_assets_job",
    selection=AssetSelection.all(),
    description="Materialize the whole asset graph for a day or a range of days.",
)
