"""The event loader on DuckDB and PostgreSQL: validation, dedup, UTC days, PII, atomicity."""

from __future__ import annotations

import datetime as dt
import gzip
import json

import pytest

from kpi_pipelines.ingestion.loader import EventLoader, IngestError
from kpi_pipelines.ingestion.pii import pseudonymize
from kpi_pipelines_tests.conftest import SALT, all_table_text, event


def rejected(warehouse) -> dict[int, str]:
    return {line: reason for line, reason in warehouse.query("SELECT line_no, reason FROM rejected_events")}


def stored_ids(warehouse) -> list[str]:
    return sorted(row[0] for row in warehouse.query("SELECT event_id FROM raw_events"))


BAD_LINES = [
    ("not json at all", "invalid JSON"),
    ("", "empty line"),
    ("[1, 2, 3]", "not a JSON object"),
    (json.dumps({k: v for k, v in event("x").items() if k != "id"}), "id: required"),
    (json.dumps({**event("x"), "id": 7}), "id: expected a non-empty string, got 7"),
    (json.dumps({**event("x"), "type": "purchase"}), 'type: expected one of search, generation'),
    (json.dumps({k: v for k, v in event("x").items() if k != "timestamp"}), "timestamp: required"),
    (json.dumps({**event("x"), "timestamp": "2026-03-10T12:00:00"}), "timestamp: expected ISO-8601 with a time zone"),
    (json.dumps({**event("x"), "timestamp": "2026-02-30T12:00:00Z"}), "timestamp: expected ISO-8601 with a time zone"),
    (json.dumps({**event("x"), "timestamp": "yesterday"}), "timestamp: expected ISO-8601"),
    (json.dumps({**event("x"), "session_id": ""}), "session_id: expected a non-empty string"),
    (json.dumps({**event("x"), "user_id": 42}), "user_id: expected a string, got a number"),
    (json.dumps({**event("x"), "source": "web"}), 'source: expected one of api, dashboard, system, external, got "web"'),
    (json.dumps({**event("x"), "metadata": "query"}), "metadata: expected an object"),
    (json.dumps(event("x", action="browse", query_id="q")), "metadata.action: expected one of query, click, feedback"),
    (json.dumps(event("x", action="query", query_id="q", query="a", result_ids="P1", response_time_ms=3)),
     "metadata.result_ids: expected a list of strings"),
    (json.dumps(event("x", action="query", query_id="q", query="a", result_ids=["P1", 2], response_time_ms=3)),
     "metadata.result_ids: expected a list of strings"),
    (json.dumps(event("x", action="query", query_id="q", query="a", result_ids=[], response_time_ms=-1)),
     "metadata.response_time_ms: expected a number between 0 and 1e15, got -1"),
    (json.dumps(event("x", action="query", query_id="q", result_ids=[], response_time_ms=1)), "metadata.query: required"),
    (json.dumps(event("x", action="click", query_id="q", product_id="P1", position=0)),
     "metadata.position: expected an integer between 1 and 2147483647, got 0"),
    (json.dumps(event("x", action="click", query_id="q", product_id="P1", position=1.5)),
     "metadata.position: expected an integer between 1 and 2147483647, got 1.5"),
    (json.dumps(event("x", action="feedback", query_id="q", satisfaction=6)),
     "metadata.satisfaction: expected an integer between 1 and 5, got 6"),
    (json.dumps(event("x", "generation", generation_id="g", product_id="P1", model="m", latency_ms=5, status="ok")),
     "metadata.status: expected one of success, error"),
    (json.dumps(event("x", "review", generation_id="g", product_id="P1", decision="maybe", review_time_ms=5)),
     "metadata.decision: expected one of approved, rejected, edited"),
    (json.dumps(event("x", "business", action="order", order_id="o", revenue="12.00", currency="USD", product_ids=[])),
     'metadata.revenue: expected a number between 0 and 1e15, got "12.00"'),
    (json.dumps(event("x", "business", action="refund", order_id="o")), "metadata.action: expected one of order"),
    (json.dumps(event("x", "system_performance", service="s", endpoint="/e", latency_ms=3, status_code=99)),
     "metadata.status_code: expected an integer between 100 and 599"),
    (json.dumps(event("x", "data_quality", table="products", check="nulls", value="high")),
     "metadata.value: expected a number"),
    (json.dumps(event("x", action="click", query_id="q", product_id="P1", position=1, experiment={"id": "e1"})),
     "metadata.experiment.variant: required"),
]


