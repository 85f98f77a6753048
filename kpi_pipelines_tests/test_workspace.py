"""The project as Dagster's own processes load it: workspace.yaml's module and attribute,
imported in a fresh interpreter from its working directory, hold every asset, check, job,
schedule and sensor. No test helper adds what definitions.py might lack (issue 14 item 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# written by hand from docs/ and the README's lineage, not read from the definitions
ASSETS = {
    "products", "raw_events", "relevance_judgments",  # ingestion
    "data_quality_metrics", "retrieval_metrics", "search_experience_metrics", "business_metrics",
    "experiment_results", "content_generation_metrics", "system_performance_metrics", "kpi_anomalies",
    "stg_events", "stg_products", "rollup_events_minute", "rollup_events_hour", "rollup_events_day",
    "rollup_events_week", "rollup_daily_kpis_weekly", "kpi_metrics_all",  # dbt
}
KPI_ASSETS = {
    "data_quality_metrics", "retrieval_metrics", "search_experience_metrics", "business_metrics",
    "experiment_results", "content_generation_metrics", "system_performance_metrics",
}
ROLLUPS = {"rollup_events_minute", "rollup_events_hour", "rollup_events_day", "rollup_events_week",
           "rollup_daily_kpis_weekly", "kpi_metrics_all"}
JOBS = {"daily_assets_job", "ingest_job", "alert_evaluation_job"}
SCHEDULES = {"hourly_today", "nightly_backfill"}
SENSORS = {"landing_sensor", "alert_evaluation_sensor", "failed_asset_check_sensor", "run_failure_alert_sensor"}

LIST_DEFINITIONS = """
import importlib, json, sys
module, attribute = sys.argv[1], sys.argv[2]
repository = getattr(importlib.import_module(module), attribute).get_repository_def()
graph = repository.asset_graph
print(json.dumps({
    "assets": sorted(key.to_user_string() for key in graph.get_all_asset_keys()),
    "checks": sorted([key.asset_key.to_user_string(), key.name] for key in graph.asset_check_keys),
    "jobs": sorted(job.name for job in repository.get_all_jobs()),
    "schedules": sorted(schedule.name for schedule in repository.schedule_defs),
    "sensors": sorted(sensor.name for sensor in repository.sensor_defs),
}))
"""


def test_the_workspace_loads_every_asset_check_job_schedule_and_sensor(tmp_path):
    (entry,) = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]
    target = entry["python_module"]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KPI_", "DAGSTER_"))}
    env["KPI_WAREHOUSE_URL"] = f"duckdb:///{tmp_path / 'workspace.duckdb'}"
    result = subprocess.run(
        [sys.executable, "-c", LIST_DEFINITIONS, target["module_name"], target["attribute"]],
        cwd=REPO / target["working_directory"], env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)

    assert set(loaded["assets"]) == ASSETS
    assert JOBS <= set(loaded["jobs"])  # and Dagster's own implicit asset job
    assert set(loaded["schedules"]) == SCHEDULES
    assert set(loaded["sensors"]) == SENSORS
    checks: dict[str, set[str]] = {}
    for asset, name in loaded["checks"]:
        checks.setdefault(asset, set()).add(name)
    for asset in KPI_ASSETS:
        assert "kpi_rows_valid" in checks.get(asset, set()), asset
    assert "catalog_complete_enough" in checks["data_quality_metrics"]
    assert {"raw_events_valid", "landing_files_readable"} <= checks["raw_events"]
    for model in ROLLUPS:  # dbt's tests of each rollup model, as asset checks
        kinds = {name.split("_" + model)[0] for name in checks.get(model, set())}
        assert {"unique_combination", "well_formed"} <= kinds, (model, checks.get(model))
    assert {"unique_stg_events_event_id"} <= checks["stg_events"]
    assert {"unique_stg_products_product_id", "not_null_stg_products_product_id"} <= checks["stg_products"]
