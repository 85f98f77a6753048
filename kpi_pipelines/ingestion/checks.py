"""Great Expectations checks of the ingested tables, as Dagster asset checks."""

import datetime as dt

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity

from kpi_pipelines.expectations import check_result, passed_result, unexpected_rows_in_warehouse, validate
from kpi_pipelines.ingestion.contract import EVENT_TYPES, SOURCES
from kpi_pipelines.warehouse import Warehouse

REQUIRED_PRODUCT_FIELDS = ("title", "description", "brand", "category", "price")
# The share of products that must have each field: the catalog is known to have gaps
# (that is what the completeness KPIs measure); below these it is broken, not gappy.
PRODUCT_FIELD_MOSTLY = 0.8


def _epoch_us(moment: dt.datetime) -> int:
    return int((moment - dt.datetime(1970, 1, 1)) / dt.timedelta(microseconds=1))


# the rows the raw_events check validates; the time also as integer microseconds since the
# epoch (UTC), which GX compares vectorized (datetimes: one by one)
RAW_EVENTS_ROWS_SQL = (
    "SELECT event_id, event_type, event_time, session_id, source, "
    "CAST(EXTRACT(EPOCH FROM event_time) * 1000000 AS BIGINT) AS event_time_us "
    "FROM raw_events WHERE event_date >= :start AND event_date < :end"
)


def raw_events_frame(warehouse: Warehouse, start: dt.date, end: dt.date) -> pd.DataFrame:
    return warehouse.frame(RAW_EVENTS_ROWS_SQL, {"start": start, "end": end})


def raw_events_expectations(start: dt.date, end: dt.date) -> list:
    import great_expectations as gx

    first = dt.datetime.combine(start, dt.time())
    last = dt.datetime.combine(end, dt.time()) - dt.timedelta(microseconds=1)
    return [
        *(gx.expectations.ExpectColumnValuesToNotBeNull(column=c) for c in ("event_id", "event_type", "event_time", "session_id", "source")),
        gx.expectations.ExpectColumnValuesToBeUnique(column="event_id"),
        gx.expectations.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES)),
        gx.expectations.ExpectColumnValuesToBeInSet(column="source", value_set=list(SOURCES)),
        # the UTC timestamp lies in the partition its event_date puts it in
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="event_time_us", min_value=_epoch_us(first), max_value=_epoch_us(last)
        ),
    ]


RAW_EVENTS_CHECK = "raw_events_valid"


def raw_events_check(warehouse: Warehouse, start: dt.date, end: dt.date) -> AssetCheckResult:
    """GX over the partition's events: ids present and unique, known types and sources,
    timestamps inside the partition. The warehouse counts the unexpected rows first; GX
    validates the rows only when there are some (kpi_pipelines/expectations.py)."""
    expectations = raw_events_expectations(start, end)
    counted = unexpected_rows_in_warehouse(warehouse, RAW_EVENTS_ROWS_SQL, {"start": start, "end": end}, expectations)
    if counted is not None and not counted[1]:
        return passed_result(expectations, counted[0], check_name=RAW_EVENTS_CHECK)
    frame = raw_events_frame(warehouse, start, end)
    return check_result(validate(frame, "raw_events", expectations), len(frame), check_name=RAW_EVENTS_CHECK)


def products_expectations() -> list:
    import great_expectations as gx

    return [
        gx.expectations.ExpectColumnValuesToNotBeNull(column="product_id"),
        gx.expectations.ExpectColumnValuesToBeUnique(column="product_id"),
        *(
            gx.expectations.ExpectColumnValuesToNotBeNull(column=field, mostly=PRODUCT_FIELD_MOSTLY)
            for field in REQUIRED_PRODUCT_FIELDS
        ),
        gx.expectations.ExpectColumnValuesToBeBetween(column="price", min_value=0, strict_min=True, mostly=PRODUCT_FIELD_MOSTLY),
    ]


def products_frame(warehouse: Warehouse) -> pd.DataFrame:
    # blank text counts as absent, as in the completeness KPI
    blank_to_null = ", ".join(f"nullif(trim({c}), '') AS {c}" for c in REQUIRED_PRODUCT_FIELDS if c != "price")
    rows = warehouse.query(f"SELECT product_id, {blank_to_null}, price FROM products")
    return pd.DataFrame(rows, columns=["product_id", *[c for c in REQUIRED_PRODUCT_FIELDS if c != "price"], "price"])


CATALOG_CHECK = "catalog_complete_enough"


def products_check_result(warehouse: Warehouse) -> AssetCheckResult:
    """The catalog as it stands, against `products_expectations` (a warning, not a block:
    gaps are what the completeness KPIs measure)."""
    frame = products_frame(warehouse)
    return check_result(
        validate(frame, "products", products_expectations()), len(frame), AssetCheckSeverity.WARN, CATALOG_CHECK
    )
