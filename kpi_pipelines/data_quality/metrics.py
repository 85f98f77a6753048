"""Catalog data quality (docs/metrics.md).

The catalog metrics describe `products` as it stands when the partition is materialized:
one set-based query counts what the definitions need, `catalog_metrics` turns the counts
into ratios and repeats them on every day of the partition range. The signal metric
averages the catalog's `data_quality` events of each UTC day.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from kpi_pipelines.kpis.store import Metric, ratio
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines.partitions import days_in

REQUIRED_FIELDS = ("title", "description", "brand", "category", "price")
NORMALIZED_FIELDS = ("brand", "category", "price", "title")
# ISO-4217 codes the catalog is expected to use, compared as written (upper case, no spaces).
CURRENCIES = ("USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF", "CNY", "INR", "SEK", "NOK", "DKK", "PLN", "BRL", "MXN")
TITLE_LENGTH = (3, 150)  # characters; 150 is Google Merchant Center's title limit
NO_CATEGORY = "(none)"
QUALITY_WEIGHTS = {"completeness": 0.5, "normalization_score": 0.5}
# Every character Python's str.strip() removes, as the body of a regular-expression class
# (literal characters: RE2 and PostgreSQL read them alike).
WHITESPACE_CLASS = "\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# A legal-form suffix that does not make a different brand ("Nike Inc." is spelled "Nike").
BRAND_SUFFIX = r",? (inc|llc|ltd|co|corp|gmbh)\.?$"
PLAIN_DECIMAL = r"^[0-9]+([.][0-9]+)?$"


def clean_text_sql(column: str) -> str:
    """`column` with whitespace runs collapsed to one space and trimmed ('' when blank)."""
    return f"trim(regexp_replace({column}, '[{WHITESPACE_CLASS}]+', ' ', 'g'))"


def _list_sql(values: Sequence[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


CATALOG_SQL = f"""
WITH
cleaned AS (
    SELECT title, description, brand, category, price, price_raw, currency,
           {clean_text_sql('title')} AS title_clean,
           {clean_text_sql('description')} AS description_clean,
           {clean_text_sql('brand')} AS brand_clean,
           {clean_text_sql('category')} AS category_clean
    FROM products
),
fields_present AS (
    -- present: not null and, for text, not blank after trimming
    SELECT *,
           coalesce(title_clean <> '', false) AS title_present,
           coalesce(description_clean <> '', false) AS description_present,
           coalesce(brand_clean <> '', false) AS brand_present,
           coalesce(category_clean <> '', false) AS category_present,
           price IS NOT NULL AS price_present,
           coalesce(nullif(lower(category_clean), ''), '{NO_CATEGORY}') AS category_group,
           regexp_replace(lower(brand_clean), '{BRAND_SUFFIX}', '') AS brand_key
    FROM cleaned
),
brand_spellings AS (
    -- canonical: the most common spelling of a brand (all of them when tied)
    SELECT brand_key, brand, count(*) = max(count(*)) OVER (PARTITION BY brand_key) AS is_canonical
    FROM fields_present WHERE brand_present GROUP BY brand_key, brand
),
category_spellings AS (
    SELECT category_group, category, count(*) = max(count(*)) OVER (PARTITION BY category_group) AS is_canonical
    FROM fields_present WHERE category_present GROUP BY category_group, category
),
fields_normalized AS (
    SELECT f.*,
           coalesce(f.brand = f.brand_clean AND b.is_canonical, false) AS brand_normalized,
           coalesce(f.category = f.category_clean AND c.is_canonical, false) AS category_normalized,
           coalesce(f.price > 0 AND f.currency IN ({_list_sql(CURRENCIES)})
                    AND regexp_replace(f.price_raw, '{PLAIN_DECIMAL}', '') = '', false) AS price_normalized,
           coalesce(f.title = f.title_clean
                    AND NOT (upper(f.title) = f.title AND lower(f.title) <> f.title)
                    AND length(f.title) BETWEEN {TITLE_LENGTH[0]} AND {TITLE_LENGTH[1]}, false) AS title_normalized
    FROM fields_present f
    LEFT JOIN brand_spellings b ON b.brand_key = f.brand_key AND b.brand = f.brand
    LEFT JOIN category_spellings c ON c.category_group = f.category_group AND c.category = f.category
),
product_checks AS (
    SELECT *,
           title_present AND description_present AND brand_present AND category_present AND price_present
               AS complete,
           (brand_present OR category_present OR price_present OR title_present) AS has_normalizable,
           (NOT brand_present OR brand_normalized) AND (NOT category_present OR category_normalized)
               AND (NOT price_present OR price_normalized) AND (NOT title_present OR title_normalized)
               AS all_normalized
    FROM fields_normalized
)
SELECT GROUPING(category_group) = 1 AS overall, category_group,
       count(*) AS products,
       count(*) FILTER (WHERE complete) AS complete,
       {", ".join(f"count(*) FILTER (WHERE {name}_present) AS {name}_present" for name in REQUIRED_FIELDS)},
       {", ".join(f"count(*) FILTER (WHERE {name}_normalized) AS {name}_normalized" for name in NORMALIZED_FIELDS)},
       count(*) FILTER (WHERE has_normalizable) AS has_normalizable,
       count(*) FILTER (WHERE has_normalizable AND all_normalized) AS all_normalized
