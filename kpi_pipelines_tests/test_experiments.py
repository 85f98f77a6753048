"""A/B test statistics against scipy, statsmodels and GrowthBook's gbstats, and the
`experiment_results` asset on DuckDB and PostgreSQL against a plain-Python reference."""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
from dagster import materialize
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportions_ztest

from kpi_pipelines.experiments.assets import (
    experiment_results,
    experiment_results_asset,
    replace_experiment_results,
    result_metrics,
)
from kpi_pipelines.experiments.stats import (
    VariantTotals,
    analyze_experiment,
    choose_control,
    relative_lift,
    sample_variance,
    srm_test,
    two_proportion_z_test,
    welch_t_test,
)
from kpi_pipelines.ingestion.loader import EventLoader
from kpi_pipelines.warehouse import Warehouse, WarehouseResource
from kpi_pipelines_tests.conftest import SALT, event

UTC = dt.timezone.utc
TOLERANCE = {"rel": 1e-9, "abs": 1e-9}

# --- the statistics on aggregates --------------------------------------------------------


def sums(values: np.ndarray) -> tuple[float, float, int]:
    return float(values.sum()), float((values * values).sum()), len(values)


@pytest.mark.parametrize("seed", range(6))
def test_welch_t_test_from_sums_matches_scipy_on_the_samples(seed):
    rng = np.random.default_rng(seed)
    # revenue per session: mostly zero, some orders
    control = np.where(rng.random(400 + seed * 50) < 0.1, rng.gamma(2.0, 40.0, 400 + seed * 50), 0.0).round(2)
    treatment = np.where(rng.random(380) < 0.13, rng.gamma(2.0, 45.0, 380), 0.0).round(2)
    ours = welch_t_test(*sums(control), *sums(treatment))
    reference = scipy_stats.ttest_ind(treatment, control, equal_var=False)
    assert ours is not None
    assert ours.statistic == pytest.approx(reference.statistic, **TOLERANCE)
    assert ours.p_value == pytest.approx(reference.pvalue, **TOLERANCE)
    assert ours.dof == pytest.approx(reference.df, **TOLERANCE)


@pytest.mark.parametrize(
    "control,treatment", [((120, 1000), (150, 1010)), ((9, 50), (4, 61)), ((5000, 100000), (5300, 99000)), ((0, 10), (3, 12))]
)
def test_pooled_z_test_matches_statsmodels(control, treatment):
    ours = two_proportion_z_test(control[0], control[1], treatment[0], treatment[1])
    z, p = proportions_ztest([treatment[0], control[0]], [treatment[1], control[1]])
    assert ours is not None
    assert ours.statistic == pytest.approx(z, **TOLERANCE)
    assert ours.p_value == pytest.approx(p, **TOLERANCE)


@pytest.mark.parametrize(
    "observed,weights",
    [([5000, 5210], None), ([100, 130, 90], None), ([812, 2003], [0.3, 0.7]), ([10, 10, 40], [1, 1, 2])],
)
def test_srm_chi_square_matches_scipy(observed, weights):
    ours = srm_test(observed, weights)
    expected = None if weights is None else [sum(observed) * w / sum(weights) for w in weights]
    reference = scipy_stats.chisquare(observed, expected)
    assert ours is not None
    assert ours.statistic == pytest.approx(reference.statistic, **TOLERANCE)
    assert ours.p_value == pytest.approx(reference.pvalue, **TOLERANCE)
    assert ours.dof == len(observed) - 1


# Values printed by GrowthBook's engine, gbstats 0.8.0:
# TwoSidedTTest(stat_a=control, stat_b=treatment).compute_result() -> expected, ci
GBSTATS_PROPORTIONS = [
    ((120, 1000), (150, 1010), 0.2376237623762376, -0.039221602979597425, 0.5144691277320727),
    ((9, 50), (4, 61), -0.6357012750455373, -1.0487896882617682, -0.2226128618293065),
]
GBSTATS_MEANS = [  # (sum, sum of squares, n) per arm
    ((1234.5, 98765.25, 1000), (1400.25, 110000.5, 1010), 0.12303453917688252, -0.6368478310101645, 0.8829169093639296),
    ((310.0, 25100.0, 40), (150.5, 9050.25, 35), -0.44516129032258067, -1.3199145636112062, 0.42959198296604484),
]


