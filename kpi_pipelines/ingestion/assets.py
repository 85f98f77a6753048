"""`raw_events`: the daily-partitioned events table, loaded by the one event loader."""


from pathlib import Path

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSpec,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from kpi_pipelines.ingestion.checks import RAW_EVENTS_CHECK, raw_events_check
from kpi_pipelines.ingestion.loader import file_key
from kpi_pipelines.ingestion.resources import EventIngestionResource
from kpi_pipelines.partitions import daily_partitions
from kpi_pipelines.warehouse import Warehouse, WarehouseResource

products = AssetSpec(
    "products",
    group_name="ingestion",
    description="The AutoDescribe product catalog, loaded by `kpi load-catalog` (a snapshot).",
    kinds={"sql"},
)
relevance_judgments = AssetSpec(
    "relevance_judgments",
    group_name="ingestion",
    description="Graded relevance judgments (query, product_id, relevance), loaded by `kpi load-judgments`.",
    kinds={"sql"},
)


class RawEventsConfig(Config):
    files: list[str] = Field(
        default_factory=list,
        description="event files to load (JSONL or .jsonl.gz); the landing directory's unloaded files are loaded too",
    )


def loaded_before(warehouse: Warehouse, path: Path) -> bool:
    """Whether a file at this path was loaded (and, being gone, settled by an earlier run)."""
    return bool(warehouse.scalar("SELECT count(*) FROM ingested_files WHERE path = :path", {"path": str(path)}))


def split_loaded(warehouse: Warehouse, paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """The files among `paths` whose current version has not been loaded yet, and the others."""
    if not paths:
        return [], []
    loaded = {row[0] for row in warehouse.query("SELECT file_key FROM ingested_files")}
    keyed = [(path, file_key(path) in loaded) for path in paths]
    return [path for path, done in keyed if not done], [path for path, done in keyed if done]


def partition_counts(warehouse: Warehouse, start: str, end: str) -> dict[str, int]:
    """Stored events per UTC day in [start, end)."""
    rows = warehouse.query(
        "SELECT CAST(event_date AS VARCHAR), count(*) FROM raw_events "
        "WHERE event_date >= CAST(:start AS DATE) AND event_date < CAST(:end AS DATE) GROUP BY 1 ORDER BY 1",
        {"start": start, "end": end},
    )
    return {day: count for day, count in rows}


@asset(
    partitions_def=daily_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    group_name="ingestion",
    kinds={"duckdb", "postgres"},
    check_specs=[
        AssetCheckSpec(
            RAW_EVENTS_CHECK,
            asset="raw_events",
            blocking=True,
            description="GX: ids present and unique, known types and sources, timestamps inside the partition.",
        )
    ],
    description=(
        "Validated, pseudonymized and deduplicated AutoDescribe events, one row per event id, "
        "bucketed by UTC day. Materializing loads the configured files and every unloaded file "
        "of the landing directory (loads are idempotent), then reports the partition's events."
    ),
)
def raw_events(
    context: AssetExecutionContext,
    config: RawEventsConfig,
    warehouse: WarehouseResource,
    ingestion: EventIngestionResource,
) -> MaterializeResult:
    wh = warehouse.get_warehouse()
    loader = ingestion.loader(wh)
    explicit = [Path(name) for name in config.files]
    accepted = duplicates = rejected = 0
    new, loaded_earlier = split_loaded(wh, ingestion.landing_files())
    for path in loaded_earlier:  # left by a crash between a load's commit and its settling
        settled = ingestion.settle_loaded(path)
        if settled != "kept":
            context.log.info(f"{path}: loaded earlier; {settled}")
    for path in explicit + new:
        if not path.exists() and ingestion.in_landing_dir(path) and loaded_before(wh, path):
            # requested by the sensor, but an earlier run loaded it with the directory's new files
            context.log.info(f"{path}: already loaded by an earlier run")
            continue
        result = loader.load_file(path)
        settled = ingestion.settle_loaded(path)
        context.log.info(
            f"{path}: {result.accepted} accepted, {result.duplicates} duplicates, {result.rejected} rejected; {settled}"
        )
        accepted, duplicates, rejected = (
            accepted + result.accepted,
            duplicates + result.duplicates,
            rejected + result.rejected,
        )
    window = context.partition_time_window
    start, end = window.start.date(), window.end.date()
    counts = partition_counts(wh, start.isoformat(), end.isoformat())
    stored = sum(counts.values())
    return MaterializeResult(
        metadata={
            "events_in_partitions": MetadataValue.int(stored),
            "events_by_day": MetadataValue.json(counts),
            "loaded_accepted": MetadataValue.int(accepted),
            "loaded_duplicates": MetadataValue.int(duplicates),
            "loaded_rejected": MetadataValue.int(rejected),
            "rejected_events_total": MetadataValue.int(
                int(wh.scalar("SELECT count(*) FROM rejected_events") or 0)
            ),
        },
        check_results=[raw_events_check(wh, start, end)],
    )

