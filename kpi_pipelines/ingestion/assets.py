"""`raw_events`: the daily-partitioned events table, loaded by the one event loader.

A landing file that cannot be read is quarantined (`quarantine.py`) and reported by the
non-blocking check `landing_files_readable`, so the other files load and the run succeeds;
a file given outside the landing directory still fails the run.
"""


import datetime as dt
from collections.abc import Iterator
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
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

from kpi_pipelines.first_day import before_first_day, early_events_note
from kpi_pipelines.ingestion.checks import RAW_EVENTS_CHECK, raw_events_check
from kpi_pipelines.ingestion.loader import IngestError, file_key
from kpi_pipelines.ingestion.quarantine import quarantine, quarantined_before
from kpi_pipelines.ingestion.resources import EventIngestionResource
from kpi_pipelines.partition_checks import DailyAssetEvent, day_check_events
from kpi_pipelines.partitions import daily_partitions, days_in
from kpi_pipelines.retries import TRANSIENT_RETRY_POLICY, retry_only_transient
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
LANDING_CHECK = "landing_files_readable"


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
    new, done = [], []
    for path in paths:
        try:
            (done if file_key(path) in loaded else new).append(path)
        except FileNotFoundError:  # removed since listed: the load loop says by whom
            new.append(path)
    return new, done


def landing_check(quarantined: list[dict[str, str]], vanished: list[str]) -> AssetCheckResult:
    """Fails (a warning: the run goes on) when this run set landing files aside, so the
    failed-check alert sensor reports each such file once."""
    problems = [f"{item['reason']} (moved to {item['failed_path']})" for item in quarantined]
    problems += [f"{name} vanished before it was loaded" for name in vanished]
    return AssetCheckResult(
        check_name=LANDING_CHECK,
        passed=not problems,
        severity=AssetCheckSeverity.WARN,
        description="; ".join(problems) if problems else "every landing file of the run was read",
        metadata={"quarantined_files": MetadataValue.json(quarantined), "vanished_files": MetadataValue.json(vanished)},
    )


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
        ),
        AssetCheckSpec(
            LANDING_CHECK,
            asset="raw_events",
            description=(
                "Every landing file of the run could be read; a file that cannot is moved to "
                "failed/ (kpi landing list) and fails this check as a warning."
            ),
        ),
    ],
    retry_policy=TRANSIENT_RETRY_POLICY,
    description=(
        "Validated, pseudonymized and deduplicated AutoDescribe events, one row per event id, "
        "bucketed by UTC day. Materializing loads the configured files and every unloaded file "
        "of the landing directory (loads are idempotent), then reports the partition's events. "
        "A landing file that cannot be read is moved to failed/ instead."
    ),
)
def raw_events(
    context: AssetExecutionContext,
    config: RawEventsConfig,
    warehouse: WarehouseResource,
    ingestion: EventIngestionResource,
) -> Iterator[DailyAssetEvent]:
    with retry_only_transient():
        result, checks_by_day = _load_and_report(context, config, wh=warehouse.get_warehouse(), ingestion=ingestion)
    yield result
    yield from day_check_events(context, checks_by_day)


def _load_and_report(
    context: AssetExecutionContext, config: RawEventsConfig, wh: Warehouse, ingestion: EventIngestionResource
) -> tuple[MaterializeResult, dict[str, list[AssetCheckResult]]]:
    """The run's materialization and each day's check results (by partition key)."""
    loader = ingestion.loader(wh)
    explicit = [Path(name) for name in config.files]
    accepted = duplicates = rejected = loaded_before_first_day = 0
    quarantined: list[dict[str, str]] = []
    vanished: list[str] = []
    new, loaded_earlier = split_loaded(wh, ingestion.landing_files())
    for path in loaded_earlier:  # left by a crash between a load's commit and its settling
        settled = ingestion.settle_loaded(path)
        if settled != "kept":
            context.log.info(f"{path}: loaded earlier; {settled}")
    for path in dict.fromkeys(explicit + new):  # the sensor's files are among the directory's
        landing = ingestion.in_landing_dir(path)
        if landing and not path.exists() and (loaded_before(wh, path) or quarantined_before(wh, path)):
            # requested by the sensor, but an earlier run loaded or quarantined it already
            context.log.info(f"{path}: already taken by an earlier run")
            continue
        try:
            result = loader.load_file(path)
        except IngestError as error:
            if not landing:
                raise
            moved = quarantine(wh, ingestion.landing_dir, path, str(error), context.run.run_id)
            if moved is None:
                context.log.warning(f"{path}: vanished from the landing directory before it was loaded")
                vanished.append(str(path))
            else:
                context.log.warning(f"{moved.reason}; moved to {moved.path}")
                quarantined.append({"file": str(path), "failed_path": str(moved.path), "reason": moved.reason})
            continue
        settled = ingestion.settle_loaded(path)
        context.log.info(
            f"{path}: {result.accepted} accepted, {result.duplicates} duplicates, {result.rejected} rejected; {settled}"
        )
        early = before_first_day(result.events_by_date)
        if early:
            context.log.warning(f"{path}: {early_events_note(early)}")
            loaded_before_first_day += sum(early.values())
        accepted, duplicates, rejected = (
            accepted + result.accepted,
            duplicates + result.duplicates,
            rejected + result.rejected,
        )
    window = context.partition_time_window
    start, end = window.start.date(), window.end.date()
    counts = partition_counts(wh, start.isoformat(), end.isoformat())
    stored = sum(counts.values())
    days = days_in(start, end)
    for day in days:  # each day's materialization carries that day's events (plotted per day)
        day_events = MetadataValue.int(counts.get(day.isoformat(), 0))
        context.add_asset_metadata({"events_in_partitions": day_events}, partition_key=day.isoformat())
    # GX per day: a range passes with an event dated on one of its days but timed on another.
    # The landing check is about the run's files, so each day gets the run's result.
    landing = landing_check(quarantined, vanished)
    checks_by_day = {day.isoformat(): [raw_events_check(wh, day, day + dt.timedelta(days=1)), landing] for day in days}
    result = MaterializeResult(
        metadata={
            "events_in_partitions": MetadataValue.int(stored),
            "events_by_day": MetadataValue.json(counts),
            "loaded_accepted": MetadataValue.int(accepted),
            "loaded_duplicates": MetadataValue.int(duplicates),
            "loaded_rejected": MetadataValue.int(rejected),
            "loaded_before_first_day": MetadataValue.int(loaded_before_first_day),
            "rejected_events_total": MetadataValue.int(
                int(wh.scalar("SELECT count(*) FROM rejected_events") or 0)
            ),
            "quarantined_files": MetadataValue.json(quarantined),
        },
    )
    return result, checks_by_day

