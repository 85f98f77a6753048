"""A/B test statistics from aggregated counts and sums, as GrowthBook's frequentist engine
computes them by default: two-sided tests at alpha 0.05, a pooled two-proportion z-test,
Welch's t-test, relative lift with a delta-method confidence interval, and a
sample-ratio-mismatch chi-square test flagged at p < 0.001.

Every function takes per-variant totals (never per-unit rows) and returns None when the
statistic is undefined (an empty arm, a zero variance, a zero control mean).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from scipy import stats

ALPHA = 0.05
SRM_P_THRESHOLD = 0.001
CONTROL_NAME = "control"


@dataclass(frozen=True)
class HypothesisTest:
    statistic: float
    p_value: float
    dof: float | None = None  # degrees of freedom of the t and chi-square tests


@dataclass(frozen=True)
class Lift:
    estimate: float  # (treatment - control) / control
    ci_lower: float
    ci_upper: float


def sample_variance(total: float, sum_squares: float, n: int) -> float | None:
    """Unbiased variance (n - 1 denominator) from a sum and a sum of squares."""
    if n < 2:
        return None
    return max((sum_squares - total * total / n) / (n - 1), 0.0)


def proportion_variance(successes: int, n: int) -> float:
    """p (1 - p), GrowthBook's per-unit variance of a proportion."""
    p = successes / n
    return p * (1 - p)


def relative_lift(
    mean_c: float, var_c: float, n_c: int, mean_t: float, var_t: float, n_t: int, alpha: float = ALPHA
) -> Lift | None:
    """Relative lift of treatment over control with GrowthBook's two-sided CI: the delta-method
    variance of the ratio of means, var_t / (mean_c^2 n_t) + var_c mean_t^2 / (mean_c^4 n_c), and
    a t quantile with Welch-Satterthwaite degrees of freedom. `var_*` are per-unit variances."""
    if mean_c == 0 or n_c < 2 or n_t < 2 or var_c <= 0 or var_t <= 0:
        return None
    estimate = (mean_t - mean_c) / mean_c
    variance = var_t / (mean_c**2 * n_t) + var_c * mean_t**2 / (mean_c**4 * n_c)
    dof = welch_dof(var_c / n_c, n_c, var_t / n_t, n_t)
    half_width = float(stats.t.ppf(1 - alpha / 2, dof)) * math.sqrt(variance)
    return Lift(estimate, estimate - half_width, estimate + half_width)


def welch_dof(se2_c: float, n_c: int, se2_t: float, n_t: int) -> float:
    """Welch-Satterthwaite degrees of freedom from the squared standard errors of two means."""
    return (se2_c + se2_t) ** 2 / (se2_c**2 / (n_c - 1) + se2_t**2 / (n_t - 1))


def two_proportion_z_test(successes_c: int, n_c: int, successes_t: int, n_t: int) -> HypothesisTest | None:
    """Pooled two-proportion z-test, two-sided; the statistic is positive when treatment is higher."""
    if n_c == 0 or n_t == 0:
        return None
    pooled = (successes_c + successes_t) / (n_c + n_t)
    standard_error = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_t))
    if standard_error == 0:
        return None
    z = (successes_t / n_t - successes_c / n_c) / standard_error
    return HypothesisTest(z, float(2 * stats.norm.sf(abs(z))))


def welch_t_test(
    sum_c: float, sum_squares_c: float, n_c: int, sum_t: float, sum_squares_t: float, n_t: int
) -> HypothesisTest | None:
    """Welch's unequal-variance t-test of two means from each arm's sum, sum of squares and count."""
    var_c = sample_variance(sum_c, sum_squares_c, n_c)
    var_t = sample_variance(sum_t, sum_squares_t, n_t)
    if var_c is None or var_t is None:
        return None
    se2_c, se2_t = var_c / n_c, var_t / n_t
    if se2_c + se2_t == 0:
        return None
    t = (sum_t / n_t - sum_c / n_c) / math.sqrt(se2_c + se2_t)
    dof = welch_dof(se2_c, n_c, se2_t, n_t)
    return HypothesisTest(t, float(2 * stats.t.sf(abs(t), dof)), dof)


def srm_test(observed: Sequence[int], weights: Sequence[float] | None = None) -> HypothesisTest | None:
    """Pearson chi-square of the units per variant against the expected split (equal unless
    `weights` are given). A variant given weight 0 that received units is a certain mismatch."""
    total = sum(observed)
    if len(observed) < 2 or total == 0:
        return None
    shares = weights if weights is not None else [1.0] * len(observed)
    if len(shares) != len(observed) or any(share < 0 for share in shares) or sum(shares) <= 0:
        raise ValueError(f"srm_test: weights {list(shares)} do not fit {len(observed)} variants")
    dof = len(observed) - 1
    expected = [total * share / sum(shares) for share in shares]
    if any(e == 0 and o > 0 for o, e in zip(observed, expected)):
        return HypothesisTest(math.inf, 0.0, dof)
    chi_square = sum((o - e) ** 2 / e for o, e in zip(observed, expected) if e > 0)
    return HypothesisTest(chi_square, float(stats.chi2.sf(chi_square, dof)), dof)