@pytest.mark.parametrize("control,treatment,lift,lower,upper", GBSTATS_PROPORTIONS)
def test_conversion_lift_and_ci_match_growthbook(control, treatment, lift, lower, upper):
    (x_c, n_c), (x_t, n_t) = control, treatment
    p_c, p_t = x_c / n_c, x_t / n_t
    ours = relative_lift(p_c, p_c * (1 - p_c), n_c, p_t, p_t * (1 - p_t), n_t)
    assert ours is not None
    assert (ours.estimate, ours.ci_lower, ours.ci_upper) == pytest.approx((lift, lower, upper), **TOLERANCE)


@pytest.mark.parametrize("control,treatment,lift,lower,upper", GBSTATS_MEANS)
def test_mean_lift_and_ci_match_growthbook(control, treatment, lift, lower, upper):
    (s_c, ss_c, n_c), (s_t, ss_t, n_t) = control, treatment
    var_c, var_t = sample_variance(s_c, ss_c, n_c), sample_variance(s_t, ss_t, n_t)
    assert var_c is not None and var_t is not None
    ours = relative_lift(s_c / n_c, var_c, n_c, s_t / n_t, var_t, n_t)
    assert ours is not None
    assert (ours.estimate, ours.ci_lower, ours.ci_upper) == pytest.approx((lift, lower, upper), **TOLERANCE)


def test_undefined_statistics_are_none():
    assert relative_lift(0.0, 0.0, 100, 0.1, 0.09, 100) is None  # control converts nobody
    assert relative_lift(0.1, 0.09, 1, 0.1, 0.09, 100) is None  # one unit
    assert two_proportion_z_test(0, 100, 0, 90) is None  # nobody converts: no variance
    assert two_proportion_z_test(0, 0, 3, 90) is None
    assert welch_t_test(5.0, 25.0, 1, 3.0, 5.0, 3) is None  # one session in control
    assert welch_t_test(0.0, 0.0, 50, 0.0, 0.0, 60) is None  # no revenue anywhere
    assert srm_test([120]) is None  # one variant
    assert srm_test([0, 0]) is None
    assert srm_test([50, 3], [1.0, 0.0]).p_value == 0.0  # traffic to a variant expected to get none


def test_control_is_the_variant_named_control_else_the_first_in_code_point_order():
    assert choose_control(["b", "control", "a"]) == "control"
    assert choose_control(["treatment", "Baseline", "alpha"]) == "Baseline"


def test_configured_variants_without_sessions_count_in_the_srm_test():
    day = dt.date(2026, 3, 10)
    totals = [VariantTotals(day, "e", v, n, 0, 0.0, 0.0, 0) for v, n in (("control", 500), ("b", 520))]
    equal = analyze_experiment(totals)
    assert equal[0].srm_p_value == pytest.approx(scipy_stats.chisquare([520, 500]).pvalue, **TOLERANCE)
    configured = analyze_experiment(totals, {"control": 1, "b": 1, "c": 1})
    assert configured[0].srm_p_value == pytest.approx(scipy_stats.chisquare([520, 0, 500]).pvalue, **TOLERANCE)
    assert all(row.srm_flag for row in configured)
    assert not any(row.srm_flag for row in equal)
    assert [row.conversion_lift for row in equal] == [None, None]  # nobody converts in control


# --- the asset on the warehouse -------------------------------------------------------------


@pytest.fixture
def results_warehouse(warehouse: Warehouse) -> Warehouse:
    """The warehouse, whose migrations create `experiment_results`."""
    return warehouse


def exposure(event_id: str, timestamp: str, session_id: str, experiment: str | None, variant: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"action": "click", "query_id": "q", "product_id": "P1", "position": 1}
    if experiment:
        metadata["experiment"] = {"id": experiment, "variant": variant}
    return event(event_id, "search", timestamp, session_id, **metadata)


