"""Hostile requests to a real `kpi serve` on DuckDB and PostgreSQL (issue 11, item 5): lone
surrogates in every string field, JSON nested past the parser's limit, numbers no double
holds, NUL characters in bodies and in every query parameter, a Content-Length shorter than
the body; then Hypothesis sends random JSON-ish bodies to the collector and the webhook and
random query parameters to the read endpoints. Never a 5xx; a body or parameter the service
cannot take is a 4xx naming the problem; an event it can take is stored or rejected with a
reason, and the others of its request are stored (the server's log holds no traceback: the
`start_server` fixture checks it)."""

from __future__ import annotations

import json
import socket
import string
import time
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from kpi_pipelines.api.app import KPI_ENDPOINTS
from kpi_pipelines.api.security import sign
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines_tests.conftest import event
from kpi_pipelines_tests.test_api_helpers import (  # noqa: F401  (start_server is a fixture)
    KEY,
    WEBHOOK_SECRET,
    Server,
    ingest_landing,
    landing_dir,
    seed_metrics,
    start_server,
)

NDJSON = {"Content-Type": "application/x-ndjson"}
JSON = {"Content-Type": "application/json"}
READ_PATHS = ["/api/kpi/metrics", "/api/kpi/alerts"] + [f"/api/kpi/{path}" for path in KPI_ENDPOINTS]
DEEP = 5_000


def stored_ids(warehouse: Warehouse, server: Server) -> set[str]:
    if warehouse.dialect == "duckdb":
        ingest_landing(warehouse, landing_dir(server))
    return {row[0] for row in warehouse.query("SELECT event_id FROM raw_events")}


def raw_event(event_id: str, **fields: str) -> str:
    """An event as JSON text; `fields` replace envelope values by raw JSON text."""
    text = {key: json.dumps(value) for key, value in event(event_id).items()}
    text.update(fields)
    return "{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in text.items()) + "}"


def webhook(client: httpx.Client, body: bytes) -> httpx.Response:
    headers = {**JSON, "X-KPI-Signature": sign(WEBHOOK_SECRET, body)}
    return client.post("/api/kpi/webhooks/business", content=body, headers=headers)


