"""`kpi serve` over real HTTP (uvicorn in a child process on loopback), on DuckDB and
PostgreSQL: the collector (counts, rejects by index, dedup, durability through the landing
directory while a writer holds DuckDB), authentication, rate limits, size limits, input
validation, reads and exports, webhooks, health."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time

import duckdb
import httpx
import pytest
import sqlalchemy as sa

from kpi_pipelines.api.ingest import BatchValidator, BodyError, body_lines, file_bytes
from kpi_pipelines.api.read import (
    Snapshot,
    SnapshotReader,
    WarehouseReader,
    active_alerts,
)
from kpi_pipelines.api.security import (
    KeyRing,
    RateLimiter,
    SignatureError,
    presented_key,
    sign,
    verify_signature,
)
from kpi_pipelines.ingestion.loader import EventLoader
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines_tests.conftest import SALT, all_table_text, event
from kpi_pipelines_tests.test_api_helpers import (  # noqa: F401  (start_server is a fixture)
    KEY,
    OTHER_KEY,
    REPO,
    SEED_START,
    WEBHOOK_SECRET,
    ingest_landing,
    landing_dir,
    seed_alerts,
    seed_metrics,
    seed_value,
    start_server,
)

NDJSON = {"Content-Type": "application/x-ndjson"}


def stored_ids(warehouse: Warehouse) -> list[str]:
    return sorted(row[0] for row in warehouse.query("SELECT event_id FROM raw_events"))


def settle(warehouse: Warehouse, server) -> None:
    """DuckDB: load what the API landed, as the landing sensor's run would. PostgreSQL: the
    API stored it already."""
    if warehouse.dialect == "duckdb":
        ingest_landing(warehouse, landing_dir(server))


# --------------------------------------------------------------------------- collector


@pytest.mark.slow
def test_events_counts_rejects_by_index_and_stores_through_the_loader(warehouse, start_server):
    server = start_server(warehouse)
    batch = [
        event("e1", user_id="alice@example.com"),
        {"id": "e2", "type": "search"},  # most fields missing
        event("e1"),  # duplicate inside the request
        5,  # not an object
        event("e3", session_id=""),
        event("e4", type_="business", action="order", order_id="o1", revenue=10.5, currency="USD", product_ids=["P1"]),
        event("e5"),
    ]
    batch[6]["metadata"]["query"] = "call me at +1 415-555-0100 or bob@example.org"
    with server.client() as client:
        response = client.post("/api/kpi/events", json=batch)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 3 and body["duplicates"] == 1
    assert [r["index"] for r in body["rejected"]] == [1, 3, 4]
    assert "session_id" in body["rejected"][0]["reason"] and "timestamp" in body["rejected"][0]["reason"]
    assert "object" in body["rejected"][1]["reason"]
    assert body["rejected"][2]["reason"].startswith("session_id")

    settle(warehouse, server)
    assert stored_ids(warehouse) == ["e1", "e4", "e5"]
    rejected = warehouse.query("SELECT line_no, reason FROM rejected_events ORDER BY line_no")
    assert [(line - 1, reason) for line, reason in rejected] == [(r["index"], r["reason"]) for r in body["rejected"]]
    text = all_table_text(warehouse)  # pseudonymized and masked, as `kpi ingest` stores them
    assert "alice@example.com" not in text and "bob@example.org" not in text and "415-555-0100" not in text
    order = warehouse.query("SELECT event_type, action, source FROM raw_events WHERE event_id = 'e4'")
    assert [tuple(row) for row in order] == [("business", "order", "api")]


@pytest.mark.slow
def test_ndjson_lines_are_indexed_as_sent(warehouse, start_server):
    server = start_server(warehouse)
    lines = [json.dumps(event("n1")), "{not json", "", json.dumps(event("n2")), json.dumps(event("n1"))]
    with server.client() as client:
        response = client.post("/api/kpi/events", content="\r\n".join(lines) + "\n", headers=NDJSON)
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (2, 1)
    assert [(r["index"], r["reason"]) for r in body["rejected"]] == [(1, "invalid JSON: the line does not parse"), (2, "empty line")]
    settle(warehouse, server)
    assert stored_ids(warehouse) == ["n1", "n2"]


def test_ids_stored_by_earlier_requests_are_not_stored_again(warehouse, start_server):
    """PostgreSQL answers with the real count; DuckDB reports duplicates within the request
    only, and the loader skips the stored ids when the landing file is loaded."""
    server = start_server(warehouse)
    batch = [event(f"r{i}") for i in range(5)]
    with server.client() as client:
        first = client.post("/api/kpi/events", json=batch).json()
        second = client.post("/api/kpi/events", json=batch + [event("r5")]).json()
    assert first["accepted"] == 5
    if warehouse.dialect == "postgresql":
        assert (second["accepted"], second["duplicates"]) == (1, 5)
    else:
        assert (second["accepted"], second["duplicates"]) == (6, 0)
    settle(warehouse, server)
    assert stored_ids(warehouse) == [f"r{i}" for i in range(6)]


def test_empty_list_is_accepted_and_stores_nothing(duckdb_warehouse, start_server):
    server = start_server(duckdb_warehouse)
    with server.client() as client:
        response = client.post("/api/kpi/events", json=[])
    assert response.status_code == 202
    assert response.json() == {"accepted": 0, "duplicates": 0, "rejected": []}
    assert not list(landing_dir(server).glob("*.ndjson"))


def test_landing_files_are_complete_hidden_until_renamed_and_private(duckdb_warehouse, start_server, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    crashed = landing / ".api-20260101T000000000000Z-0123456789abcdef.ndjson.tmp"  # a crash's leftover
    crashed.write_text("{}\n")
    os.utime(crashed, (time.time() - 7200, time.time() - 7200))
    server = start_server(duckdb_warehouse, KPI_LANDING_DIR=str(landing))
    with server.client() as client:
        response = client.post("/api/kpi/events", json=[event("f1"), event("f2")])
    name = response.headers["X-KPI-Stored-As"]
    files = [p for p in landing_dir(server).iterdir() if not p.name.startswith(".")]
    assert [p.name for p in files] == [name] and name.endswith(".ndjson")
    assert files[0].read_text().splitlines() == [json.dumps(event("f1"), separators=(",", ":")), json.dumps(event("f2"), separators=(",", ":"))]
    assert not [p for p in landing_dir(server).iterdir() if p.name.endswith(".tmp")]  # the leftover swept too
    assert files[0].stat().st_mode & 0o007 == 0  # no access for others: raw user ids until loaded


def test_batches_validated_together_count_as_each_alone_and_as_the_loader(tmp_path, duckdb_warehouse, write_events):
    """The micro-batching validator gives each request exactly what the loader finds in
    that request's file alone."""
    requests = [
        [event("a"), event("a"), {"id": "x"}],
        [event("a"), "not json", event("b", timestamp="2026-03-10T12:00:00")],
        [],
        [event("c"), event("d"), event("c"), event("c", source="nowhere")],
    ]
    as_lines = [[line if isinstance(line, str) else json.dumps(line) for line in r] for r in requests]
    validator = BatchValidator(SALT)
    try:
        together = validator._validate([[line.encode() for line in r] for r in as_lines])
        alone = [validator._validate([[line.encode() for line in r]])[0] for r in as_lines]
    finally:
        validator.close()
    assert [t.as_json() for t in together] == [a.as_json() for a in alone]
    for lines, result in zip(as_lines, together):
        if not lines:
            continue
        schema_free = Warehouse(f"duckdb:///{tmp_path / f'w{len(lines)}-{id(lines)}.duckdb'}")
        loaded = EventLoader(schema_free, SALT).load_file(write_events(lines))
        reasons = schema_free.query("SELECT line_no - 1, reason FROM rejected_events ORDER BY line_no")
        schema_free.dispose()
        assert (loaded.accepted, loaded.duplicates, loaded.rejected) == (result.accepted, result.duplicates, len(result.rejected))
        assert [{"index": i, "reason": r} for i, r in reasons] == result.rejected


