"""How dbt's nodes appear in Dagster: one connected graph raw_events → KPI assets → rollups.

- dbt models keep their name as asset key (`stg_events`, `rollup_events_hour`, ...), in the
  group `rollups`;
- source `raw_events` is the Python asset `raw_events`, source `products` the external
  asset `products`;
- source `kpi_metrics` is the table every daily KPI asset writes its own rows to, so a
  model reading it depends on all of them: the dependency is fanned out to the six KPI
  assets (`kpi_pipelines.kpis.KPI_METRICS_PRODUCERS`) rather than drawn to a stand-in
  `kpi_metrics` node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import AssetDep, AssetKey, AssetSpec
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtProject

from kpi_pipelines import kpis

GROUP_NAME = "rollups"
KPI_METRICS_PRODUCERS: tuple[AssetKey, ...] = tuple(AssetKey(name) for name in kpis.KPI_METRICS_PRODUCERS)
SOURCE_ASSET_KEYS: Mapping[str, AssetKey] = {
    "raw_events": AssetKey("raw_events"),
    "products": AssetKey("products"),
}
# the dbt source kpi_metrics, replaced by KPI_METRICS_PRODUCERS in every dependency
KPI_METRICS_SOURCE = AssetKey(["dbt_source", "kpi_metrics"])


class RollupsTranslator(DagsterDbtTranslator):
    def __init__(self) -> None:
        # dbt tests become asset checks (the default in dagster-dbt 0.29; stated, not assumed)
        super().__init__(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            name = dbt_resource_props["name"]
            if name == "kpi_metrics":
                return KPI_METRICS_SOURCE
            if name in SOURCE_ASSET_KEYS:
                return SOURCE_ASSET_KEYS[name]
            raise ValueError(f"dbt source {name!r} has no Dagster asset: add it to SOURCE_ASSET_KEYS")
        return AssetKey(dbt_resource_props["name"])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return GROUP_NAME

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None) -> AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        if not any(dep.asset_key == KPI_METRICS_SOURCE for dep in spec.deps):
            return spec
        deps = [dep for dep in spec.deps if dep.asset_key != KPI_METRICS_SOURCE]
        known = {dep.asset_key for dep in deps}
        deps += [AssetDep(key) for key in KPI_METRICS_PRODUCERS if key not in known]
        return spec.replace_attributes(deps=deps)
