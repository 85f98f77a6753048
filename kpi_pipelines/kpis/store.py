"""Daily KPI values and how they are stored in `kpi_metrics` (long format).

A KPI domain computes `Metric`s for a range of UTC days; `replace_daily_metrics` swaps the
asset's rows for those days in one transaction, so re-materializing never duplicates.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import sqlalchemy as sa

from kpi_pipelines.warehouse import Warehouse


def dimensions_json(dimensions: Mapping[str, str]) -> str:
    """The stored form of a dimension set: JSON with sorted keys, `{}` for the overall value."""
    return json.dumps(dict(dimensions), sort_keys=True)


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    day: dt.date
    dimensions: Mapping[str, str] = field(default_factory=dict)

    @property
    def dimensions_text(self) -> str:
        return dimensions_json(self.dimensions)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator ÷ denominator, or None (no row is written) when the denominator is zero."""
    if numerator is None or not denominator:
        return None
    return float(numerator) / float(denominator)


def metrics_from_rows(
    rows: Iterable[Mapping[str, object]], day_key: str = "day", dimension_keys: tuple[str, ...] = ()
) -> list[Metric]:
    """Metrics from aggregated rows shaped {day, metric_name, metric_value, *dimension_keys};
    rows whose value is NULL (a zero denominator) are dropped."""
    out = []
    for row in rows:
        value = row["metric_value"]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        day = row[day_key]
        day = day.date() if isinstance(day, dt.datetime) else day
        dims = {key: str(row[key]) for key in dimension_keys if row.get(key) is not None}
        out.append(Metric(str(row["metric_name"]), float(value), day, dims))  # type: ignore[arg-type]
    return out


def metrics_from_columns(rows: Iterable[object], names: Iterable[str], day_key: str = "day") -> list[Metric]:
    """Metrics from wide rows: one row per day with one column per metric, named as stored."""
    names = tuple(names)
    return metrics_from_rows(
        {"day": row._mapping[day_key], "metric_name": name, "metric_value": row._mapping[name]}  # type: ignore[attr-defined]
        for row in rows
        for name in names
    )


def replace_daily_metrics(
    warehouse: Warehouse, source_asset: str, start: dt.date, end: dt.date, metrics: Iterable[Metric]
) -> int:
    """Replace `source_asset`'s daily rows for the days in [start, end) with `metrics`."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = [
        {
            "name": metric.name,
            "value": metric.value,
            "dims": metric.dimensions_text,
            "ts": dt.datetime.combine(metric.day, dt.time()),
            "now": now,
            "asset": source_asset,
        }
        for metric in metrics
        if start <= metric.day < end
    ]
    with warehouse.begin() as connection:
        connection.execute(
            sa.text(
                'DELETE FROM kpi_metrics WHERE source_asset = :asset AND aggregation_level = \'day\' '
                'AND "timestamp" >= :start AND "timestamp" < :end'
            ),
            {"asset": source_asset, "start": dt.datetime.combine(start, dt.time()), "end": dt.datetime.combine(end, dt.time())},
        )
        if rows:
            connection.execute(
                sa.text(
                    'INSERT INTO kpi_metrics (metric_name, metric_value, dimensions, "timestamp", aggregation_level, '
                    "created_at, source_asset) VALUES (:name, :value, :dims, :ts, 'day', :now, :asset)"
                ),
                rows,
            )
    return len(rows)
