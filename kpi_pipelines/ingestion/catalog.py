"""Catalog snapshots (`products`) and relevance judgments (`relevance_judgments`).

Both are small reference tables loaded whole: a snapshot replaces the table in one
transaction. Rows are checked line by line so that a bad row is reported with its line
number and reason; by default one bad row stops the load and nothing is written
(`allow_rejects=True` loads the good rows and still reports the bad ones).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlalchemy as sa

from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines.warehouse.expressions import normalized_query_sql

CATALOG_FIELDS = ("product_id", "title", "description", "brand", "category", "price", "currency")
JUDGMENT_FIELDS = ("query", "product_id", "relevance")
# A price written as text: optional symbol, digits with '.' or ',' decimals, optional code.
PRICE_TEXT = re.compile(r"^\s*[$€£]?\s*(\d{1,9}(?:[.,]\d{1,4})?)\s*(?:[A-Za-z]{3})?\s*$")


class CatalogError(Exception):
    """The file cannot be loaded; the message names the file, line and field."""


@dataclass
class RowProblem:
    line: int
    reason: str


@dataclass
class ReferenceLoadResult:
    path: str
    loaded: int = 0
    problems: list[RowProblem] = field(default_factory=list)


def parse_price(text: str | None) -> float | None:
    """The number in a price written as text ('19.99', '$19.99', '19,99', '19.99 USD')."""
    if text is None:
        return None
    match = PRICE_TEXT.match(text)
    return float(match.group(1).replace(",", ".")) if match else None


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, row or None, problem or None) for a CSV (header row) or JSONL file."""
    opener = path.open
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        with opener(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    yield number, None, "empty line"
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    yield number, None, f"invalid JSON ({error.msg})"
                    continue
                if not isinstance(row, dict):
                    yield number, None, "not a JSON object"
                    continue
                yield number, row, None
        return
    with opener(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise CatalogError(f"{path}: empty file, expected a header row")
        header = [name.strip() for name in header]
        for row in reader:
            number = reader.line_num
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield number, None, f"expected {len(header)} columns as in the header, found {len(row)}"
                continue
            yield number, dict(zip(header, row)), None


def _check_header(path: Path, required: tuple[str, ...]) -> None:
    if path.suffix.lower() not in (".csv", ".jsonl", ".ndjson", ".json"):
        raise CatalogError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .jsonl")
    if not path.is_file():
        raise CatalogError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), None)
        missing = [name for name in required if name not in [h.strip() for h in header or []]]
        if missing:
            raise CatalogError(f"{path}: line 1: header lacks column(s) {', '.join(missing)}")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)


# Builds one row for the table from a file row, or returns the reason the row is bad.
RowBuilder = Callable[[dict[str, Any]], "list[Any] | str"]


def _load_reference(
    warehouse: Warehouse,
    path: str | Path,
    required: tuple[str, ...],
    table: str,
    columns: str,
    build: RowBuilder,
    allow_rejects: bool,
    derived: dict[str, str] | None = None,
) -> ReferenceLoadResult:
    """Check every row of `path`, then (unless a row is bad and rejects are not allowed)
    replace `table` with the good rows."""
    path = Path(path)
    _check_header(path, required)
    result = ReferenceLoadResult(str(path))
    out = io.StringIO()
    writer = csv.writer(out)
    try:
        for line, row, problem in _rows(path):
            built = problem or build(row or {})
            if isinstance(built, str):
                result.problems.append(RowProblem(line, built))
                continue
            writer.writerow(built)
            result.loaded += 1
    except UnicodeDecodeError as error:
        raise CatalogError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not result.problems or allow_rejects:
        _replace_table(warehouse, table, columns, out.getvalue(), derived)
    return result