def assert_names(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["message"]
    assert all(word in message for word in words), message


# --------------------------------------------------------------------------- examples


SURROGATE_CASES = {
    "id": {"id": '"\\ud800"'},
    "type": {"type": '"search\\udfff"'},
    "session_id": {"session_id": '"s\\ud800-1"'},
    "user_id": {"user_id": '"\\udc00"'},
    "source": {"source": '"\\ud800"'},
    "metadata string": {"metadata": '{"action":"query","query_id":"q","query":"red \\ud800 shoes","result_ids":[],"response_time_ms":1}'},
    "metadata key": {"metadata": '{"\\ud800":1,"action":"query","query_id":"q","query":"x","result_ids":[],"response_time_ms":1}'},
    "nested list": {"metadata": '{"action":"query","query_id":"q","query":"x","result_ids":["\\ud800"],"response_time_ms":1}'},
}


def test_lone_surrogates_in_any_field_reject_that_event_only(warehouse, start_server):
    server = start_server(warehouse)
    bad = [raw_event(f"bad-{n}", **fields) for n, fields in enumerate(SURROGATE_CASES.values())]
    with server.client() as client:
        # a JSON list: good events around the bad ones; then the same lines as NDJSON
        body = "[" + ",".join([raw_event("good-a"), *bad, raw_event("good-b")]) + "]"
        listed = client.post("/api/kpi/events", content=body.encode(), headers=JSON)
        ndjson = "\n".join([raw_event("good-c"), *bad, raw_event("good-d")]).encode()
        lined = client.post("/api/kpi/events", content=ndjson, headers=NDJSON)
        pair = raw_event("x", id='"good-\\ud83d\\ude00"')
        paired = client.post("/api/kpi/events", content=f"[{pair}]".encode(), headers=JSON)
    for response in (listed, lined):
        assert response.status_code == 202, response.text
        result = response.json()
        assert result["accepted"] == 2
        assert [item["index"] for item in result["rejected"]] == list(range(1, len(bad) + 1))
        assert all(item["reason"] for item in result["rejected"])
    assert paired.status_code == 202 and paired.json()["accepted"] == 1  # a surrogate pair is a character
    assert stored_ids(warehouse, server) == {"good-a", "good-b", "good-c", "good-d", "good-\U0001F600"}


def test_nesting_beyond_the_parser_is_a_422_on_a_list_and_a_reject_on_a_line(warehouse, start_server):
    server = start_server(warehouse)
    deep_list = "[" * DEEP + "]" * DEEP
    deep_object = '{"a":' * DEEP + "1" + "}" * DEEP
    deep_event = raw_event("deep", metadata='{"action":"query","x":' + deep_list + "}")
    with server.client() as client:
        for body in (deep_list, "[" + deep_event + "]", "[" + deep_object + "]"):
            assert_names(client.post("/api/kpi/events", content=body.encode(), headers=JSON), 422, "body", "nested deeper")
        for body in (deep_list, deep_object, '{"order_id":"o","x":' + deep_list + "}"):
            assert_names(webhook(client, body.encode()), 422, "body", "nested deeper")
        # NDJSON: each line on its own, so the deep one is rejected and the other stored
        lined = client.post("/api/kpi/events", content=f"{deep_event}\n{raw_event('shallow')}".encode(), headers=NDJSON)
    assert lined.status_code == 202, lined.text
    assert lined.json()["accepted"] == 1 and [item["index"] for item in lined.json()["rejected"]] == [0]
    assert stored_ids(warehouse, server) == {"shallow"}


def test_numbers_beyond_a_double_and_nul_escapes_are_rejects_not_errors(warehouse, start_server):
    server = start_server(warehouse)
    hostile = [
        raw_event("n1", session_id="1e999"),
        raw_event("n2", session_id="-" + "9" * 5000),
        raw_event("n3", metadata='{"action":"query","query_id":"q","query":"x","result_ids":[],"response_time_ms":1e400}'),
        raw_event("n4", user_id='"a\\u0000b"'),
    ]
    order = {"order_id": "o1", "session_id": "s", "timestamp": "2026-03-10T12:00:00Z", "currency": "EUR", "product_ids": []}
    with server.client() as client:
        response = client.post("/api/kpi/events", content=("[" + ",".join([*hostile, raw_event("fine")]) + "]").encode(), headers=JSON)
        assert response.status_code == 202, response.text
        assert response.json()["accepted"] == 1
        assert [item["index"] for item in response.json()["rejected"]] == [0, 1, 2, 3]
        assert_names(webhook(client, json.dumps({**order, "revenue": 1}).replace('"revenue": 1', '"revenue": 1e999').encode()),
                     422, "body", "1e999 is out of range")
        assert_names(webhook(client, json.dumps({**order, "revenue": 1}).replace('"revenue": 1', '"revenue": ' + "9" * 500).encode()),
                     422, "body", "500 digits is out of range")
        surrogate = webhook(client, json.dumps({**order, "order_id": "o\ud800", "revenue": 1}).encode())
        assert surrogate.status_code == 202 and [item["index"] for item in surrogate.json()["rejected"]] == [0], surrogate.text
    assert stored_ids(warehouse, server) == {"fine"}


def test_a_nul_byte_rejects_its_ndjson_line_only(warehouse, start_server):
    """As in a file: the line holding a raw NUL byte is one rejected event (schemathesis sent
    one in a schema-valid NDJSON body, answered 422 for the whole request)."""
    server = start_server(warehouse)
    lines = [raw_event("before"), raw_event("nul-inside").replace("nul-inside", "nul\x00inside"), "\x00", raw_event("after")]
    with server.client() as client:
        response = client.post("/api/kpi/events", content="\n".join(lines).encode(), headers=NDJSON)
        as_json = client.post("/api/kpi/events", content=f"[{lines[1]}]".encode(), headers=JSON)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 2
    assert [item["index"] for item in response.json()["rejected"]] == [1, 2]
    assert all("NUL byte" in item["reason"] for item in response.json()["rejected"])
    assert_names(as_json, 422, "body", "not valid JSON")  # a raw control character is not JSON
    assert stored_ids(warehouse, server) == {"before", "after"}


def test_nul_in_any_query_parameter_is_a_422_naming_it(warehouse, start_server):
    seed_metrics(warehouse)
    server = start_server(warehouse)
    parameters = ["start", "end", "aggregation_level", "dimensions", "limit", "name", "format", "dim.model"]
    with server.client() as client:
        for path in ("/api/kpi/metrics", "/api/kpi/search/success-rate", "/api/kpi/alerts"):
            for parameter in parameters:
                response = client.get(f"{path}?{parameter}=a%00b")
                assert_names(response, 422, f"query parameter {parameter}", "NUL")
                assert response.json()["detail"][0]["loc"] == ["query", parameter]
        response = client.get("/api/kpi/metrics?dim.a%00b=x")
        assert_names(response, 422, "query parameter dim.a\\x00b", "NUL")
        # the same values without the NUL are answered
        assert client.get("/api/kpi/metrics?dim.model=ab&start=2026-01-01&end=2026-01-31").status_code == 200
        assert client.get("/api/kpi/metrics", params={"dimensions": '{"a": "\\u0000"}'}).status_code == 200  # an escape, not a NUL
        assert_names(client.get("/api/kpi/metrics", params={"dimensions": "[" * 999 + "]" * 999}), 422, "dimensions")


def test_a_content_length_shorter_than_the_body_logs_no_exception(duckdb_warehouse, start_server):
    server = start_server(duckdb_warehouse)
    body = json.dumps([event("cl-1")]).encode()
    for length in (0, 10, len(body) - 1):
        with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
            sock.sendall(
                b"POST /api/kpi/events HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(length).encode() + b"\r\n\r\n" + body
            )
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except TimeoutError:  # the rest of the body may wait to become a request
                pass
        assert answer.startswith(b"HTTP/1.1 4"), answer[:200]  # the truncated body or the rest: refused
    with server.client() as client:  # the server is fine
        assert client.post("/api/kpi/events", json=[event("after")]).status_code == 202
    time.sleep(0.5)
    log = server.stop()
    assert "Exception in ASGI application" not in log and "Traceback" not in log, log[-3000:]


# --------------------------------------------------------------------------- properties

ODD_TEXT = st.sampled_from(["\ud800", "\udfff", "\x00", "\u2028", "\ufeff", "\U0001F600", "é", '"', "\\"])
TEXT = st.text(st.one_of(st.characters(codec="utf-8"), ODD_TEXT), max_size=12)
NUMBERS_AS_TEXT = ("1e999", "-1e999", "1e-999", "-0", "9" * 400, "0.0000000000000000000000001")
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=2**63, max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(NUMBERS_AS_TEXT),
)
LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)
FIELDS = ["id", "type", "timestamp", "session_id", "user_id", "source", "metadata"]


