"""Rollups: dbt models for the minute, hour, day and week rollups of the events and the
weekly rollups of the daily KPIs, with `kpi_metrics_all`, the one view over every grain
(docs/rollups.md).

`defs` holds the dbt assets; they need the resource `dbt`, a `RollupsDbtResource` built by
`rollups_dbt_resource(warehouse)` from the same warehouse settings as the Python assets.
"""

from dagster import Definitions

from kpi_pipelines.rollups.assets import rollup_models, rollup_views, window_vars
from kpi_pipelines.rollups.project import (
    DBT_PROJECT_DIR,
    dbt_executable,
    dbt_project,
    prepare_manifest,
)
from kpi_pipelines.rollups.resources import (
    RollupsDbtResource,
    dbt_env,
    rollups_dbt_resource,
)
from kpi_pipelines.rollups.translator import (
    GROUP_NAME,
    KPI_METRICS_PRODUCERS,
    RollupsTranslator,
)

defs = Definitions(assets=[rollup_models, rollup_views])

__all__ = [
    "DBT_PROJECT_DIR",
    "GROUP_NAME",
    "KPI_METRICS_PRODUCERS",
    "RollupsDbtResource",
    "RollupsTranslator",
    "dbt_env",
    "dbt_executable",
    "dbt_project",
    "defs",
    "prepare_manifest",
    "rollup_models",
    "rollup_views",
    "rollups_dbt_resource",
    "window_vars",
]
