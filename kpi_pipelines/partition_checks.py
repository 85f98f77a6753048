"""Asset check results per day, so the Dagster UI shows each partition's result.

Dagster plans a daily asset's check once per partition of the run, but stores an
`AssetCheckResult` under no partition when its check spec has none, and in a ranged run
(the nightly run, a single-run backfill, `kpi materialize --start/--end`) under no partition
whatever the spec says: every day then reads "Skipped". So the daily assets yield the public
`AssetCheckEvaluation`, one per check and day, aimed at that day's materialization by this
run, and then each check's empty output, which blocking checks' downstream steps wait on.
A failed blocking evaluation still fails the step (Dagster gates on yielded evaluations).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckResult,
    AssetExecutionContext,
    AssetRecordsFilter,
    MaterializeResult,
    Output,
)

# Not exported by dagster; the evaluation needs it so the UI counts the check as run on the
# current materialization of the day (AssetCheckResult fills it the same way).
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)


DailyAssetEvent = MaterializeResult | AssetCheckEvaluation | Output


def day_check_events(
    context: AssetExecutionContext, results_by_day: Mapping[str, Sequence[AssetCheckResult]]
) -> Iterator[AssetCheckEvaluation | Output]:
    """Yield after the materializations: each day's results (partition key -> check results;
    a result without an asset key is about the step's one asset), then the outputs of the
    checks that have one. Results of checks not selected in the run are left out."""
    selected = {spec.key: spec for spec in context.assets_def.check_specs if spec.key in context.selected_asset_check_keys}
    keyed = {
        day: [(AssetCheckKey(result.asset_key or context.asset_key, result.check_name or ""), result) for result in results]
        for day, results in results_by_day.items()
    }
    checked = {key for results in keyed.values() for key, _ in results if key in selected}
    targets = {}  # (asset key, day) -> this run's materialization of the day
    for asset_key in {key.asset_key for key in checked}:
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=asset_key, asset_partitions=list(keyed)), limit=len(keyed)
        ).records
        targets.update(
            {
                (asset_key, record.partition_key): AssetCheckEvaluationTargetMaterializationData(
                    run_id=record.run_id, storage_id=record.storage_id, timestamp=record.timestamp
                )
                for record in records
                if record.run_id == context.run.run_id
            }
        )
    for day, results in keyed.items():
        for key, result in results:
            if key in checked:
                yield AssetCheckEvaluation(
                    asset_key=key.asset_key,
                    check_name=key.name,
                    passed=result.passed,
                    metadata=result.metadata,
                    target_materialization_data=targets.get((key.asset_key, day)),
                    severity=result.severity,
                    description=result.description,
                    blocking=selected[key].blocking,
                    partition=day,
                )
    for key in sorted(checked, key=str):
        # `get_output_name_for_asset_check_key` is not marked public; it is how Dagster names
        # the check's output itself, and yielding AssetCheckResult instead would add a
        # partition-less evaluation (a second alert for the same failure).
        yield Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(key))


def spread_over_days(context: AssetExecutionContext, events: Iterable[Any]) -> Iterator[Any]:
    """A step's events, with every check result it reports given to each day of the run
    (dbt tests check the whole window of a ranged run and report once, without a partition)."""
    results = []
    for event in events:
        if isinstance(event, AssetCheckResult):
            results.append(event)
        else:
            yield event
    yield from day_check_events(context, {day: results for day in context.partition_keys})
