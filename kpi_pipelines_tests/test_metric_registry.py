"""The metric registry is the one list of metric facts: what a full materialization writes is
registered (name, level, producer, dimensions), the derived lists follow it, and a metric
added to it reaches the check, the API and the docs index without another edit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from kpi_pipelines.api.app import KPI_ENDPOINTS
from kpi_pipelines.kpis import KPI_METRICS_PRODUCERS
from kpi_pipelines.kpis.registry import BY_NAME, EVENT_ROLLUP, REGISTRY, endpoints
from kpi_pipelines.retrieval.metrics import METRIC_NAMES as RETRIEVAL_NAMES
from kpi_pipelines.search_experience.metrics import METRIC_NAMES as SEARCH_NAMES
from kpi_pipelines.synthetic import generate
from kpi_pipelines_tests.test_end_to_end import DAYS, START, load_and_materialize


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("traffic"), days=DAYS, sessions=150, seed=5, start=START)


@pytest.mark.slow
def test_every_metric_a_full_materialization_writes_is_registered_as_written(warehouse, traffic):
    load_and_materialize(warehouse, traffic)
    rows = warehouse.query(
        "SELECT DISTINCT metric_name, aggregation_level, source_asset, dimensions FROM kpi_metrics_all"
    )
    assert len({row[0] for row in rows}) > 40
    problems = []
    for name, level, source, dimensions in rows:
        spec = BY_NAME.get(name)
        if spec is None:
            problems.append(f"{name}: not registered")
            continue
        if level not in spec.levels:
            problems.append(f"{name}: written at {level}, registered at {spec.levels}")
        if source.startswith("rollup_events_"):
            producer_ok = spec.rollup == "events"
        elif source == "rollup_daily_kpis_weekly":
            producer_ok = spec.producer != EVENT_ROLLUP and level == "week"
        else:
            producer_ok = source == spec.producer
        if not producer_ok:
            problems.append(f"{name}: written by {source}, registered as produced by {spec.producer} ({spec.rollup})")
        keys = tuple(sorted(json.loads(dimensions)))
        if keys not in ((), spec.dimensions):
            problems.append(f"{name}: dimensions {keys}, registered {spec.dimensions}")
    assert problems == []

    # dbt's event rollup keeps its own list of names (a dbt macro): the registry states it exactly
    rolled_up = {row[0] for row in warehouse.query("SELECT DISTINCT metric_name FROM rollup_events_day")}
    assert rolled_up == {spec.name for spec in REGISTRY if spec.rollup == "events"}


def test_the_lists_derived_from_the_registry():
    assert set(KPI_METRICS_PRODUCERS) == {spec.producer for spec in REGISTRY} - {EVENT_ROLLUP}
    assert RETRIEVAL_NAMES == tuple(spec.name for spec in REGISTRY if spec.producer == "retrieval_metrics")
    assert set(SEARCH_NAMES) == {spec.name for spec in REGISTRY if spec.producer == "search_experience_metrics"}
    assert {path: names for path, (_, names) in KPI_ENDPOINTS.items()} == endpoints()
    every_served = [name for names in endpoints().values() for name in names]
    assert len(every_served) == len(set(every_served))  # one endpoint per metric


ADD_A_KPI = textwrap.dedent(
    """
    import datetime as dt, json, sys
    from kpi_pipelines.kpis import registry
    from kpi_pipelines.kpis.registry import MetricSpec

    # the registry's part of adding a KPI: one MetricSpec (the domain's compute is the other)
    spec = MetricSpec("search.throwaway_rate", "search", "1", "proportion", "mean_of_days", "a test metric",
                      "search_experience_metrics", (), "search/success-rate")
    registry.REGISTRY = (*registry.REGISTRY, spec)
    registry.BY_NAME[spec.name] = spec

    from kpi_pipelines.alerts.rules import parse_rules
    from kpi_pipelines.api.app import KPI_ENDPOINTS, create_app
    from kpi_pipelines.api.config import ApiSettings
    from kpi_pipelines.kpis.checks import kpi_rows_check
    from kpi_pipelines.kpis.store import Metric, replace_daily_metrics
    from kpi_pipelines.warehouse import Warehouse

    url, schema = sys.argv[1], sys.argv[2] or None
    warehouse = Warehouse(url, schema)
    day = dt.date(2026, 2, 1)
    replace_daily_metrics(warehouse, "search_experience_metrics", day, day + dt.timedelta(days=1),
                          [Metric("search.throwaway_rate", 1.5, day)])
    check = kpi_rows_check(warehouse, "search_experience_metrics", day, day + dt.timedelta(days=1))
    rule = {"name": "r", "metric": "search.throwaway_rate", "condition": "less_than", "thresholds": {"warning": 0.1},
            "channels": ["c"]}
    rules = parse_rules({"channels": {"c": {"type": "slack", "channel": "#c"}}, "rules": [rule]})
    warehouse.dispose()
    paths = create_app(ApiSettings.from_env()).openapi()["paths"]
    print(json.dumps({
        "check_passed": check.passed,
        "endpoint": list(KPI_ENDPOINTS["search/success-rate"][1]),
        "openapi": paths["/api/kpi/search/success-rate"]["get"]["description"],
        "rule_warnings": list(rules.warnings),
        "index": [line for line in registry.docs_index().splitlines() if "throwaway" in line],
    }))
    """
)


@pytest.mark.slow
def test_a_kpi_added_to_the_registry_reaches_the_check_the_api_the_rules_and_the_docs_index(warehouse, tmp_path):
    """A throwaway metric, added to the registry before the project is imported (a fresh
    process), is bounded by the check, served by its endpoint, known to the rules and indexed."""
    env = {
        "PATH": "/usr/bin:/bin",
        "KPI_WAREHOUSE_URL": warehouse.url.render_as_string(hide_password=False),
        "KPI_WAREHOUSE_SCHEMA": warehouse.schema or "",
        "KPI_LANDING_DIR": str(tmp_path / "landing"),
        "KPI_PII_SALT": "test-salt",
    }
    if warehouse.dialect == "duckdb":
        warehouse.dispose()
    done = subprocess.run(
        [sys.executable, "-c", ADD_A_KPI, env["KPI_WAREHOUSE_URL"], env["KPI_WAREHOUSE_SCHEMA"]],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["check_passed"] is False  # 1.5 is not a proportion
    assert seen["endpoint"][-1] == "search.throwaway_rate"
    assert "`search.throwaway_rate`" in seen["openapi"]
    assert seen["rule_warnings"] == []
    assert len(seen["index"]) == 1 and "| proportion |" in seen["index"][0]