@pytest.mark.parametrize("line,reason", BAD_LINES, ids=[reason[:40] for _, reason in BAD_LINES])
def test_each_rejection_reason_is_recorded_with_the_line(warehouse, write_events, line, reason):
    path = write_events([event("good-1"), line, event("good-2")])
    result = EventLoader(warehouse, SALT).load_file(path)
    assert (result.accepted, result.duplicates, result.rejected) == (2, 0, 1)
    reasons = rejected(warehouse)
    assert list(reasons) == [2]
    assert reason in reasons[2]
    assert stored_ids(warehouse) == ["good-1", "good-2"]
    raw_text = warehouse.scalar("SELECT raw_text FROM rejected_events")
    # the rejected text keeps the line, its user id (string or not) replaced by the pseudonym
    expected = line.replace('"user-1"', f'"{pseudonymize("user-1", SALT)}"')
    expected = expected.replace('"user_id": 42', f'"user_id": "{pseudonymize("42", SALT)}"')
    assert raw_text == expected


def test_a_line_breaking_several_rules_lists_every_reason(warehouse, write_events):
    bad = {**event("x", action="click", query_id="q", product_id="", position=0), "source": "web"}
    EventLoader(warehouse, SALT).load_file(write_events([bad]))
    reason = rejected(warehouse)[1]
    for part in ("source: expected one of", "metadata.product_id: expected a non-empty string", "metadata.position"):
        assert part in reason


def test_every_event_type_of_the_contract_is_accepted(warehouse, write_events):
    events = [
        event("e1"),
        event("e2", action="click", query_id="q", product_id="P1", position=3),
        event("e3", action="feedback", query_id="q", satisfaction=5),
        event("e4", action="query", query_id="q2", query="", result_ids=[], response_time_ms=0.5, refinement_of="q"),
        event("e5", "generation", generation_id="g", product_id="P1", model="m", latency_ms=900, status="error"),
        event("e6", "review", generation_id="g", product_id="P1", decision="edited", review_time_ms=10),
        event("e7", "business", action="order", order_id="o", revenue=10.5, currency="EUR", product_ids=["P1"]),
        event("e8", "system_performance", service="search", endpoint="/s", latency_ms=12, status_code=503),
        event("e9", "data_quality", table="products", check="null_titles", value=-3.5),
        event("e10", user_id=None, action="click", query_id="q", product_id="P1", position=1,
              experiment={"id": "exp", "variant": "b"}, extra_key={"kept": True}),
    ]
    result = EventLoader(warehouse, SALT).load_file(write_events(events))
    assert (result.accepted, result.rejected) == (10, 0)
    metadata = warehouse.scalar("SELECT metadata FROM raw_events WHERE event_id = 'e10'")
    metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
    assert metadata["extra_key"] == {"kept": True}
    assert warehouse.scalar("SELECT user_key FROM raw_events WHERE event_id = 'e10'") is None
    actions = dict(warehouse.query("SELECT event_id, action FROM raw_events WHERE event_id IN ('e2', 'e7', 'e5')"))
    assert actions == {"e2": "click", "e7": "order", "e5": None}


def test_duplicates_inside_one_file_keep_the_first_line(warehouse, write_events):
    first = event("dup", session_id="first")
    second = event("dup", session_id="second")
    result = EventLoader(warehouse, SALT).load_file(write_events([first, event("other"), second]))
    assert (result.accepted, result.duplicates, result.rejected) == (2, 1, 0)
    assert warehouse.scalar("SELECT session_id FROM raw_events WHERE event_id = 'dup'") == "first"