def choose_control(variants: Sequence[str]) -> str:
    """The variant named "control", else the first in code-point order."""
    return CONTROL_NAME if CONTROL_NAME in variants else min(variants)


@dataclass(frozen=True)
class VariantTotals:
    """One variant's cumulative totals on one day, as the warehouse aggregates them."""

    day: dt.date
    experiment_id: str
    variant: str
    sessions: int
    converting_sessions: int
    revenue: float
    revenue_sum_squares: float  # sum over sessions of (session revenue)^2
    excluded_sessions: int  # sessions of the experiment seen in two variants (per experiment)


@dataclass(frozen=True)
class VariantResult:
    """One row of `experiment_results`; comparisons are None on the control row."""

    day: dt.date
    experiment_id: str
    variant: str
    is_control: bool
    sessions: int
    converting_sessions: int
    excluded_sessions: int
    conversion_rate: float
    revenue: float
    revenue_sum_squares: float
    revenue_per_session: float
    conversion_lift: float | None
    conversion_lift_ci_lower: float | None
    conversion_lift_ci_upper: float | None
    conversion_z: float | None
    p_value_conversion: float | None
    revenue_lift: float | None
    revenue_lift_ci_lower: float | None
    revenue_lift_ci_upper: float | None
    revenue_t: float | None
    revenue_dof: float | None
    p_value_revenue: float | None
    srm_chi_square: float | None
    srm_p_value: float | None
    srm_flag: bool


def analyze_experiment(
    totals: Sequence[VariantTotals], weights: Mapping[str, float] | None = None
) -> list[VariantResult]:
    """Results of one experiment on one day: each variant against the control, and the
    sample-ratio test over all variants (configured variants without sessions count as 0)."""
    by_variant = {row.variant: row for row in totals}
    control = by_variant[choose_control(list(by_variant))]
    srm_variants = sorted(set(by_variant) | set(weights or {}))
    srm = srm_test(
        [by_variant[v].sessions if v in by_variant else 0 for v in srm_variants],
        [weights.get(v, 0.0) for v in srm_variants] if weights else None,
    )
    return [_variant_result(row, control, srm) for row in sorted(totals, key=lambda row: row.variant)]


def _variant_result(row: VariantTotals, control: VariantTotals, srm: HypothesisTest | None) -> VariantResult:
    is_control = row.variant == control.variant
    conversion_lift: Lift | None = None
    revenue_lift: Lift | None = None
    z_test: HypothesisTest | None = None
    t_test: HypothesisTest | None = None
    if not is_control:
        conversion_lift = relative_lift(
            control.converting_sessions / control.sessions,
            proportion_variance(control.converting_sessions, control.sessions),
            control.sessions,
            row.converting_sessions / row.sessions,
            proportion_variance(row.converting_sessions, row.sessions),
            row.sessions,
        )
        var_c = sample_variance(control.revenue, control.revenue_sum_squares, control.sessions)
        var_t = sample_variance(row.revenue, row.revenue_sum_squares, row.sessions)
        if var_c is not None and var_t is not None:
            revenue_lift = relative_lift(
                control.revenue / control.sessions, var_c, control.sessions,
                row.revenue / row.sessions, var_t, row.sessions,
            )  # fmt: skip
        z_test = two_proportion_z_test(control.converting_sessions, control.sessions, row.converting_sessions, row.sessions)
        t_test = welch_t_test(
            control.revenue, control.revenue_sum_squares, control.sessions,
            row.revenue, row.revenue_sum_squares, row.sessions,
        )  # fmt: skip
    return VariantResult(
        day=row.day,
        experiment_id=row.experiment_id,
        variant=row.variant,
        is_control=is_control,
        sessions=row.sessions,
        converting_sessions=row.converting_sessions,
        excluded_sessions=row.excluded_sessions,
        conversion_rate=row.converting_sessions / row.sessions,
        revenue=row.revenue,
        revenue_sum_squares=row.revenue_sum_squares,
        revenue_per_session=row.revenue / row.sessions,
        conversion_lift=conversion_lift.estimate if conversion_lift else None,
        conversion_lift_ci_lower=conversion_lift.ci_lower if conversion_lift else None,
        conversion_lift_ci_upper=conversion_lift.ci_upper if conversion_lift else None,
        conversion_z=z_test.statistic if z_test else None,
        p_value_conversion=z_test.p_value if z_test else None,
        revenue_lift=revenue_lift.estimate if revenue_lift else None,
        revenue_lift_ci_lower=revenue_lift.ci_lower if revenue_lift else None,
        revenue_lift_ci_upper=revenue_lift.ci_upper if revenue_lift else None,
        revenue_t=t_test.statistic if t_test else None,
        revenue_dof=t_test.dof if t_test else None,
        p_value_revenue=t_test.p_value if t_test else None,
        srm_chi_square=srm.statistic if srm else None,
        srm_p_value=srm.p_value if srm else None,
        srm_flag=bool(srm and srm.p_value < SRM_P_THRESHOLD),
    )
