"""Alert evaluation benchmark: 500 rules over a month of daily KPI values and a week of
hourly ones (plus anomalies), evaluated set-based.

    python -m kpi_pipelines.alerts.bench                    # a temporary DuckDB file
    python -m kpi_pipelines.alerts.bench --url postgresql+psycopg://root@127.0.0.1:5432/test

`run(warehouse)` seeds `kpi_metrics` / `kpi_anomalies` with source_asset 'bench' (its own
rows are replaced on each run), then times a first evaluation (every firing alert is new:
instances, outbox and notification log written, notifications delivered to the log), a
steady-state one an hour later, and 24 hourly evaluations in a row; it counts the SQL
statements one evaluation sends.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from kpi_pipelines.alerts.config import AlertSettings
from kpi_pipelines.alerts.engine import run_evaluation
from kpi_pipelines.alerts.rules import RuleSet, parse_rules
from kpi_pipelines.alerts.transports import Transports
from kpi_pipelines.warehouse import Warehouse

END_DAY = dt.datetime(2026, 3, 31)  # the last daily bucket; hourly buckets fill its 7 days up to 23:00


def seed(warehouse: Warehouse, metrics: int, series_per_metric: int, days: int, hours: int) -> int:
    """Write the benchmark's KPI values and anomalies in SQL (no Python row loop)."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    dims = "CASE WHEN d.j = 0 THEN '{}' ELSE '{\"segment\": \"s' || CAST(d.j AS VARCHAR) || '\"}' END"
    value = "0.5 + 0.2 * sin(m.i * 1.7 + d.j * 0.3 + extract(epoch from g.ts) / 86400.0)"
    grid = (
        "FROM generate_series(0, CAST(:metrics AS INTEGER) - 1) AS m(i) "
        "CROSS JOIN generate_series(0, CAST(:series AS INTEGER) - 1) AS d(j) "
        "CROSS JOIN generate_series(CAST(:start AS TIMESTAMP), CAST(:stop AS TIMESTAMP), CAST(:step AS INTERVAL)) AS g(ts)"
    )
    day_start = END_DAY - dt.timedelta(days=days - 1)
    hour_stop = END_DAY + dt.timedelta(hours=23)
    hour_start = hour_stop - dt.timedelta(hours=hours - 1)
    common = {"metrics": metrics, "series": series_per_metric, "now": now}
    with warehouse.begin() as connection:
        connection.execute(sa.text("DELETE FROM kpi_metrics WHERE source_asset = 'bench'"))
        connection.execute(sa.text("DELETE FROM kpi_anomalies WHERE metric_name LIKE 'bench.%'"))
        for level, start, stop, step in (("day", day_start, END_DAY, "1 day"), ("hour", hour_start, hour_stop, "1 hour")):
            connection.execute(
                sa.text(
                    'INSERT INTO kpi_metrics (metric_name, metric_value, dimensions, "timestamp", aggregation_level, '
                    f"created_at, source_asset) SELECT 'bench.m' || CAST(m.i AS VARCHAR), {value}, {dims}, g.ts, "
                    f"'{level}', CAST(:now AS TIMESTAMP), 'bench' {grid}"
                ),
                {**common, "start": start, "stop": stop, "step": step},
            )
        connection.execute(
            sa.text(
                'INSERT INTO kpi_anomalies (metric_name, dimensions, "timestamp", aggregation_level, metric_value, '
                "training_points, training_mean, training_stddev, z_score, lower_bound, upper_bound, sensitivity, status, "
                f"direction, detected_at) SELECT 'bench.m' || CAST(m.i AS VARCHAR), {dims}, g.ts, 'day', {value}, 14, 0.5, "
                "0.05, CASE WHEN (m.i + d.j) % 9 = 0 THEN -4.5 ELSE 0.4 END, 0.35, 0.65, 3, "
                "CASE WHEN (m.i + d.j) % 9 = 0 THEN 'anomalous' ELSE 'normal' END, "
                f"CASE WHEN (m.i + d.j) % 9 = 0 THEN 'drop' ELSE NULL END, CAST(:now AS TIMESTAMP) {grid}"
            ),
            {**common, "start": END_DAY - dt.timedelta(days=13), "stop": END_DAY, "step": "1 day"},
        )
    return int(warehouse.scalar("SELECT count(*) FROM kpi_metrics WHERE source_asset = 'bench'"))


def bench_rules(count: int, metrics: int, series_per_metric: int, seed_value: int = 7) -> RuleSet:
    """`count` rules of every kind: thresholds on daily and hourly values (overall, one
    segment, every segment), day-over-day and week-over-week changes, anomalies."""
    rng = random.Random(seed_value)
    rules: list[dict[str, Any]] = []
    for n in range(count):
        metric = f"bench.m{rng.randrange(metrics)}"
        kind = n % 10
        rule: dict[str, Any] = {"name": f"bench_rule_{n}", "metric": metric, "channels": ["bench"]}
        segment = {"segment": f"s{rng.randrange(1, series_per_metric)}"} if series_per_metric > 1 else {}
        if kind in (0, 1, 2):
            rule.update(condition="greater_than", thresholds={"warning": round(rng.uniform(0.55, 0.75), 3), "critical": 0.8})
        elif kind == 3:
            rule.update(condition="less_than", thresholds={"warning": round(rng.uniform(0.3, 0.45), 3)}, dimensions=segment)
        elif kind == 4:
            rule.update(condition="greater_than", thresholds={"warning": 0.68}, dimensions={"segment": "*"}, **{"for": "2h"})
        elif kind == 5:
            rule.update(condition="change_pct", thresholds={"warning": -15, "critical": -30})
        elif kind == 6:
            rule.update(condition="change_pct", thresholds={"warning": 20}, window="7d", dimensions={"segment": "*"})
        elif kind == 7:
            rule.update(condition="anomaly", thresholds={"warning": 3, "critical": 5}, dimensions={"segment": "*"})
        elif kind == 8:
            rule.update(condition="greater_than", thresholds={"warning": 0.6}, aggregation_level="hour", window="1h")
        else:
            rule.update(condition="less_than", thresholds={"warning": 0.35}, aggregation_level="hour", window="6h",
                        dimensions={"segment": "*"}, keep_firing_for="1h")
        rules.append(rule)
    return parse_rules({"channels": {"bench": {"type": "slack", "channel": "#bench"}}, "rules": rules}, "<bench>")


class _StatementCounter:
    def __init__(self, engine: sa.Engine):
        self.engine, self.count, self.window_reads = engine, 0, 0

    def __enter__(self) -> _StatementCounter:
        sa.event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._count)

    def _count(self, connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.count += 1
        self.window_reads += statement.lstrip().startswith("WITH specs")


def run(
    warehouse: Warehouse,
    rules: int = 500,
    metrics: int = 60,
    series_per_metric: int = 11,
    days: int = 30,
    hours: int = 24 * 7,
    replay_hours: int = 24,
) -> dict[str, Any]:
    """Seed, evaluate, and return the figures (seconds, counts)."""
    started = time.perf_counter()
    rows = seed(warehouse, metrics, series_per_metric, days, hours)
    seeded = time.perf_counter() - started
    ruleset = bench_rules(rules, metrics, series_per_metric)
    quiet = logging.getLogger("kpi_pipelines.alerts.bench")
    quiet.setLevel(logging.ERROR)
    quiet.propagate = False
    settings = AlertSettings()
    transports = Transports(settings, log=quiet)
    with warehouse.begin() as connection:  # a clean slate of alert state for these rules
        for table in ("alert_instances", "alert_outbox", "alert_notification_log"):
            connection.execute(sa.text(f"DELETE FROM {table} WHERE rule_name LIKE 'bench_rule_%'"))
    first_at = END_DAY + dt.timedelta(days=1)

    with _StatementCounter(warehouse.engine) as counter:
        t0 = time.perf_counter()
        first = run_evaluation(warehouse, ruleset, settings, at=first_at, transports=transports, trigger="bench")
        first_s = time.perf_counter() - t0
    first_statements, first_window_reads = counter.count, counter.window_reads

    t0 = time.perf_counter()
    steady = run_evaluation(warehouse, ruleset, settings, at=first_at + dt.timedelta(hours=1), transports=transports, trigger="bench")
    steady_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for hour in range(replay_hours):
        run_evaluation(warehouse, ruleset, settings, at=first_at + dt.timedelta(hours=2 + hour), transports=transports, trigger="bench")
    replay_s = time.perf_counter() - t0
    # every SQL statement of one steady evaluation, and those reading the rules' windows
    with _StatementCounter(warehouse.engine) as counter:
        run_evaluation(warehouse, ruleset, settings, at=first_at + dt.timedelta(hours=2 + replay_hours), transports=transports, trigger="bench")
    return {
        "backend": warehouse.dialect,
        "rules": len(ruleset.rules),
        "metric_rows": rows,
        "seed_s": round(seeded, 3),
        "series": first.series,
        "firing": first.firing,
        "pending": first.pending,
        "notifications": first.queued,
        "messages": first.delivery.messages,
        "first_evaluation_s": round(first_s, 3),
        "steady_evaluation_s": round(steady_s, 3),
        "steady_firing": steady.firing,
        "replay_evaluations": replay_hours,
        "replay_mean_s": round(replay_s / max(replay_hours, 1), 3),
        "first_evaluation_statements": first_statements,
        "first_evaluation_window_queries": first_window_reads,
        "steady_evaluation_statements": counter.count,
        "steady_evaluation_window_queries": counter.window_reads,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="warehouse URL (default: a temporary DuckDB file)")
    parser.add_argument("--schema", default=None)
    parser.add_argument("--rules", type=int, default=500)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"duckdb:///{Path(tmp) / 'bench.duckdb'}"
        warehouse = Warehouse(url, args.schema)
        try:
            figures = run(warehouse, rules=args.rules)
        finally:
            warehouse.dispose()
    width = max(len(key) for key in figures)
    for key, value in figures.items():
        print(f"{key.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
