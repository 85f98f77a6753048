"""Catalog data quality on DuckDB and PostgreSQL: completeness (pinned definition),
normalization, quality score, per-category values and the data-quality signal, each against
hand-computed values."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import pytest
from dagster import materialize

from kpi_pipelines.data_quality import data_quality_metrics
from kpi_pipelines.data_quality.metrics import compute_data_quality
from kpi_pipelines.ingestion.catalog import load_catalog
from kpi_pipelines_tests.conftest import event, load_events, metric_values, warehouse_resource

DAY = dt.date(2026, 3, 10)
NEXT_DAY = dt.date(2026, 3, 11)
HEADER = ["product_id", "title", "description", "brand", "category", "price", "currency"]
# What each row breaks is noted; "-" marks a value that is missing (NULL, blank, unparseable).
CATALOG = [
    ["P1", "Nike Air Running Shoes", "Light shoes.", "Nike", "Shoes", "89.99", "USD"],  # clean
    ["P2", "Nike Pro Sneakers", "Everyday.", "Nike", "Shoes", "$59.99", "USD"],  # price written with '$'
    ["P3", "NIKE TRAIL BOOTS", "Rugged.", "NIKE", " SHOES ", "129.00", "usd"],  # caps title/brand, padded category, 'usd'
    ["P4", "Sony  Earbuds", "   ", "Sony", "Electronics", "79.99", "EUR"],  # double space; description -
    ["P5", "", "Loud.", "Sony Inc.", "electronics", "19,99", "GBP"],  # title -; 'Sony Inc.', lower category, '19,99'
    ["P6", "Sony Wireless Speaker", "Clear.", "Sony", "Electronics", "", "USD"],  # price -
    ["P7", "Lego Blocks", "Fun.", " \t ", "", "abc", "USD"],  # brand -, category -, price - (unparseable)
    ["P8", "Ok", "Soft.", "Kong", "Pet Supplies", "0", "USD"],  # title too short, price not positive
]
# Hand-computed over CATALOG.
OVERALL = {
    "data_quality.completeness": 4 / 8,  # P1, P2, P3, P8
    "data_quality.completeness.title": 7 / 8,
    "data_quality.completeness.description": 7 / 8,
    "data_quality.completeness.brand": 7 / 8,
    "data_quality.completeness.category": 7 / 8,
    "data_quality.completeness.price": 6 / 8,
    "data_quality.normalization.brand": 5 / 7,  # Nike x2 beats NIKE; Sony x2 beats "Sony Inc."; Kong
    "data_quality.normalization.category": 5 / 7,  # Shoes x2, Electronics x2, Pet Supplies
    "data_quality.normalization.price": 2 / 6,  # P1, P4
    "data_quality.normalization.title": 4 / 7,  # P1, P2, P6, P7
    "data_quality.normalization_score": 3 / 8,  # P1, P6, P7 (their present values all normalized)
    "data_quality.quality_score": 0.5 * 4 / 8 + 0.5 * 3 / 8,
    "data_quality.products": 8.0,
}
BY_CATEGORY = {
    "shoes": {"": 1.0, "title": 1.0, "description": 1.0, "brand": 1.0, "category": 1.0, "price": 1.0},
    "electronics": {"": 0.0, "title": 2 / 3, "description": 2 / 3, "brand": 1.0, "category": 1.0, "price": 2 / 3},
    "pet supplies": {"": 1.0, "title": 1.0, "description": 1.0, "brand": 1.0, "category": 1.0, "price": 1.0},
    "(none)": {"": 0.0, "title": 1.0, "description": 1.0, "brand": 0.0, "category": 0.0, "price": 0.0},
}


def write_catalog(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


def test_catalog_metrics_match_hand_computed_values(warehouse, tmp_path):
    load_catalog(warehouse, write_catalog(tmp_path / "catalog.csv", CATALOG))
    got = metric_values(compute_data_quality(warehouse, DAY, NEXT_DAY))

    overall = {name: value for (day, name, dims), value in got.items() if dims == "{}"}
    assert overall == pytest.approx(OVERALL, abs=1e-12)
    expected_by_category = {}
    for category, fields in BY_CATEGORY.items():
        for field, value in fields.items():
            name = "data_quality.completeness" + (f".{field}" if field else "")
            expected_by_category[(DAY, name, json.dumps({"category": category}))] = value
    by_category = {key: value for key, value in got.items() if key[2] != "{}"}
    assert by_category == pytest.approx(expected_by_category, abs=1e-12)


def test_blank_means_any_whitespace_and_null_is_missing(warehouse, tmp_path):
    products = [
        {"product_id": "A", "title": "Good Title", "description": "\u00a0", "brand": "X", "category": "C", "price": 5},
        {"product_id": "B", "title": "Good Title", "description": "\t\n", "brand": "X", "category": "C", "price": 5.5},
        {"product_id": "C", "title": "Good Title", "description": " ok ", "brand": "X", "category": "C", "price": 7},
        {"product_id": "D", "title": "Good Title", "description": None, "brand": "X", "category": "C", "price": None},
    ]
    path = tmp_path / "catalog.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in products), encoding="utf-8")
    load_catalog(warehouse, path)
    got = {m.name: m.value for m in compute_data_quality(warehouse, DAY, NEXT_DAY) if not m.dimensions}
    assert got["data_quality.completeness.description"] == 1 / 4
    assert got["data_quality.completeness.price"] == 3 / 4  # a JSON number is present; null is not
    assert got["data_quality.completeness"] == 1 / 4
    # a price written as a JSON number is plain; no currency column => not normalized
    assert got["data_quality.normalization.price"] == 0.0


def test_catalog_values_are_written_on_every_day_of_the_range(warehouse, tmp_path):
    load_catalog(warehouse, write_catalog(tmp_path / "catalog.csv", CATALOG))
    start, end = dt.date(2026, 3, 1), dt.date(2026, 3, 4)
    got = metric_values(compute_data_quality(warehouse, start, end))
    days = {day for day, _, _ in got}
    assert days == {dt.date(2026, 3, 1), dt.date(2026, 3, 2), dt.date(2026, 3, 3)}
    for day in days:
        assert got[(day, "data_quality.completeness", "{}")] == 0.5


def test_empty_catalog_writes_no_catalog_rows(warehouse):
    assert compute_data_quality(warehouse, DAY, NEXT_DAY) == []


def test_normalization_ratio_without_present_values_is_not_written(warehouse, tmp_path):
    # nothing to normalize: no price, brand, category or title anywhere
    load_catalog(warehouse, write_catalog(tmp_path / "catalog.csv", [["P1", " ", "Some text.", "", "", "", ""]]))
    got = {m.name: m.value for m in compute_data_quality(warehouse, DAY, NEXT_DAY) if not m.dimensions}
    assert got == {
        "data_quality.completeness": 0.0,
        "data_quality.completeness.title": 0.0,
        "data_quality.completeness.description": 1.0,
        "data_quality.completeness.brand": 0.0,
        "data_quality.completeness.category": 0.0,
        "data_quality.completeness.price": 0.0,
        "data_quality.products": 1.0,
    }


def test_tied_spellings_are_all_canonical(warehouse, tmp_path):
    rows = [
        ["P1", "Blue Mug", "Mug.", "Acme", "Kitchen", "5.00", "USD"],
        ["P2", "Red Mug", "Mug.", "ACME", "kitchen", "5.00", "USD"],
        ["P3", "Tall Mug", "Mug.", "Acme  Co", "Kitchen", "5.00", "USD"],  # not clean; groups with Acme
    ]
    load_catalog(warehouse, write_catalog(tmp_path / "catalog.csv", rows))
    got = {m.name: m.value for m in compute_data_quality(warehouse, DAY, NEXT_DAY) if not m.dimensions}
    assert got["data_quality.normalization.brand"] == 2 / 3  # Acme and ACME tie; "Acme  Co" is unclean
    assert got["data_quality.normalization.category"] == 2 / 3  # Kitchen x2 beats kitchen


def test_signal_is_the_daily_mean_of_each_table_and_check(warehouse, write_events):
    def signal(event_id: str, timestamp: str, check: str, value: float) -> dict:
        return event(event_id, "data_quality", timestamp, session_id="dq", user_id=None, source="system",
                     table="products", check=check, value=value)

    load_events(warehouse, write_events, [
        signal("d1", "2026-03-10T01:00:00Z", "null_brand", 4),
        signal("d2", "2026-03-10T02:00:00Z", "null_brand", 6),
        signal("d3", "2026-03-10T02:00:00Z", "invalid_price", 1.5),
        signal("d4", "2026-03-10T23:30:00-02:00", "null_brand", 10),  # 2026-03-11 01:30 UTC
        signal("d5", "2026-03-11T05:00:00Z", "null_brand", 20),
        signal("d6", "2026-03-12T05:00:00Z", "null_brand", 99),  # outside the window
    ])
    got = metric_values(compute_data_quality(warehouse, DAY, dt.date(2026, 3, 12)))
    brand = json.dumps({"check": "null_brand", "table": "products"})
    price = json.dumps({"check": "invalid_price", "table": "products"})
    assert got == {
        (DAY, "data_quality.signal", brand): 5.0,
        (DAY, "data_quality.signal", price): 1.5,
        (NEXT_DAY, "data_quality.signal", brand): 15.0,
    }


def test_asset_writes_its_partition_once(warehouse, tmp_path):
    load_catalog(warehouse, write_catalog(tmp_path / "catalog.csv", CATALOG))
    resource = warehouse_resource(warehouse)
    for _ in range(2):  # re-materializing replaces the partition's rows
        result = materialize([data_quality_metrics], partition_key=DAY.isoformat(), resources={"warehouse": resource})
        assert result.success
    rows = warehouse.query(
        "SELECT metric_name, metric_value FROM kpi_metrics "
        "WHERE source_asset = 'data_quality_metrics' AND dimensions = '{}'"
    )
    assert dict(rows) == pytest.approx(OVERALL, abs=1e-12)
    assert len(rows) == len(OVERALL)