def test_duplicates_across_files_and_a_second_ingest_add_nothing(warehouse, write_events):
    loader = EventLoader(warehouse, SALT)
    one = write_events([event("a"), event("b"), "broken"])
    two = write_events([event("b"), event("c")])
    assert (loader.load_file(one).accepted, loader.load_file(two).accepted) == (2, 1)
    again = loader.load_file(one)
    assert (again.accepted, again.duplicates, again.rejected) == (0, 2, 1)
    assert stored_ids(warehouse) == ["a", "b", "c"]
    assert warehouse.scalar("SELECT count(*) FROM rejected_events") == 1


def test_gzip_files_load_like_plain_ones(warehouse, tmp_path):
    path = tmp_path / "events.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(event("g1")) + "\nnope\n" + json.dumps(event("g2")) + "\n")
    result = EventLoader(warehouse, SALT).load_file(path)
    assert (result.accepted, result.rejected) == (2, 1)
    assert list(rejected(warehouse)) == [2]


@pytest.mark.parametrize(
    "timestamp,utc",
    [
        ("2026-03-10T23:30:00-02:00", "2026-03-11 01:30:00"),
        ("2026-03-11T01:30:00+05:30", "2026-03-10 20:00:00"),
        ("2026-03-10T23:59:59.999999Z", "2026-03-10 23:59:59.999999"),
        ("2026-03-11T00:00:00+00:00", "2026-03-11 00:00:00"),
        ("2026-03-11T00:15:00+0100", "2026-03-10 23:15:00"),
        ("2026-03-10 18:00:00-08", "2026-03-11 02:00:00"),
    ],
)
def test_timestamps_are_normalized_to_their_utc_day(warehouse, write_events, timestamp, utc):
    EventLoader(warehouse, SALT).load_file(write_events([event("t", timestamp=timestamp)]))
    event_time, event_date = warehouse.query("SELECT event_time, event_date FROM raw_events")[0]
    expected = dt.datetime.fromisoformat(utc)
    assert event_time == expected
    assert event_date == expected.date()


def test_late_events_for_old_days_are_accepted(warehouse, write_events):
    loader = EventLoader(warehouse, SALT)
    loader.load_file(write_events([event("new", timestamp="2026-03-10T10:00:00Z")]))
    result = loader.load_file(write_events([event("late", timestamp="2025-12-31T23:00:00-05:00")]))
    assert result.accepted == 1
    assert result.events_by_date == {"2026-01-01": 1}


def test_no_raw_user_id_email_or_phone_reaches_any_table(warehouse, write_events):
    raw_ids = ["alice@example.com", "user-7781", "bob.smith+kpi@mail.example.org"]
    lines = [
        event("p1", user_id=raw_ids[0], action="query", query_id="q", query="shoes for carol@example.net please",
              result_ids=[], response_time_ms=1, note="call me on +44 20 7946 0958 or (555) 123-4567"),
        event("p2", user_id=raw_ids[1]),
        # rejected lines keep their text, pseudonymized and masked too
        json.dumps({**event("p3", user_id=raw_ids[2]), "source": "web", "contact": "dave@example.com"}),
        '{"user_id": "user-7781", "broken": ',
        json.dumps({**event("p4"), "user_id": "user-7781", "type": "nope"}),
    ]
    result = EventLoader(warehouse, SALT).load_file(write_events(lines))
    assert (result.accepted, result.rejected) == (2, 3)
    text = all_table_text(warehouse)
    for secret in raw_ids + ["carol@example.net", "dave@example.com", "7946 0958", "123-4567"]:
        assert secret not in text
    assert pseudonymize("user-7781", SALT) in text
    keys = dict(warehouse.query("SELECT event_id, user_key FROM raw_events"))
    assert keys == {"p1": pseudonymize(raw_ids[0], SALT), "p2": pseudonymize(raw_ids[1], SALT)}
    query = warehouse.scalar("SELECT metadata FROM raw_events WHERE event_id = 'p1'")
    query = json.loads(query) if isinstance(query, str) else query
    assert query["query"] == "shoes for [email] please"
    assert query["note"] == "call me on [phone] or [phone]"


