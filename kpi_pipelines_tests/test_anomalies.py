"""Anomaly detection: the classification by hand, and the trailing window in SQL on both backends."""

from __future__ import annotations

import datetime as dt
import statistics

import pytest

from kpi_pipelines.anomalies.assets import replace_anomalies, training_points
from kpi_pipelines.anomalies.detection import SeriesPoint, classify
from kpi_pipelines.kpis.store import Metric, replace_daily_metrics

DAY = dt.datetime(2026, 3, 20)


def point(value, n=14, mean=10.0, sd=1.0):
    return SeriesPoint("m", "{}", DAY, value, n, mean, sd)


@pytest.mark.parametrize(
    "value,status,z,direction",
    [(10.0, "normal", 0.0, None), (12.9, "normal", 2.9, None), (13.5, "anomalous", 3.5, "spike"), (6.0, "anomalous", -4.0, "drop")],
)
def test_classification_against_mean_and_three_sigma(value, status, z, direction):
    anomaly = classify(point(value))
    assert (anomaly.status, anomaly.direction) == (status, direction)
    assert anomaly.z_score == pytest.approx(z)
    assert (anomaly.lower_bound, anomaly.upper_bound) == (7.0, 13.0)


def test_too_little_history_is_not_an_alarm():
    anomaly = classify(point(1000.0, n=6))
    assert (anomaly.status, anomaly.z_score, anomaly.lower_bound) == ("not_enough_data", None, None)
    assert classify(point(1000.0, n=7)).status == "anomalous"


def test_a_flat_history_flags_any_change():
    assert classify(point(10.0, sd=0.0)).status == "normal"
    changed = classify(point(10.5, sd=0.0))
    assert (changed.status, changed.direction, changed.z_score) == ("anomalous", "spike", None)


def test_trailing_window_in_sql_matches_statistics_module(warehouse):
    """14 days of history (days 1..14 of a series 10, 11, ..., plus noise) then a spike."""
    history = [10.0, 12.0, 11.0, 13.0, 9.0, 10.0, 11.0, 12.0, 10.0, 11.0, 13.0, 12.0, 10.0, 11.0]
    start = dt.date(2026, 3, 1)
    metrics = [Metric("search.click_through_rate", v / 100, start + dt.timedelta(days=i)) for i, v in enumerate(history)]
    metrics.append(Metric("search.click_through_rate", 0.40, start + dt.timedelta(days=14)))
    metrics.append(Metric("search.click_through_rate", 0.5, start + dt.timedelta(days=14), {"variant": "b"}))  # no history
    metrics.append(Metric("other.metric", 1.0, start + dt.timedelta(days=13)))  # outside the range checked
    replace_daily_metrics(warehouse, "test_asset", start, start + dt.timedelta(days=15), metrics)

    day = start + dt.timedelta(days=14)
    points = {(p.metric_name, p.dimensions): p for p in training_points(warehouse, day, day + dt.timedelta(days=1))}
    assert set(points) == {("search.click_through_rate", "{}"), ("search.click_through_rate", '{"variant": "b"}')}
    main = points[("search.click_through_rate", "{}")]
    expected = [v / 100 for v in history]
    assert main.training_points == 14
    assert main.training_mean == pytest.approx(statistics.mean(expected), rel=1e-12)
    assert main.training_stddev == pytest.approx(statistics.stdev(expected), rel=1e-9)
    assert classify(main).status == "anomalous"
    assert classify(points[("search.click_through_rate", '{"variant": "b"}')]).status == "not_enough_data"

    anomalies = [classify(p) for p in points.values()]
    for _ in range(2):  # replacing the day twice keeps one row per series
        replace_anomalies(warehouse, day, day + dt.timedelta(days=1), anomalies)
    rows = warehouse.query("SELECT metric_name, dimensions, status, direction FROM kpi_anomalies ORDER BY status")
    assert [tuple(r) for r in rows] == [
        ("search.click_through_rate", "{}", "anomalous", "spike"),
        ("search.click_through_rate", '{"variant": "b"}', "not_enough_data", None),
    ]


@pytest.mark.parametrize("level", [0.852, 0.1, 1234.5678, 1e-4])
def test_an_unchanged_series_is_never_anomalous(warehouse, level):
    """A value repeated every day, through the SQL window on both backends: whatever float
    rounding its mean and deviation carry, it must not read as a change."""
    start = dt.date(2026, 3, 1)
    metrics = [Metric("data_quality.completeness", level, start + dt.timedelta(days=i)) for i in range(15)]
    replace_daily_metrics(warehouse, "test_asset", start, start + dt.timedelta(days=15), metrics)
    day = start + dt.timedelta(days=14)
    (flat,) = training_points(warehouse, day, day + dt.timedelta(days=1))
    anomaly = classify(flat)
    assert (anomaly.status, anomaly.direction) == ("normal", None)
    # a real change of a flat series is still flagged
    moved = classify(SeriesPoint(flat.metric_name, flat.dimensions, flat.day, level * 1.01, 14, flat.training_mean, flat.training_stddev))
    assert (moved.status, moved.direction) == ("anomalous", "spike")


def test_float_rounding_of_the_training_aggregates_is_tolerated():
    mean = sum([0.852] * 14) / 14  # a running float sum, as SQL's avg: 0.8520000000000002
    assert mean != 0.852
    assert classify(point(0.852, mean=mean, sd=1.1e-16)).status == "normal"
    assert classify(point(0.852, mean=mean, sd=0.0)).status == "normal"
    assert classify(point(0.86, mean=mean, sd=1.1e-16)).status == "anomalous"