def load_catalog(warehouse: Warehouse, path: str | Path, allow_rejects: bool = False) -> ReferenceLoadResult:
    """Replace `products` with the snapshot in `path` (CSV with a header, or JSONL)."""
    seen: set[str] = set()
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(sep=" ")

    def build(row: dict[str, Any]) -> list[Any] | str:
        product_id = (_text(row.get("product_id")) or "").strip()
        if not product_id:
            return "product_id: required"
        if product_id in seen:
            return f"product_id: {product_id!r} appears twice in the file"
        seen.add(product_id)
        price_raw = _text(row.get("price"))
        price = row["price"] if isinstance(row.get("price"), (int, float)) else parse_price(price_raw)
        attributes = {k: v for k, v in row.items() if k not in CATALOG_FIELDS and v not in (None, "")}
        return [
            product_id,
            *(_text(row.get(name)) for name in ("title", "description", "brand", "category")),
            "" if price is None else repr(float(price)),
            price_raw,
            _text(row.get("currency")),
            json.dumps(attributes, ensure_ascii=False),
            now,
        ]

    columns = "product_id, title, description, brand, category, price, price_raw, currency, attributes, loaded_at"
    return _load_reference(warehouse, path, ("product_id",), "products", columns, build, allow_rejects)


def load_judgments(warehouse: Warehouse, path: str | Path, allow_rejects: bool = False) -> ReferenceLoadResult:
    """Replace `relevance_judgments` with `path`: CSV with header `query,product_id,relevance`."""
    seen: set[tuple[str, str]] = set()

    def build(row: dict[str, Any]) -> list[Any] | str:
        query = _text(row.get("query")) or ""
        product_id = (_text(row.get("product_id")) or "").strip()
        relevance = (_text(row.get("relevance")) or "").strip()
        if not query.strip():
            return "query: required"
        if not product_id:
            return "product_id: required"
        if not re.fullmatch(r"\d+", relevance):
            return f"relevance: expected an integer >= 0, got {relevance!r}"
        # Python's split() collapses at least what the SQL normalization does, so no two rows
        # kept here can collide on the table's (query_norm, product_id) key.
        key = (" ".join(query.lower().split()), product_id)
        if key in seen:
            return f"query {query!r} judges {product_id!r} twice"
        seen.add(key)
        return [query, product_id, int(relevance)]

    return _load_reference(
        warehouse, path, JUDGMENT_FIELDS, "relevance_judgments", "query, product_id, relevance", build,
        allow_rejects, derived={"query_norm": normalized_query_sql("query")},
    )


def _replace_table(
    warehouse: Warehouse, table: str, columns: str, csv_text: str, derived: dict[str, str] | None = None
) -> None:
    """Replace `table`'s rows with the CSV rows in one transaction (bulk, not row by row)."""
    derived = derived or {}
    target = columns + "".join(f", {name}" for name in derived)
    source = columns + "".join(f", {expression}" for expression in derived.values())
    with warehouse.begin() as connection:
        connection.execute(sa.text(f"DELETE FROM {table}"))
        raw = connection.connection.driver_connection
        if warehouse.dialect == "duckdb":
            with tempfile.NamedTemporaryFile("w", suffix=".csv", encoding="utf-8") as handle:
                handle.write(csv_text)
                handle.flush()
                types = ", ".join(f"'{name.strip()}': 'VARCHAR'" for name in columns.split(","))
                raw.execute(
                    f"INSERT INTO {table} ({target}) SELECT {source} FROM read_csv(?, header = false, "
                    f"columns = {{{types}}}, quote = '\"', escape = '\"', auto_detect = false)",
                    [handle.name],
                )
        else:
            with raw.cursor() as cursor:
                cursor.execute(f"CREATE TEMP TABLE kpi_copy ({', '.join(f'{c.strip()} TEXT' for c in columns.split(','))}) ON COMMIT DROP")
                with cursor.copy(f"COPY kpi_copy ({columns}) FROM STDIN (FORMAT csv)") as copy:
                    copy.write(csv_text)
                casts = ", ".join(_pg_cast(c.strip()) for c in columns.split(","))
                derived_sql = "".join(f", {expression}" for expression in derived.values())
                cursor.execute(f"INSERT INTO {table} ({target}) SELECT {casts}{derived_sql} FROM kpi_copy")


def _pg_cast(column: str) -> str:
    types = {"price": "DOUBLE PRECISION", "attributes": "JSONB", "loaded_at": "TIMESTAMP", "relevance": "INTEGER"}
    return f"CAST({column} AS {types[column]})" if column in types else column
