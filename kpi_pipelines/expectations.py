"""Great Expectations 1.x inside Dagster asset checks (dagster-ge needs GX < 1.0).

A check reads the partition's rows (the few columns it needs), validates them with an
ephemeral GX context, and turns the result into an `AssetCheckResult` whose metadata
carries each expectation's unexpected count and percentage, shown in the Dagster UI.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue


def validate(frame: pd.DataFrame, suite_name: str, expectations: Sequence[Any]) -> Any:
    """Run GX expectations over a dataframe; returns GX's validation result."""
    import great_expectations as gx  # imported here: it takes seconds, definitions must load fast
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no bars in run logs
    batch = (
        context.data_sources.add_pandas("kpi_pipelines")
        .add_dataframe_asset(suite_name)
        .add_batch_definition_whole_dataframe("partition")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=batch, suite=suite))
    return definition.run(batch_parameters={"dataframe": frame})


def describe(expectation_result: Any) -> str:
    config = expectation_result.expectation_config
    column = config.kwargs.get("column")
    return f"{config.type}" + (f"({column})" if column else "")


def check_result(
    validation: Any, rows: int, severity: AssetCheckSeverity = AssetCheckSeverity.ERROR, check_name: str | None = None
) -> AssetCheckResult:
    """Dagster's view of a GX validation: passed, and per expectation the unexpected rows."""
    metadata: dict[str, MetadataValue] = {"rows_checked": MetadataValue.int(rows)}
    failed = []
    for result in validation.results:
        name = describe(result)
        details = result.result or {}
        if "unexpected_count" in details:
            metadata[f"{name} unexpected_count"] = MetadataValue.int(int(details["unexpected_count"] or 0))
            metadata[f"{name} unexpected_percent"] = MetadataValue.float(float(details.get("unexpected_percent") or 0.0))
        if "observed_value" in details and isinstance(details["observed_value"], (int, float)):
            metadata[f"{name} observed_value"] = MetadataValue.float(float(details["observed_value"]))
        if not result.success:
            failed.append(name)
    metadata["failed_expectations"] = MetadataValue.json(failed)
    return AssetCheckResult(passed=bool(validation.success), metadata=metadata, severity=severity, check_name=check_name)