def to_json(value) -> str:
    """JSON text of a generated value: numbers given as text stay as written, lone
    surrogates become escapes (`json.dumps` writes every non-ASCII character as one)."""
    if isinstance(value, str) and value in NUMBERS_AS_TEXT:
        return value
    if isinstance(value, list):
        return "[" + ",".join(to_json(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(key)}:{to_json(item)}" for key, item in value.items()) + "}"
    return json.dumps(value)



@st.composite
def hostile_events(draw) -> str:
    """An event whose fields are replaced by random values, or any value at all."""
    if draw(st.integers(0, 4)) == 0:
        return to_json(draw(VALUES))
    base = {key: json.dumps(value) for key, value in event(draw(st.text(string.ascii_letters, min_size=1, max_size=8))).items()}
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        base[field] = to_json(draw(VALUES))
    return "{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in base.items()) + "}"


@st.composite
def hostile_bodies(draw) -> tuple[bytes, str | None]:
    items = draw(st.lists(hostile_events(), max_size=5))
    kind = draw(st.sampled_from(["list", "ndjson", "value"]))
    if kind == "list":
        text = "[" + ",".join(items) + "]"
    elif kind == "ndjson":
        text = "\n".join(items)
    else:
        text = to_json(draw(VALUES))
    depth = draw(st.sampled_from([0, 0, 0, 2, 900, 1100, 3000]))
    text = "[" * depth + text + "]" * depth
    raw = text.encode("utf-8", "surrogatepass")
    mutation = draw(st.sampled_from(["none", "none", "truncate", "nul", "latin-1", "bom"]))
    if mutation == "truncate" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif mutation == "nul":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + b"\x00" + raw[at:]
    elif mutation == "latin-1":
        raw = raw + "é".encode("latin-1")
    elif mutation == "bom":
        raw = b"\xef\xbb\xbf" + raw
    content_type = draw(st.sampled_from(["application/json", "application/x-ndjson", "text/plain", None]))
    if kind == "ndjson" and content_type == "application/json" and draw(st.booleans()):
        content_type = "application/x-ndjson"
    return raw, content_type


