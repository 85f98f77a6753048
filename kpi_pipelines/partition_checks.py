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

from collections.abc import Iterator, Mapping, Sequence

from dagster import (
    AssetCheckEvaluation,
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
    """Yield after the asset's MaterializeResult: each day's results (partition key -> results
    of the selected checks), then the checks' outputs."""
    specs = {spec.key.name: spec for spec in context.assets_def.check_specs if spec.key in context.selected_asset_check_keys}
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=list(results_by_day)), limit=len(results_by_day)
    ).records
    targets = {
        record.partition_key: AssetCheckEvaluationTargetMaterializationData(
            run_id=record.run_id, storage_id=record.storage_id, timestamp=record.timestamp
        )
        for record in records
        if record.run_id == context.run.run_id
    }
    for day, results in results_by_day.items():
        for result in results:
            spec = specs.get(result.check_name or "")
            if spec is None:  # not selected in this run
                continue
            yield AssetCheckEvaluation(
                asset_key=spec.asset_key,
                check_name=spec.name,
                passed=result.passed,
                metadata=result.metadata,
                target_materialization_data=targets.get(day),
                severity=result.severity,
                description=result.description,
                blocking=spec.blocking,
                partition=day,
            )
    for spec in specs.values():
        # `get_output_name_for_asset_check_key` is not marked public; it is how Dagster names
        # the check's output itself, and yielding AssetCheckResult instead would add a
        # partition-less evaluation (a second alert for the same failure).
        yield Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(spec.key))