def test_body_lines_edge_cases():
    assert body_lines(b"\xef\xbb\xbf{}\r\n{}\r{}", "application/x-ndjson; charset=utf-8") == [b"{}", b"{}", b"{}"]
    assert body_lines(b'[{"a": 1}, 2, null]', "application/json") == [b'{"a":1}', b"2", b"null"]
    big = [{"n": 1 << 70}]  # beyond 64 bits: carried as a double, as the loader's JSON reader does
    assert json.loads(body_lines(json.dumps(big).encode(), "application/json")[0])["n"] == pytest.approx(1 << 70)
    for body, kind, status in [
        (b"[1]\x00", "application/json", 422),  # not JSON; in NDJSON the loader rejects the line alone
        (b"\xff", "application/x-ndjson", 422),
        (b"{}", "application/json", 422),
        (b"[NaN]", "application/json", 422),
        (b"", "application/json", 422),
        (b"[]", "text/plain", 415),
        (b"[" + b",".join([b"1"] * 10_001) + b"]", "application/json", 413),
        (b"{}\n" * 10_001, "application/x-ndjson", 413),
    ]:
        with pytest.raises(BodyError) as error:
            body_lines(body, kind)
        assert error.value.status == status, body[:20]
    assert file_bytes([b"a", b""]) == b"a\n\n"


