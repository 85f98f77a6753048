"""kpi_pipelines: KPIs of the AutoDescribe product system as Dagster assets."""

import warnings

# BackfillPolicy.single_run() is how the project keeps DuckDB's single writer (one run per
# asset for a range); Dagster marks the parameter beta. The choice is deliberate, so the
# warning would only be noise on every command.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=Warning)