FROM product_checks
GROUP BY GROUPING SETS ((), (category_group))
"""

SIGNALS_SQL = """
WITH
signal_events AS (
    SELECT event_date AS day, metadata->>'table' AS table_name, metadata->>'check' AS check_name,
           CAST(metadata->>'value' AS DOUBLE PRECISION) AS value
    FROM raw_events
    WHERE event_type = 'data_quality'
      AND event_date >= CAST(:start AS DATE) AND event_date < CAST(:end AS DATE)
)
SELECT day, table_name, check_name, avg(value) AS mean_value
FROM signal_events
GROUP BY day, table_name, check_name
"""


@dataclass(frozen=True)
class CatalogCounts:
    """Counts over the whole catalog (category None) or one normalized category."""

    category: str | None
    products: int
    complete: int
    present: Mapping[str, int]
    normalized: Mapping[str, int]
    has_normalizable: int
    all_normalized: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CatalogCounts:
        return cls(
            category=None if row["overall"] else str(row["category_group"]),
            products=int(row["products"]),
            complete=int(row["complete"]),
            present={name: int(row[f"{name}_present"]) for name in REQUIRED_FIELDS},
            normalized={name: int(row[f"{name}_normalized"]) for name in NORMALIZED_FIELDS},
            has_normalizable=int(row["has_normalizable"]),
            all_normalized=int(row["all_normalized"]),
        )


def catalog_values(counts: CatalogCounts) -> dict[str, float]:
    """The catalog metrics of one count row; a ratio with a zero denominator is left out
    (an empty catalog gives none). Category rows carry completeness only."""
    if not counts.products:
        return {}
    completeness = counts.complete / counts.products
    values: dict[str, float | None] = {"data_quality.completeness": completeness}
    for name in REQUIRED_FIELDS:
        values[f"data_quality.completeness.{name}"] = counts.present[name] / counts.products
    if counts.category is None:
        for name in NORMALIZED_FIELDS:
            values[f"data_quality.normalization.{name}"] = ratio(counts.normalized[name], counts.present[name])
        normalization = ratio(counts.all_normalized, counts.has_normalizable)
        values["data_quality.normalization_score"] = normalization
        if normalization is not None:
            values["data_quality.quality_score"] = (
                QUALITY_WEIGHTS["completeness"] * completeness + QUALITY_WEIGHTS["normalization_score"] * normalization
            )
        values["data_quality.products"] = float(counts.products)
    return {name: value for name, value in values.items() if value is not None}


def catalog_metrics(counts: Sequence[CatalogCounts], start: dt.date, end: dt.date) -> list[Metric]:
    """The catalog snapshot's metrics, the same values on every day in [start, end)."""
    days = days_in(start, end)
    out: list[Metric] = []
    for row in counts:
        dimensions = {} if row.category is None else {"category": row.category}
        for name, value in catalog_values(row).items():
            out += [Metric(name, value, day, dimensions) for day in days]
    return out


def catalog_counts(warehouse: Warehouse) -> list[CatalogCounts]:
    """The overall count row and one per normalized category."""
    return [CatalogCounts.from_row(row._mapping) for row in warehouse.query(CATALOG_SQL)]


def signal_metrics(warehouse: Warehouse, start: dt.date, end: dt.date) -> list[Metric]:
    """data_quality.signal: the mean `value` of each (table, check) on each day."""
    rows = warehouse.query(SIGNALS_SQL, {"start": start.isoformat(), "end": end.isoformat()})
    return [
        Metric("data_quality.signal", float(row.mean_value), row.day, {"table": row.table_name, "check": row.check_name})
        for row in rows
    ]


def compute_data_quality(warehouse: Warehouse, start: dt.date, end: dt.date) -> list[Metric]:
    """Every data-quality metric for the UTC days in [start, end)."""
    return catalog_metrics(catalog_counts(warehouse), start, end) + signal_metrics(warehouse, start, end)
