"""Each Great Expectations check passes on good data and fails on data made bad on purpose."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from kpi_pipelines.ingestion.catalog import load_catalog
from kpi_pipelines.ingestion.checks import products_check_result, raw_events_check
from kpi_pipelines.ingestion.loader import EventLoader
from kpi_pipelines.kpis.checks import kpi_rows_check
from kpi_pipelines.kpis.store import Metric, replace_daily_metrics
from kpi_pipelines_tests.conftest import SALT, event

DAY = dt.date(2026, 3, 10)
NEXT = DAY + dt.timedelta(days=1)


def meta(result, key):
    return result.metadata[key].value


def insert_raw(warehouse, **overrides):
    row = {
        "event_id": "bad", "event_type": "search", "action": "query", "event_time": dt.datetime(2026, 3, 10, 12),
        "event_date": DAY, "session_id": "s", "user_key": None, "source": "api", "metadata": "{}",
        "source_file": "test", "ingested_at": dt.datetime(2026, 3, 10),
    }
    row.update(overrides)
    with warehouse.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO raw_events (event_id, event_type, action, event_time, event_date, session_id, user_key, "
                "source, metadata, source_file, ingested_at) VALUES (:event_id, :event_type, :action, :event_time, "
                ":event_date, :session_id, :user_key, :source, CAST(:metadata AS "
                + ("JSON" if warehouse.dialect == "duckdb" else "JSONB")
                + "), :source_file, :ingested_at)"
            ),
            row,
        )


def test_raw_events_check(warehouse, write_events):
    EventLoader(warehouse, SALT).load_file(write_events([event("a", timestamp="2026-03-10T01:00:00Z"), event("b")]))
    good = raw_events_check(warehouse, DAY, NEXT)
    assert good.passed and meta(good, "rows_checked") == 2

    insert_raw(warehouse, event_id="x1", event_type="purchase")
    insert_raw(warehouse, event_id="x2", event_time=dt.datetime(2026, 3, 11, 0, 0, 1))  # outside its event_date
    bad = raw_events_check(warehouse, DAY, NEXT)
    assert not bad.passed
    assert meta(bad, "expect_column_values_to_be_in_set(event_type) unexpected_count") == 1
    assert meta(bad, "expect_column_values_to_be_between(event_time_us) unexpected_count") == 1
    assert meta(bad, "expect_column_values_to_be_in_set(event_type) unexpected_percent") == 25.0  # 1 of 4
    assert set(meta(bad, "failed_expectations")) == {
        "expect_column_values_to_be_in_set(event_type)",
        "expect_column_values_to_be_between(event_time_us)",
    }


def test_raw_events_check_counted_in_the_warehouse_equals_gx(warehouse, write_events):
    """The hot path (the warehouse counts the unexpected rows) gives the result GX gives on
    the same rows, and hands a partition with unexpected rows to GX."""
    import great_expectations as gx

    from kpi_pipelines.expectations import check_result, unexpected_rows_in_warehouse, validate
    from kpi_pipelines.ingestion.checks import (
        RAW_EVENTS_CHECK, RAW_EVENTS_ROWS_SQL, raw_events_expectations, raw_events_frame,
    )

    EventLoader(warehouse, SALT).load_file(write_events([event("a", timestamp="2026-03-10T00:00:00Z"), event("b")]))
    insert_raw(warehouse, event_id="late", event_time=dt.datetime(2026, 3, 10, 23, 59, 59, 999999))  # the last microsecond
    params = {"start": DAY, "end": NEXT}
    expectations = raw_events_expectations(DAY, NEXT)
    assert unexpected_rows_in_warehouse(warehouse, RAW_EVENTS_ROWS_SQL, params, expectations) == (3, False)
    frame = raw_events_frame(warehouse, DAY, NEXT)
    by_gx = check_result(validate(frame, "raw_events", expectations), len(frame), check_name=RAW_EVENTS_CHECK)
    counted = raw_events_check(warehouse, DAY, NEXT)
    assert by_gx.passed and counted.passed
    assert counted.metadata == by_gx.metadata and counted.check_name == by_gx.check_name

    # each kind of unexpected row is counted, as GX finds it: a repeated id, a NULL, a value
    # not in the set, a time out of range (the table's constraints refuse some, so the row
    # is added to the checked rows by the query)
    in_day = int((dt.datetime(2026, 3, 10, 12) - dt.datetime(1970, 1, 1)) / dt.timedelta(microseconds=1))
    with_row = RAW_EVENTS_ROWS_SQL + (
        " UNION ALL SELECT CAST(:id AS VARCHAR), 'search', CAST('2026-03-10 12:00:00' AS TIMESTAMP), 's', "
        "CAST(:source AS VARCHAR), CAST(:us AS BIGINT)"
    )
    for bad in ({"id": "a", "source": "api", "us": in_day}, {"id": "n", "source": None, "us": in_day},
                {"id": "u", "source": "fax", "us": in_day}, {"id": "t", "source": "api", "us": in_day - 86_400_000_000}):
        assert unexpected_rows_in_warehouse(warehouse, with_row, {**params, **bad}, expectations) == (4, True), bad
        by_gx = validate(warehouse.frame(with_row, {**params, **bad}), "raw_events", raw_events_expectations(DAY, NEXT))
        assert not by_gx.success, bad
    # an option the count does not translate (mostly): GX decides
    assert unexpected_rows_in_warehouse(
        warehouse, RAW_EVENTS_ROWS_SQL, params, [gx.expectations.ExpectColumnValuesToNotBeNull(column="source", mostly=0.5)]
    ) is None


def test_kpi_rows_check(warehouse):
    good = [Metric("search.click_through_rate", 0.4, DAY), Metric("search.queries", 120.0, DAY)]
    replace_daily_metrics(warehouse, "asset_a", DAY, NEXT, good)
    assert kpi_rows_check(warehouse, "asset_a", DAY, NEXT).passed

    bad = [
        Metric("search.click_through_rate", 1.5, DAY),  # a proportion above 1
        Metric("retrieval.ndcg_at_10", -0.1, DAY),  # below 0
        Metric("search.queries", 1500.0, DAY),  # not a proportion: fine
    ]
    replace_daily_metrics(warehouse, "asset_b", DAY, NEXT, bad)
    result = kpi_rows_check(warehouse, "asset_b", DAY, NEXT)
    assert not result.passed
    assert meta(result, "expect_column_values_to_be_between(proportion_value) unexpected_count") == 2

    # the same metric, dimensions and bucket twice
    with warehouse.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO kpi_metrics (metric_name, metric_value, dimensions, \"timestamp\", aggregation_level, "
                "created_at, source_asset) SELECT metric_name, metric_value, dimensions, \"timestamp\", aggregation_level, "
                "created_at, source_asset FROM kpi_metrics WHERE source_asset = 'asset_a'"
            )
        )
    duplicated = kpi_rows_check(warehouse, "asset_a", DAY, NEXT)
    assert not duplicated.passed
    assert "expect_compound_columns_to_be_unique" in meta(duplicated, "failed_expectations")


def test_catalog_check_warns_below_the_mostly_threshold(warehouse, tmp_path):
    rows = ["product_id,title,description,brand,category,price"]
    rows += [f"P{i},Title {i},Desc,Brand,Cat,{i + 1}" for i in range(9)]
    rows += ["P9,Title 9,,Brand,Cat,3"]  # one missing description in ten: 90% >= 80%
    path = tmp_path / "catalog.csv"
    path.write_text("\n".join(rows) + "\n")
    load_catalog(warehouse, path)
    assert products_check_result(warehouse).passed

    rows = rows[:1] + [f"P{i},Title {i},  ,Brand,Cat,0" for i in range(10)]  # blank descriptions, zero prices
    path.write_text("\n".join(rows) + "\n")
    load_catalog(warehouse, path)
    result = products_check_result(warehouse)
    assert not result.passed and result.severity.value == "WARN"
    assert meta(result, "expect_column_values_to_not_be_null(description) unexpected_count") == 10
    assert "expect_column_values_to_be_between(price)" in meta(result, "failed_expectations")