def test_each_event_gets_the_pseudonym_of_its_own_user(warehouse, write_events):
    """The keyed hash is computed once per distinct user and joined back to every event."""
    users = ["u-a", 'u-"quoted"', "u-é", None]
    lines = [event(f"k{i}", user_id=users[i % len(users)]) for i in range(40)]
    EventLoader(warehouse, SALT).load_file(write_events(lines))
    keys = dict(warehouse.query("SELECT event_id, user_key FROM raw_events"))
    assert keys == {
        f"k{i}": None if users[i % len(users)] is None else pseudonymize(users[i % len(users)], SALT)
        for i in range(40)
    }


def test_pseudonyms_depend_on_the_salt(warehouse, write_events):
    assert pseudonymize("u", "a") != pseudonymize("u", "b")
    EventLoader(warehouse, "other-salt").load_file(write_events([event("s", user_id="u")]))
    assert warehouse.scalar("SELECT user_key FROM raw_events") == pseudonymize("u", "other-salt")


def test_a_file_that_fails_half_way_leaves_nothing(warehouse, tmp_path):
    good = "".join(json.dumps(event(f"ok-{i}")) + "\n" for i in range(2000))
    path = tmp_path / "truncated.jsonl.gz"
    blob = gzip.compress(good.encode())
    path.write_bytes(blob[: len(blob) - 40])  # a gzip stream cut short: fails at the end
    loader = EventLoader(warehouse, SALT)
    with pytest.raises(IngestError, match="truncated.jsonl.gz"):
        loader.load_file(path)
    for table in ("raw_events", "rejected_events", "ingested_files"):
        assert warehouse.scalar(f"SELECT count(*) FROM {table}") == 0


def test_a_file_that_is_not_text_is_refused_whole(warehouse, tmp_path):
    path = tmp_path / "binary.jsonl"
    path.write_bytes(json.dumps(event("b1")).encode() + b"\n\xff\xfe\xfa garbage\n")
    with pytest.raises(IngestError, match="binary.jsonl"):
        EventLoader(warehouse, SALT).load_file(path)
    assert warehouse.scalar("SELECT count(*) FROM raw_events") == 0


def test_missing_file(warehouse, tmp_path):
    with pytest.raises(IngestError, match="no such file"):
        EventLoader(warehouse, SALT).load_file(tmp_path / "absent.jsonl")


@pytest.mark.slow
def test_line_numbers_follow_the_file_on_a_large_file(warehouse, tmp_path):
    """Numbering survives DuckDB's parallel reader, inside the warehouse's transaction
    (DuckDB) and in the staging database (PostgreSQL): bad lines spread through 200k lines."""
    path = tmp_path / "big.jsonl"
    with path.open("w") as handle:
        for i in range(200_000):
            handle.write(f"bad line {i}\n" if i % 9973 == 0 else json.dumps(event(f"e{i}")) + "\n")
    result = EventLoader(warehouse, SALT).load_file(path)
    expected = {i + 1 for i in range(0, 200_000, 9973)}
    assert result.rejected == len(expected)
    rows = warehouse.query("SELECT line_no, raw_text FROM rejected_events")
    assert {line for line, _ in rows} == expected
    assert all(text == f"bad line {line - 1}" for line, text in rows)


def test_a_nul_character_is_rejected_on_both_backends(warehouse, write_events):
    """PostgreSQL cannot store U+0000 in text or JSONB; DuckDB rejects it the same way."""
    line = json.dumps(event("nul", action="query", query_id="q", query="a\u0000b", result_ids=[], response_time_ms=1))
    assert "\\u0000" in line
    result = EventLoader(warehouse, SALT).load_file(write_events([line, event("ok")]))
    assert (result.accepted, result.rejected) == (1, 1)
    assert rejected(warehouse) == {1: "a string holds the NUL character U+0000, which cannot be stored"}


def test_a_rejected_line_with_an_escaped_nul_in_its_id_is_kept(warehouse, write_events):
    line = json.dumps({**event("x"), "id": "a\u0000b", "type": "unknown"})
    result = EventLoader(warehouse, SALT).load_file(write_events([line]))
    assert result.rejected == 1
    event_id, raw_text = warehouse.query("SELECT event_id, raw_text FROM rejected_events")[0]
    assert event_id is None and "\\u0000" in raw_text
