"""Jobs of the ingestion domain."""

from dagster import AssetSelection, define_asset_job


# Loading landing files and refreshing the day's downstream KPIs and rollups (added to the
# graph by later modules) is one run: the selection is raw_events and everything below it.
ingest_job = define_asset_job(
    "ingest_job",
    selection=AssetSelection.assets("raw_events").downstream(),
    description="Load event files into raw_events and refresh the partition's KPIs and rollups.",
)
