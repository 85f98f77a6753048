"""Catalog snapshots and relevance judgments: parsing, bad rows with line numbers, replacement."""

from __future__ import annotations

import json

import pytest

from kpi_pipelines.ingestion.catalog import CatalogError, load_catalog, load_judgments, parse_price


@pytest.mark.parametrize(
    "text,price",
    [("19.99", 19.99), ("$19.99", 19.99), ("19,99", 19.99), ("19.99 USD", 19.99), (" € 5 ", 5.0),
     ("", None), ("call us", None), (None, None), ("1.2.3", None)],
)
def test_prices_written_as_text(text, price):
    assert parse_price(text) == price


def test_catalog_csv_keeps_raw_values_and_replaces_the_previous_snapshot(warehouse, tmp_path):
    first = tmp_path / "catalog.csv"
    first.write_text(
        "product_id,title,description,brand,category,price,currency,color\n"
        "P1,Red Shoes,Nice shoes,Nike,Shoes,$19.99,USD,red\n"
        'P2,"  ",,nike ,shoes,"19,99",usd,\n'
        "P3,Thing,A thing,Acme,Tools,call us,EUR,\n"
    )
    result = load_catalog(warehouse, first)
    assert (result.loaded, result.problems) == (3, [])
    rows = {r[0]: r[1:] for r in warehouse.query("SELECT product_id, title, description, price, price_raw, currency FROM products")}
    assert rows["P1"] == ("Red Shoes", "Nice shoes", 19.99, "$19.99", "USD")
    assert rows["P2"][0] == "  " and rows["P2"][1] is None and rows["P2"][2] == 19.99
    assert rows["P3"][2] is None and rows["P3"][3] == "call us"
    attributes = warehouse.scalar("SELECT attributes FROM products WHERE product_id = 'P1'")
    assert (json.loads(attributes) if isinstance(attributes, str) else attributes) == {"color": "red"}

    second = tmp_path / "catalog2.jsonl"
    second.write_text(json.dumps({"product_id": "P9", "title": "Only", "price": 3}) + "\n")
    assert load_catalog(warehouse, second).loaded == 1
    assert [r[0] for r in warehouse.query("SELECT product_id FROM products")] == ["P9"]


def test_bad_catalog_rows_are_reported_by_line_and_nothing_is_loaded(warehouse, tmp_path):
    load_catalog(warehouse, _write(tmp_path / "ok.csv", "product_id,title\nP0,kept\n"))
    bad = _write(
        tmp_path / "bad.csv",
        "product_id,title,price\nP1,a,1\n,missing id,2\nP1,again,3\nP4,too,many,columns\nP5,fine,4\n",
    )
    result = load_catalog(warehouse, bad)
    assert [(p.line, p.reason) for p in result.problems] == [
        (3, "product_id: required"),
        (4, "product_id: 'P1' appears twice in the file"),
        (5, "expected 3 columns as in the header, found 4"),
    ]
    assert [r[0] for r in warehouse.query("SELECT product_id FROM products")] == ["P0"]
    allowed = load_catalog(warehouse, bad, allow_rejects=True)
    assert allowed.loaded == 2
    assert sorted(r[0] for r in warehouse.query("SELECT product_id FROM products")) == ["P1", "P5"]


def test_catalog_file_problems(warehouse, tmp_path):
    with pytest.raises(CatalogError, match="no such file"):
        load_catalog(warehouse, tmp_path / "absent.csv")
    with pytest.raises(CatalogError, match=r"unsupported file type '\.xlsx'"):
        load_catalog(warehouse, _write(tmp_path / "c.xlsx", "x"))
    with pytest.raises(CatalogError, match="line 1: header lacks column"):
        load_catalog(warehouse, _write(tmp_path / "nohead.csv", "id,title\n1,a\n"))
    jsonl = load_catalog(warehouse, _write(tmp_path / "c.jsonl", '{"product_id": "P1"}\nnot json\n[1]\n'))
    assert [(p.line, p.reason.split(" (")[0]) for p in jsonl.problems] == [(2, "invalid JSON"), (3, "not a JSON object")]


def test_judgments_normalize_queries_and_reject_bad_rows(warehouse, tmp_path):
    good = _write(tmp_path / "j.csv", "query,product_id,relevance\n  Red\tShoes ,P1,2\nred shoes,P2,0\nblue hat,P1,1\n")
    assert load_judgments(warehouse, good).loaded == 3
    rows = sorted(warehouse.query("SELECT query_norm, product_id, relevance FROM relevance_judgments"))
    assert rows == [("blue hat", "P1", 1), ("red shoes", "P1", 2), ("red shoes", "P2", 0)]
    bad = _write(
        tmp_path / "bad.csv",
        "query,product_id,relevance\nq,P1,x\n,P2,1\nq,,1\nq,P3,-1\nRED SHOES,P1,1\nred  shoes,P1,2\n",
    )
    result = load_judgments(warehouse, bad)
    assert [(p.line, p.reason) for p in result.problems] == [
        (2, "relevance: expected an integer >= 0, got 'x'"),
        (3, "query: required"),
        (4, "product_id: required"),
        (5, "relevance: expected an integer >= 0, got '-1'"),
        (7, "query 'red  shoes' judges 'P1' twice"),
    ]
    assert warehouse.scalar("SELECT count(*) FROM relevance_judgments") == 3  # unchanged


def _write(path, text):
    path.write_text(text)
    return path
