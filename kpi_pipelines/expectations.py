"""Great Expectations 1.x inside Dagster asset checks (dagster-ge needs GX < 1.0).

A check reads the partition's rows (the few columns it needs), validates them with an
ephemeral GX context, and turns the result into an `AssetCheckResult` whose metadata
carries each expectation's unexpected count and percentage, shown in the Dagster UI.

GX validates in pandas, about 0.3 s per 100,000 rows and expectation set, which over a
week of events was most of the `raw_events` step. `unexpected_rows_in_warehouse` is the
hot path for the simple column expectations: the warehouse counts each one's unexpected
rows in one query; when every count is 0 the result is the one GX gives (nothing
unexpected), built by `passed_result`, and otherwise GX validates the rows as before, so a
failure carries GX's own details.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue

if TYPE_CHECKING:
    import pandas as pd

    from kpi_pipelines.warehouse import Warehouse


def validate(frame: "pd.DataFrame", suite_name: str, expectations: Sequence[Any]) -> Any:
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
    return _label(config.type, config.kwargs.get("column"))


def _label(expectation_type: str, column: str | None) -> str:
    return expectation_type + (f"({column})" if column else "")


# fields of a GX expectation that do not change which rows it finds unexpected (GX sets `id`
# when a suite takes the expectation); any other field set means an option not translated
_NOT_ABOUT_ROWS = frozenset(
    {"column", "id", "meta", "notes", "description", "result_format", "catch_exceptions", "rendered_content", "severity"}
)


def _unexpected_count_sql(expectation: Any, number: int) -> tuple[str, dict[str, Any]] | None:
    """SQL counting the rows `expectation` finds unexpected (NULLs are not, as in GX), with
    its parameters; None for an expectation or an option this does not translate."""
    name = type(expectation).__name__
    options = set(expectation.__fields_set__) - _NOT_ABOUT_ROWS
    column = '"' + expectation.column.replace('"', '""') + '"'
    if name == "ExpectColumnValuesToNotBeNull" and not options:
        return f"count(*) - count({column})", {}
    if name == "ExpectColumnValuesToBeUnique" and not options:
        return f"count({column}) - count(DISTINCT {column})", {}
    if name == "ExpectColumnValuesToBeInSet" and options == {"value_set"} and expectation.value_set:
        params = {f"e{number}_{i}": value for i, value in enumerate(expectation.value_set)}
        listed = ", ".join(f":{key}" for key in params)
        return f"sum(CASE WHEN {column} NOT IN ({listed}) THEN 1 ELSE 0 END)", params
    if name == "ExpectColumnValuesToBeBetween" and options == {"min_value", "max_value"}:
        params = {f"e{number}_min": expectation.min_value, f"e{number}_max": expectation.max_value}
        return f"sum(CASE WHEN {column} < :e{number}_min OR {column} > :e{number}_max THEN 1 ELSE 0 END)", params
    return None


def unexpected_rows_in_warehouse(
    warehouse: "Warehouse", rows_sql: str, params: Mapping[str, Any], expectations: Sequence[Any]
) -> tuple[int, bool] | None:
    """Counted by the warehouse over the rows of `rows_sql` (a SELECT with the expectations'
    columns): (the number of rows, whether any expectation has an unexpected row). None
    when an expectation is not one it translates: then only GX can tell."""
    counts, all_params = [], dict(params)
    for number, expectation in enumerate(expectations):
        translated = _unexpected_count_sql(expectation, number)
        if translated is None:
            return None
        counts.append(f"coalesce({translated[0]}, 0)")
        all_params.update(translated[1])
    row = warehouse.query(f"SELECT count(*), {' + '.join(counts) or '0'} FROM ({rows_sql}) AS checked_rows", all_params)[0]
    return int(row[0]), int(row[1]) > 0


def passed_result(
    expectations: Sequence[Any], rows: int, severity: AssetCheckSeverity = AssetCheckSeverity.ERROR, check_name: str | None = None
) -> AssetCheckResult:
    """What `check_result` makes of a GX validation in which no row of any of these column
    expectations is unexpected (the case `unexpected_rows_in_warehouse` establishes)."""
    metadata: dict[str, MetadataValue] = {"rows_checked": MetadataValue.int(rows)}
    for expectation in expectations:
        name = _label(expectation.expectation_type, expectation.column)
        metadata[f"{name} unexpected_count"] = MetadataValue.int(0)
        metadata[f"{name} unexpected_percent"] = MetadataValue.float(0.0)
    metadata["failed_expectations"] = MetadataValue.json([])
    return AssetCheckResult(passed=True, metadata=metadata, severity=severity, check_name=check_name)


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