def purchase(event_id: str, timestamp: str, session_id: str, revenue: float, experiment: str | None = None,
             variant: str | None = None) -> dict[str, Any]:  # fmt: skip
    metadata: dict[str, Any] = {"action": "order", "order_id": f"o-{event_id}", "revenue": revenue,
                                "currency": "USD", "product_ids": ["P1"]}  # fmt: skip
    if experiment:
        metadata["experiment"] = {"id": experiment, "variant": variant}
    return event(event_id, "business", timestamp, session_id, **metadata)


def load(warehouse: Warehouse, write_events, events: list[dict[str, Any]]) -> None:
    assert EventLoader(warehouse, SALT).load_file(write_events(events)).rejected == 0


def utc_day(timestamp: str) -> dt.date:
    return dt.datetime.fromisoformat(timestamp).astimezone(UTC).date()


def reference(events: list[dict[str, Any]], day: dt.date) -> dict[tuple[str, str], dict[str, Any]]:
    """{(experiment, variant): sessions, converting, revenues (one per session), excluded} on `day`."""
    run: dict[str, list[dt.date]] = defaultdict(list)
    variants: dict[tuple[str, str], set[str]] = defaultdict(set)
    revenue: dict[str, list[float]] = defaultdict(list)
    for e in events:
        when, experiment = utc_day(e["timestamp"]), e["metadata"].get("experiment")
        if experiment:
            run[experiment["id"]].append(when)
        if when > day:
            continue
        if experiment:
            variants[(experiment["id"], e["session_id"])].add(experiment["variant"])
        if e["type"] == "business":
            revenue[e["session_id"]].append(float(e["metadata"]["revenue"]))
    out: dict[tuple[str, str], dict[str, Any]] = {}
    excluded: dict[str, int] = defaultdict(int)
    for (experiment, session), seen in variants.items():
        if not min(run[experiment]) <= day <= max(run[experiment]):
            continue
        if len(seen) > 1:
            excluded[experiment] += 1
            continue
        arm = out.setdefault((experiment, next(iter(seen))), {"sessions": 0, "converting": 0, "revenues": []})
        arm["sessions"] += 1
        arm["converting"] += bool(revenue[session])
        arm["revenues"].append(sum(revenue[session]))
    for (experiment, _), arm in out.items():
        arm["excluded"] = excluded[experiment]
    return out


def random_experiment_events(seed: int) -> list[dict[str, Any]]:
    """Two experiments over three days: sessions spanning midnight, assignments on some events
    only, orders without assignment, a few sessions seen in two variants."""
    rng = random.Random(seed)
    zones = [UTC, dt.timezone(dt.timedelta(hours=9)), dt.timezone(dt.timedelta(hours=-7))]
    arms = {"checkout": ["control", "new"], "ranking": ["b", "a", "c"]}
    events: list[dict[str, Any]] = []
    for s in range(300):
        experiment = rng.choice(list(arms))
        variant = rng.choice(arms[experiment])
        start = dt.datetime(2026, 3, 10, tzinfo=UTC) + dt.timedelta(minutes=rng.randrange(3 * 24 * 60 - 120))
        for k in range(rng.randint(1, 4)):
            instant = start + dt.timedelta(minutes=rng.randrange(0, 600))
            timestamp = instant.astimezone(rng.choice(zones)).isoformat()
            shown = variant if rng.random() > 0.03 else rng.choice(arms[experiment])
            tagged = k == 0 or rng.random() < 0.5
            if rng.random() < 0.2:
                revenue = round(rng.uniform(5, 200), 2)
                events.append(purchase(f"e-{s}-{k}", timestamp, f"s-{s}", revenue, *((experiment, shown) if tagged else ())))
            else:
                events.append(exposure(f"e-{s}-{k}", timestamp, f"s-{s}", experiment if tagged else None, shown))
    return events