QUERY_KEYS = st.one_of(
    st.sampled_from(["start", "end", "aggregation_level", "dimensions", "limit", "name", "format", "dim.model", "dim.a_b"]),
    st.text(min_size=1, max_size=8).map(lambda text: "dim." + text),
    st.text(min_size=1, max_size=8),
)
QUERY_VALUES = st.one_of(
    st.binary(max_size=30).map(lambda raw: quote(raw, safe="")),
    TEXT.map(lambda text: quote(text.encode("utf-8", "surrogatepass"), safe="")),
    st.sampled_from(["2026-01-01", "1999-12-31", "9999-12-31", "-1", "0", "1e999", "day", "minute", "csv", "{}",
                     '{"a":"b"}', "[" * 999 + "]" * 999, "%", "%zz", "%00", "retrieval.*"]),
)


def no_server_error(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert response.json()["detail"], response.text  # a 4xx says what is wrong


PROPERTY = settings(
    max_examples=60,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    database=None,
)


@pytest.mark.slow
def test_random_hostile_requests_never_get_a_5xx(warehouse, start_server):
    seed_metrics(warehouse)
    server = start_server(warehouse, KPI_API_RATE_PER_SECOND="100000", KPI_API_RATE_BURST="100000")
    with server.client() as client:

        @PROPERTY
        @given(body=hostile_bodies())
        def events(body):
            raw, content_type = body
            headers = {"Content-Type": content_type} if content_type else {}
            response = client.post("/api/kpi/events", content=raw, headers=headers)
            no_server_error(response)
            if response.status_code == 202:
                result = response.json()
                indexes = [item["index"] for item in result["rejected"]]
                assert indexes == sorted(set(indexes)) and all(item["reason"] for item in result["rejected"])

        @PROPERTY
        @given(body=hostile_bodies())
        def orders(body):
            no_server_error(webhook(client, body[0]))

        @PROPERTY
        @given(path=st.sampled_from(READ_PATHS), query=st.lists(st.tuples(QUERY_KEYS, QUERY_VALUES), max_size=5))
        def reads(path, query):
            text = "&".join(f"{quote(key.encode('utf-8', 'surrogatepass'), safe='.')}={value}" for key, value in query)
            no_server_error(client.get(f"{path}?{text}"))

        events()
        orders()
        reads()
        assert client.get("/healthz").status_code == 200  # still serving