def test_event_and_body_limits(duckdb_warehouse, start_server):
    server = start_server(duckdb_warehouse, KPI_API_MAX_BODY_BYTES="4096")
    with server.client() as client:
        too_big = client.post("/api/kpi/events", json=[event(f"b{i}") for i in range(40)])
        assert too_big.status_code == 413 and "4096" in too_big.json()["detail"]

        def chunks():  # no Content-Length: counted while streaming
            for _ in range(10):
                yield b" " * 1000

        streamed = client.post("/api/kpi/events", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        assert client.post("/api/kpi/events", content=b"[]", headers={"Content-Type": "text/csv"}).status_code == 415
        bad = client.post("/api/kpi/events", content=b"[{", headers={"Content-Type": "application/json"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body"]
        not_list = client.post("/api/kpi/events", json={"id": "x"})
        assert not_list.status_code == 422 and "list" in not_list.json()["message"]
    server2 = start_server(duckdb_warehouse, KPI_LANDING_DIR=str(landing_dir(server)))
    with server2.client() as client:
        many = client.post("/api/kpi/events", content=b"{}\n" * 10_001, headers=NDJSON)
        assert many.status_code == 413 and "10000" in many.json()["detail"]
        limit = client.post("/api/kpi/events", json=[event(f"m{i}") for i in range(10_000)])
        assert limit.status_code == 202 and limit.json()["accepted"] == 10_000


# --------------------------------------------------------------------------- security


def test_keys_are_required_everywhere_but_health_and_dashboard_pages(duckdb_warehouse, start_server):
    server = start_server(duckdb_warehouse)
    anonymous = httpx.Client(base_url=server.url, timeout=30)
    paths = ["/api/kpi/metrics", "/api/kpi/alerts", "/api/kpi/business/conversion-rate", "/api/kpi/user/engagement"]
    for path in paths:
        response = anonymous.get(path)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer", path
    assert anonymous.post("/api/kpi/events", json=[event("x")]).status_code == 401
    assert anonymous.get("/api/kpi/metrics", headers={"X-API-Key": "wrong"}).status_code == 401
    assert anonymous.get("/api/kpi/metrics", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert anonymous.get("/api/kpi/metrics", headers={"Authorization": f"Bearer {KEY}x"}).status_code == 401
    assert anonymous.get("/api/kpi/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert anonymous.get("/api/kpi/metrics", headers={"X-API-Key": OTHER_KEY}).status_code == 200
    assert anonymous.get("/healthz").status_code == 200
    page = anonymous.get("/dashboards/executive")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert anonymous.get("/static/dashboard.js").status_code == 200
    assert anonymous.get("/openapi.json").status_code == 200
    assert not list(landing_dir(server).glob("*.ndjson"))  # nothing written without a key
    anonymous.close()


def test_without_configured_keys_the_api_refuses_reads_and_writes(duckdb_warehouse, start_server):
    server = start_server(duckdb_warehouse, KPI_API_KEYS="")
    with server.client(key="anything") as client:
        for response in (client.get("/api/kpi/metrics"), client.post("/api/kpi/events", json=[event("x")])):
            assert response.status_code == 401 and "KPI_API_KEYS" in response.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_rate_limit_per_key_answers_429_with_retry_after(duckdb_warehouse, start_server):
    server = start_server(duckdb_warehouse, KPI_API_RATE_PER_SECOND="1", KPI_API_RATE_BURST="3")
    with server.client() as client, server.client(key=OTHER_KEY) as other:
        statuses = [client.get("/api/kpi/alerts").status_code for _ in range(4)]
        assert statuses[:3] == [200, 200, 200] and statuses[3] == 429
        limited = client.post("/api/kpi/events", json=[event("late")])
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert other.get("/api/kpi/alerts").status_code == 200  # its own bucket
        time.sleep(int(limited.headers["Retry-After"]) + 0.1)
        assert client.get("/api/kpi/alerts").status_code == 200


def test_failed_authentication_is_rate_limited_by_address(duckdb_warehouse, start_server):
    server = start_server(duckdb_warehouse)
    with server.client(key="guess") as client:
        statuses = [client.get("/api/kpi/alerts").status_code for _ in range(40)]
    assert statuses[0] == 401 and statuses[-1] == 429


def test_security_units():
    ring = KeyRing(("k1", "k2"))
    assert ring.match("k2") == 1 and ring.match("k3") is None and ring.match(None) is None and not KeyRing(())
    assert presented_key("Bearer  k1 ", None) == "k1" and presented_key("Basic k1", "k2") == "k2"
    limiter = RateLimiter(rate=2, burst=2)
    assert [limiter.take("a", now=0.0) for _ in range(3)] == [0, 0, 1]
    assert limiter.take("a", now=0.5) == 0  # one token back after half a second at 2/s
    body = b'{"order_id": "o1"}'
    verify_signature("s", body, sign("s", body), None)
    verify_signature("s", body, sign("s", body, "1000"), "1000", now=1100)
    for args in [
        ("", body, sign("s", body), None),
        ("s", body, None, None),
        ("s", body, sign("t", body), None),
        ("s", body + b" ", sign("s", body), None),
        ("s", body, sign("s", body, "1000"), "1000"),  # stale (now is far away)
        ("s", body, sign("s", body), "1000"),  # timestamp added to a body-only signature
        ("s", body, sign("s", body, "x"), "x"),
    ]:
        with pytest.raises(SignatureError):
            verify_signature(*args)


# --------------------------------------------------------------------------- webhooks


def test_business_webhook_signed_orders_become_order_events(warehouse, start_server):
    server = start_server(warehouse)
    orders = [
        {"order_id": "o-1", "session_id": "s-9", "user_id": "carol@example.com", "timestamp": "2026-03-10T10:00:00+01:00",
         "revenue": 42.5, "currency": "EUR", "product_ids": ["P1", "P2"], "channel": "shop"},
        {"order_id": "o-2", "timestamp": "2026-03-10T10:00:00Z", "revenue": 5, "currency": "EUR", "product_ids": []},
    ]
    body = json.dumps(orders).encode()
    stamp = str(int(time.time()))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        post = lambda content, **headers: client.post(
            "/api/kpi/webhooks/business", content=content, headers={"Content-Type": "application/json", **headers}
        )
        assert post(body).status_code == 401
        assert post(body, **{"X-KPI-Signature": sign("wrong", body)}).status_code == 401
        stale = str(int(time.time()) - 3600)
        assert post(body, **{"X-KPI-Signature": sign(WEBHOOK_SECRET, body, stale), "X-KPI-Timestamp": stale}).status_code == 401
        response = post(body, **{"X-KPI-Signature": sign(WEBHOOK_SECRET, body, stamp), "X-KPI-Timestamp": stamp})
        assert response.status_code == 202, response.text
        result = response.json()
        assert result["accepted"] == 1 and [r["index"] for r in result["rejected"]] == [1]
        assert "session_id" in result["rejected"][0]["reason"]
        replay = post(body, **{"X-KPI-Signature": sign(WEBHOOK_SECRET, body)})  # body-only signature
        assert replay.status_code == 202
    settle(warehouse, server)
    rows = warehouse.query("SELECT event_id, event_type, action, source, session_id, metadata FROM raw_events")
    assert len(rows) == 1
    event_id, kind, action, source, session, metadata = rows[0]
    assert (event_id, kind, action, source, session) == ("order:o-1", "business", "order", "external", "s-9")
    metadata = metadata if isinstance(metadata, dict) else json.loads(metadata)
    assert metadata["revenue"] == 42.5 and metadata["channel"] == "shop" and metadata["order_id"] == "o-1"
    assert "carol@example.com" not in all_table_text(warehouse)


def test_webhook_is_refused_without_a_secret(duckdb_warehouse, start_server):
    server = start_server(duckdb_warehouse, KPI_WEBHOOK_SECRET="")
    body = b'{"order_id": "o"}'
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post(
            "/api/kpi/webhooks/business", content=body, headers={"X-KPI-Signature": sign("", body), "Content-Type": "application/json"}
        )
    assert response.status_code == 401 and "KPI_WEBHOOK_SECRET" in response.json()["detail"]


# --------------------------------------------------------------------------- reading


def test_metrics_filters_series_and_exports(warehouse, start_server):
    seed_metrics(warehouse)
    server = start_server(warehouse)
    with server.client() as client:
        params = {"start": "2026-01-10", "end": "2026-01-19", "name": "business.*", "dimensions": "{}"}
        body = client.get("/api/kpi/metrics", params=params).json()
        assert body["relation"] == "kpi_metrics_all" and body["count"] == 10 * 7 and not body["truncated"]
        assert {row["metric_name"] for row in body["metrics"]} == {n for n in _seeded() if n.startswith("business.")}
        first = next(r for r in body["metrics"] if r["metric_name"] == "business.conversion_rate")
        assert first == {
            "metric_name": "business.conversion_rate",
            "metric_value": seed_value("business.conversion_rate", 9),
            "dimensions": {},
            "timestamp": "2026-01-10T00:00:00Z",
            "aggregation_level": "day",
        }
        by_category = client.get(
            "/api/kpi/metrics", params=[("start", "2026-01-01"), ("end", "2026-01-03"), ("name", "data_quality.completeness"), ("dim.category", "shoes")]
        ).json()
        assert [(r["dimensions"], r["metric_value"]) for r in by_category["metrics"]] == [({"category": "shoes"}, 0.9)] * 3
        exact = client.get("/api/kpi/metrics", params={"start": "2026-01-01", "end": "2026-01-01", "name": "data_quality.*",
                                                       "dimensions": '{"category": "bags"}'}).json()
        assert [r["metric_value"] for r in exact["metrics"]] == [0.7]
        limited = client.get("/api/kpi/metrics", params={"start": "2026-01-01", "end": "2026-02-28", "limit": 5})
        assert limited.json()["truncated"] is True and limited.headers["X-KPI-Truncated"] == "true"

        series = client.get("/api/kpi/business/customer-retention", params={"start": "2026-01-01", "end": "2026-01-05"}).json()
        assert [s["metric_name"] for s in series["series"]] == ["business.retention.day_1", "business.retention.day_7"]
        assert [p["timestamp"][:10] for p in series["series"][0]["points"]] == [f"2026-01-0{d}" for d in range(1, 6)]
        completeness = client.get("/api/kpi/data-quality/completeness", params={"start": "2026-01-01", "end": "2026-01-01"}).json()
        assert {json.dumps(s["dimensions"]) for s in completeness["series"]} == {"{}", '{"category": "shoes"}', '{"category": "bags"}'}
        for path in ["data-quality/normalization", "retrieval/precision-recall", "search/success-rate", "user/engagement",
                     "user/satisfaction", "business/conversion-rate", "business/revenue-metrics"]:
            response = client.get(f"/api/kpi/{path}", params={"start": "2026-01-01", "end": "2026-01-31"})
            assert response.status_code == 200 and response.json()["series"], path

        exported = client.get("/api/kpi/business/conversion-rate", params={"start": "2026-01-01", "end": "2026-01-02", "format": "csv"})
        assert exported.headers["content-type"].startswith("text/csv")
        assert exported.text.splitlines() == [
            "metric_name,metric_value,dimensions,timestamp,aggregation_level",
            f"business.conversion_rate,{seed_value('business.conversion_rate', 0)},{{}},2026-01-01T00:00:00Z,day",
            f"business.conversion_rate,{seed_value('business.conversion_rate', 1)},{{}},2026-01-02T00:00:00Z,day",
        ]
        assert "attachment" in exported.headers["Content-Disposition"]
        as_csv = client.get("/api/kpi/metrics", params={"start": "2026-01-01", "end": "2026-01-01", "format": "csv"})
        assert len(as_csv.text.splitlines()) == 1 + len(_seeded()) + 2


def _seeded() -> list[str]:
    from kpi_pipelines_tests.test_api_helpers import SEED_METRICS

    return list(SEED_METRICS)


def test_bad_query_parameters_answer_422_naming_the_field(duckdb_warehouse, start_server):
    server = start_server(duckdb_warehouse)
    cases = [
        ({"start": "2026-13-01"}, "start"),
        ({"end": "yesterday"}, "end"),
        ({"start": "2026-02-01", "end": "2026-01-01"}, "start"),
        ({"start": "1999-12-31"}, "start"),
        ({"end": "9999-12-31"}, "end"),
        ({"aggregation_level": "year"}, "aggregation_level"),
        ({"dimensions": "[1]"}, "dimensions"),
        ({"dimensions": '{"a": 1}'}, "dimensions"),
        ({"dimensions": '{"bad key": "x"}'}, "dimensions"),
        ({"dim.bad-key": "x"}, "dim.bad-key"),
        ({"name": "x' OR 1=1 --"}, "name"),
        ({"limit": "0"}, "limit"),
        ({"format": "xml"}, "format"),
    ]
    with server.client() as client:
        for params, field in cases:
            response = client.get("/api/kpi/metrics", params=params)
            assert response.status_code == 422, (params, response.text)
            body = response.json()
            assert field in body["message"] and body["detail"][0]["loc"][-1] == field, (params, body)
        injected = client.get("/api/kpi/metrics", params={"dim.category": "' OR '1'='1", "dimensions": '{"x": "\') OR 1=1 --"}'})
        assert injected.status_code == 200 and injected.json()["metrics"] == []


def test_alerts_lists_active_and_suppressed_newest_first(warehouse, start_server):
    empty = SnapshotReader(Snapshot(duckdb.connect(), None, dt.datetime.now(dt.UTC)))
    assert active_alerts(empty) == []  # the table does not exist
    with warehouse.begin() as connection:
        connection.execute(sa.text("DROP TABLE IF EXISTS alert_instances"))
    assert active_alerts(warehouse) == [] and active_alerts(WarehouseReader(warehouse)) == []
    seed_alerts(warehouse)
    assert [a["status"] for a in active_alerts(warehouse)] == ["active", "suppressed"]
    server = start_server(warehouse)
    with server.client() as client:
        body = client.get("/api/kpi/alerts").json()
        assert body["count"] == 2 and [a["rule_name"] for a in body["alerts"]] == ["rule_active", "rule_suppressed"]
        assert body["alerts"][0]["triggered_at"] == "2026-03-01T10:00:00Z"
        csv_text = client.get("/api/kpi/alerts", params={"format": "csv"}).text
        assert csv_text.splitlines()[0].startswith("id,rule_name") and len(csv_text.splitlines()) == 3


def test_health(warehouse, start_server, tmp_path):
    server = start_server(warehouse)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["warehouse"]["ok"] and body["warehouse"]["dialect"] == warehouse.dialect
    if warehouse.dialect == "duckdb":
        not_a_dir = tmp_path / "file"
        not_a_dir.write_text("x")
        broken = start_server(warehouse, KPI_LANDING_DIR=str(not_a_dir))
        with httpx.Client(base_url=broken.url, timeout=30) as client:
            response = client.get("/healthz")
            assert response.status_code == 503 and not response.json()["collector"]["ok"]
            refused = client.post("/api/kpi/events", json=[event("x")], headers={"X-API-Key": KEY})
            assert refused.status_code == 503 and "Retry-After" in refused.headers


# --------------------------------------------------------------------------- DuckDB with a writer


HOLD_LOCK = """
import sys, time, duckdb
connection = duckdb.connect(sys.argv[1])
connection.execute(
    "INSERT INTO kpi_metrics VALUES ('business.conversion_rate', 0.5, '{}', TIMESTAMP '2026-02-15', 'day', now(), 'writer')"
)
print("locked", flush=True)
sys.stdin.readline()
"""


@pytest.mark.slow
def test_duckdb_reads_and_writes_while_another_process_holds_the_write_lock(duckdb_warehouse, start_server):
    seed_metrics(duckdb_warehouse)
    path = str(duckdb_warehouse.duckdb_path)
    warm = start_server(duckdb_warehouse)
    cold = start_server(duckdb_warehouse)
    with warm.client() as client:  # takes a snapshot before the writer arrives
        assert client.get("/api/kpi/business/conversion-rate", params={"start": "2026-01-01", "end": "2026-01-31"}).headers["X-KPI-Snapshot"] == "fresh"
    # the API holds nothing between requests: this process can open the file for writing
    duckdb_warehouse.scalar("SELECT 1")
    duckdb_warehouse.dispose()

    writer = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "locked"
        with warm.client() as client:
            stale = client.get("/api/kpi/business/conversion-rate", params={"start": "2026-01-01", "end": "2026-01-31"})
            assert stale.status_code == 200 and stale.headers["X-KPI-Snapshot"] == "stale"
            assert len(stale.json()["series"][0]["points"]) == 31
            assert client.get("/healthz").json()["warehouse"]["snapshot_stale"] is True
        with cold.client() as client:
            started = time.monotonic()
            locked = client.get("/api/kpi/metrics")
            assert locked.status_code == 503 and int(locked.headers["Retry-After"]) >= 1
            assert "locked" in locked.json()["detail"] and time.monotonic() - started < 10
            assert client.get("/healthz").status_code == 200  # busy, not broken
            accepted = [client.post("/api/kpi/events", json=[event(f"w{b}-{i}") for i in range(50)]) for b in range(5)]
            assert [r.status_code for r in accepted] == [202] * 5
    finally:
        writer.communicate("\n", timeout=30)
    with warm.client() as client:  # the writer is gone: fresh again, with what it wrote
        fresh = client.get("/api/kpi/business/conversion-rate", params={"start": "2026-02-15", "end": "2026-02-15"})
        assert fresh.headers["X-KPI-Snapshot"] == "fresh"
        assert [p["value"] for p in fresh.json()["series"][0]["points"]] == [pytest.approx(seed_value("business.conversion_rate", 45)), 0.5]
    ingest_landing(duckdb_warehouse, landing_dir(cold))
    assert duckdb_warehouse.scalar("SELECT count(*) FROM raw_events") == 250


@pytest.mark.slow
def test_duckdb_no_acknowledged_event_is_lost_while_kpi_materialize_runs(duckdb_warehouse, start_server, tmp_path):
    """A real `kpi materialize` (another process, holding DuckDB's write lock and loading the
    landing directory) runs while clients post: every request is acknowledged, and once the
    landing files are loaded every acknowledged event is in raw_events, once."""
    from kpi_pipelines.ingestion.catalog import load_catalog, load_judgments
    from kpi_pipelines.synthetic import generate

    traffic = generate(tmp_path / "traffic", days=2, sessions=60, seed=3, start=dt.date(2026, 2, 1))
    load_catalog(duckdb_warehouse, traffic.catalog_path)
    load_judgments(duckdb_warehouse, traffic.judgments_path)
    EventLoader(duckdb_warehouse, SALT).load_file(traffic.events_path)
    before = duckdb_warehouse.scalar("SELECT count(*) FROM raw_events")
    server = start_server(duckdb_warehouse)
    env = {**server.env, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    run = subprocess.Popen(
        [sys.executable, "-m", "kpi_pipelines.cli", "materialize", "--start", "2026-02-01", "--end", "2026-02-02"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    acknowledged, statuses, errors = [], [], []

    def post(client_no: int) -> None:
        with server.client() as client:
            batch_no = 0
            while run.poll() is None or batch_no < 3:
                batch = [event(f"c{client_no}-{batch_no}-{i}", timestamp="2026-02-02T08:00:00Z") for i in range(200)]
                try:
                    response = client.post("/api/kpi/events", json=batch)
                except httpx.HTTPError as error:  # pragma: no cover - reported below
                    errors.append(repr(error))
                    return
                statuses.append(response.status_code)
                if response.status_code == 202:
                    acknowledged.append(response.json()["accepted"])
                batch_no += 1
                time.sleep(0.05)

    threads = [threading.Thread(target=post, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    output, _ = run.communicate(timeout=800)
    for thread in threads:
        thread.join(timeout=120)
    assert run.returncode == 0, output[-3000:]
    assert errors == [] and statuses and set(statuses) == {202}
    ingest_landing(duckdb_warehouse, landing_dir(server))  # what the landing sensor's next run does
    assert duckdb_warehouse.scalar("SELECT count(*) FROM raw_events") == before + sum(acknowledged)
    assert duckdb_warehouse.scalar("SELECT count(*) FROM raw_events WHERE event_id LIKE 'c%-%-%'") == sum(acknowledged)


# --------------------------------------------------------------------------- command line


def test_serve_command_arguments():
    from kpi_pipelines.api import add_serve_command

    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--port", "9000", "--workers", "3"])
    assert (args.host, args.port, args.workers) == ("0.0.0.0", 9000, 3)
    defaults = parser.parse_args(["serve"])
    assert (defaults.host, defaults.port, defaults.workers) == ("127.0.0.1", 8000, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--port", "70000"])


def test_serve_refuses_an_in_memory_duckdb_with_one_line(tmp_path):
    env = {**os.environ, "KPI_WAREHOUSE_URL": "duckdb:///:memory:"}
    result = subprocess.run([sys.executable, "-m", "kpi_pipelines.api", "--port", "1"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("kpi: error: KPI_WAREHOUSE_URL")


def test_an_unreachable_postgresql_answers_503_not_500(tmp_path):
    from kpi_pipelines_tests.test_api_helpers import Server

    server = Server({"KPI_WAREHOUSE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none", "KPI_LANDING_DIR": str(tmp_path)})
    try:
        with server.client() as client:
            assert client.get("/healthz").status_code == 503
            for response in (client.get("/api/kpi/metrics"), client.get("/api/kpi/alerts"),
                             client.post("/api/kpi/events", json=[event("x")])):
                assert response.status_code == 503 and "Retry-After" in response.headers, response.text
    finally:
        log = server.stop()
    assert "Traceback" not in log


@pytest.mark.slow
def test_concurrent_requests_share_durable_landing_files_and_a_bad_one_spares_the_others(duckdb_warehouse, start_server, tmp_path):
    from concurrent.futures import Future, ThreadPoolExecutor

    from kpi_pipelines.api.ingest import LandingWriter

    server = start_server(duckdb_warehouse)

    def post(n: int) -> httpx.Response:
        with server.client() as client:
            return client.post("/api/kpi/events", json=[event(f"g{n}-{i}") for i in range(300)])

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(16)))
    assert [r.status_code for r in responses] == [202] * 16
    names = {r.headers["X-KPI-Stored-As"] for r in responses}
    files = {p.name for p in landing_dir(server).glob("*.ndjson")}
    assert names == files and len(files) <= 16
    ingest_landing(duckdb_warehouse, landing_dir(server))
    assert duckdb_warehouse.scalar("SELECT count(*) FROM raw_events") == 16 * 300

    # a batch whose file the reader refuses (bytes that are not UTF-8 got past the checks): each request is
    # retried alone, the good one is stored, the bad one refused, no temporary file is left
    landing = tmp_path / "group"
    validator = BatchValidator(SALT, writer=LandingWriter(landing))
    try:
        good, bad = Future(), Future()
        for future in (good, bad):
            future.submitted = time.perf_counter()
            future.set_running_or_notify_cancel()
        validator._validate_batch([([json.dumps(event("ok")).encode()], good), ([b'{"id": "x\xff"}'], bad)])
        assert good.result().accepted == 1 and (landing / good.result().stored_as).exists()
        with pytest.raises(BodyError):
            bad.result()
        assert sorted(p.name for p in landing.iterdir() if not p.name.startswith(".kpi")) == [good.result().stored_as]
    finally:
        validator.close()


def test_an_invalid_month_is_named_not_reported_as_a_reversed_range(warehouse, start_server):
    """Issue 12, item 14: `start=2026-13-01` is answered with what is wrong with it, on both
    warehouses, by /metrics and the dashboards' endpoints alike."""
    server = start_server(warehouse)
    with server.client() as client:
        for path in ("/api/kpi/metrics", "/api/kpi/business/customer-retention"):
            response = client.get(path, params={"start": "2026-13-01", "end": "2026-01-30"})
            assert response.status_code == 422, response.text
            message = response.json()["message"]
            assert message.startswith("query parameter start:") and "month value is outside expected range" in message, message
            assert "after" not in message