@pytest.mark.parametrize("seed", [7, 8])
def test_results_match_scipy_and_statsmodels_on_the_sessions(results_warehouse, write_events, seed):
    events = random_experiment_events(seed)
    load(results_warehouse, write_events, events)
    results = experiment_results(results_warehouse, dt.date(2026, 3, 9), dt.date(2026, 3, 15))
    days = sorted({r.day for r in results})
    assert days[0] == dt.date(2026, 3, 10)
    for day in days:
        expected = reference(events, day)
        got = {(r.experiment_id, r.variant): r for r in results if r.day == day}
        assert set(got) == set(expected)
        for experiment in {e for e, _ in expected}:
            arms = {v: arm for (e, v), arm in expected.items() if e == experiment}
            control = "control" if "control" in arms else min(arms)
            srm = scipy_stats.chisquare([arm["sessions"] for arm in arms.values()])
            for variant, arm in arms.items():
                row = got[(experiment, variant)]
                assert (row.sessions, row.converting_sessions, row.excluded_sessions) == (
                    arm["sessions"], arm["converting"], arm["excluded"])  # fmt: skip
                assert row.revenue_per_session == pytest.approx(np.mean(arm["revenues"]), **TOLERANCE)
                assert row.srm_p_value == pytest.approx(srm.pvalue, **TOLERANCE)
                assert row.is_control == (variant == control)
                if variant == control:
                    assert row.p_value_conversion is None and row.p_value_revenue is None
                    continue
                base = arms[control]
                z, p = proportions_ztest([arm["converting"], base["converting"]], [arm["sessions"], base["sessions"]])
                assert (row.conversion_z, row.p_value_conversion) == pytest.approx((z, p), **TOLERANCE)
                welch = scipy_stats.ttest_ind(arm["revenues"], base["revenues"], equal_var=False)
                assert (row.revenue_t, row.p_value_revenue, row.revenue_dof) == pytest.approx(
                    (welch.statistic, welch.pvalue, welch.df), **TOLERANCE)  # fmt: skip
                lift = (arm["converting"] / arm["sessions"]) / (base["converting"] / base["sessions"]) - 1
                assert row.conversion_lift == pytest.approx(lift, **TOLERANCE)
                assert row.conversion_lift_ci_lower < row.conversion_lift < row.conversion_lift_ci_upper


def test_sessions_are_assigned_cumulatively_and_conflicts_excluded(results_warehouse, write_events):
    load(results_warehouse, write_events, [
        exposure("a1", "2026-03-10T10:00:00Z", "s-a", "exp", "control"),
        purchase("a2", "2026-03-11T00:30:00+02:00", "s-a", 40.0),  # 2026-03-10 22:30 UTC, untagged
        exposure("b1", "2026-03-10T23:50:00Z", "s-b", "exp", "b"),
        purchase("b2", "2026-03-11T00:10:00Z", "s-b", 25.0, "exp", "b"),  # converts the next day
        exposure("c1", "2026-03-10T12:00:00Z", "s-c", "exp", "b"),
        exposure("c2", "2026-03-11T12:00:00Z", "s-c", "exp", "control"),  # two variants from day 2 on
        exposure("d1", "2026-03-11T09:00:00-05:00", "s-d", "exp", "control"),
        exposure("x1", "2026-03-11T08:00:00Z", "s-x", "solo", "only"),  # a one-variant experiment
        exposure("z1", "2026-03-13T08:00:00Z", "s-z", None, None),  # no experiment: last day of exp is 11
    ])  # fmt: skip
    results = experiment_results(results_warehouse, dt.date(2026, 3, 9), dt.date(2026, 3, 14))
    table = {(r.day.isoformat(), r.experiment_id, r.variant): r for r in results}
    assert sorted(table) == [
        ("2026-03-10", "exp", "b"), ("2026-03-10", "exp", "control"),
        ("2026-03-11", "exp", "b"), ("2026-03-11", "exp", "control"), ("2026-03-11", "solo", "only"),
    ]  # fmt: skip
    day1_b, day1_c = table[("2026-03-10", "exp", "b")], table[("2026-03-10", "exp", "control")]
    assert (day1_b.sessions, day1_b.converting_sessions, day1_b.excluded_sessions) == (2, 0, 0)
    assert (day1_c.sessions, day1_c.converting_sessions, day1_c.revenue) == (1, 1, 40.0)
    day2_b, day2_c = table[("2026-03-11", "exp", "b")], table[("2026-03-11", "exp", "control")]
    assert (day2_b.sessions, day2_b.converting_sessions, day2_b.revenue, day2_b.excluded_sessions) == (1, 1, 25.0, 1)
    assert (day2_c.sessions, day2_c.converting_sessions, day2_c.revenue_per_session) == (2, 1, 20.0)
    assert day2_c.is_control and not day2_b.is_control
    assert day2_b.conversion_lift is None  # one session converting: zero variance, undefined as in GrowthBook
    assert day2_b.p_value_conversion == pytest.approx(proportions_ztest([1, 1], [1, 2])[1], **TOLERANCE)
    solo = table[("2026-03-11", "solo", "only")]
    assert solo.is_control and solo.srm_p_value is None and not solo.srm_flag
    names = {(m.name, m.dimensions_text) for m in result_metrics(results) if m.day == dt.date(2026, 3, 11)}
    assert ("experiment.p_value_conversion", '{"experiment": "exp", "variant": "b"}') in names
    assert ("experiment.conversion_lift", '{"experiment": "exp", "variant": "b"}') not in names  # undefined: no row
    assert ("experiment.srm_p_value", '{"experiment": "exp"}') in names
    assert ("experiment.excluded_sessions", '{"experiment": "exp"}') in names
    assert ("experiment.srm_p_value", '{"experiment": "solo"}') not in names  # undefined: no row
    assert ("experiment.p_value_conversion", '{"experiment": "exp", "variant": "control"}') not in names


