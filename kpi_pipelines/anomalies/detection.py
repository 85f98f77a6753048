"""Z-score anomaly detection of daily KPI series, in the style of Elementary's anomaly tests.

For each series (metric name and dimensions) and each day D, the training set is the
series' values on the 14 days before D. With at least `MIN_TRAINING_POINTS` of them, the
expected range is mean ± sensitivity × sample standard deviation, and D's value is
anomalous outside it. Fewer points give status `not_enough_data`, never an alarm. A flat
training set (standard deviation 0) makes any different value anomalous.

The mean and deviation come from SQL in floating point: a series of 0.852 every day
averages to 0.8520000000000001 with a deviation of about 1e-16. Values and deviations are
therefore compared with a relative tolerance (`FLOAT_TOLERANCE`): an unchanged series is
never an anomaly.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

TRAINING_DAYS = 14
SENSITIVITY = 3.0
MIN_TRAINING_POINTS = 7
FLOAT_TOLERANCE = 1e-9  # relative: far above float rounding, far below any real change


@dataclass(frozen=True)
class SeriesPoint:
    """A day's value with its training window's aggregates (computed in SQL)."""

    metric_name: str
    dimensions: str
    day: dt.datetime
    value: float
    training_points: int
    training_mean: float | None
    training_stddev: float | None


@dataclass(frozen=True)
class Anomaly:
    point: SeriesPoint
    status: str  # normal | anomalous | not_enough_data
    z_score: float | None
    lower_bound: float | None
    upper_bound: float | None
    direction: str | None  # spike | drop | None


def classify(point: SeriesPoint, sensitivity: float = SENSITIVITY, min_points: int = MIN_TRAINING_POINTS) -> Anomaly:
    if point.training_points < min_points or point.training_mean is None:
        return Anomaly(point, "not_enough_data", None, None, None, None)
    mean, stddev = point.training_mean, point.training_stddev or 0.0
    scale = max(abs(mean), abs(point.value), 1.0)
    if stddev <= FLOAT_TOLERANCE * scale:  # flat history, up to float rounding
        stddev = 0.0
    lower, upper = mean - sensitivity * stddev, mean + sensitivity * stddev
    unchanged = math.isclose(point.value, mean, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)
    if stddev == 0:
        z = None if unchanged else math.copysign(math.inf, point.value - mean)
    else:
        z = (point.value - mean) / stddev
    anomalous = not unchanged and (point.value < lower or point.value > upper)
    direction = None if not anomalous else ("spike" if point.value > mean else "drop")
    stored_z = z if z is None or math.isfinite(z) else None
    return Anomaly(point, "anomalous" if anomalous else "normal", stored_z, lower, upper, direction)