def test_replacing_a_range_twice_keeps_one_row_per_day_experiment_and_variant(results_warehouse, write_events):
    load(results_warehouse, write_events, random_experiment_events(9))
    start, end = dt.date(2026, 3, 10), dt.date(2026, 3, 13)
    results = experiment_results(results_warehouse, start, end)
    for _ in range(2):
        assert replace_experiment_results(results_warehouse, start, end, results) == len(results)
    assert results_warehouse.scalar("SELECT count(*) FROM experiment_results") == len(results)
    stored = results_warehouse.query(
        "SELECT day, experiment_id, variant, p_value_revenue, srm_flag FROM experiment_results"
    )
    by_key = {(r.day, r.experiment_id, r.variant): r for r in results}
    for day, experiment, variant, p_value, flag in stored:
        result = by_key[(day, experiment, variant)]
        assert flag == result.srm_flag
        assert (p_value is None and result.p_value_revenue is None) or math.isclose(p_value, result.p_value_revenue)


def test_the_asset_writes_the_table_and_headline_metrics(results_warehouse, write_events):
    load(results_warehouse, write_events, random_experiment_events(10))
    resource = WarehouseResource(
        url=results_warehouse.url.render_as_string(hide_password=False), schema_name=results_warehouse.schema or ""
    )
    config = {"ops": {"experiment_results": {"config": {"traffic_weights": {"checkout": {"control": 1, "new": 1}}}}}}
    for _ in range(2):
        result = materialize(
            [experiment_results_asset], partition_key="2026-03-11", resources={"warehouse": resource}, run_config=config
        )
        assert result.success
    rows = results_warehouse.query("SELECT DISTINCT day FROM experiment_results")
    assert [row[0] for row in rows] == [dt.date(2026, 3, 11)]
    expected = result_metrics(experiment_results(results_warehouse, dt.date(2026, 3, 11), dt.date(2026, 3, 12)))
    stored = results_warehouse.query(
        "SELECT metric_name, dimensions, metric_value FROM kpi_metrics WHERE source_asset = 'experiment_results'"
    )
    assert len(stored) == len(expected)
    assert {(n, d): v for n, d, v in stored} == pytest.approx({(m.name, m.dimensions_text): m.value for m in expected})
