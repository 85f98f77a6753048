"""The contract's limits (issue 11, items 2, 6 and 8), on DuckDB and PostgreSQL.

Whatever validation accepts, every later stage holds: the extremes of every field go
through the loader and `kpi materialize`. A line too long or holding a NUL byte is one
rejected line; a file that truly cannot be read is refused in one line naming the file, the
line and the cause. Timestamps: offsets up to ±14:00, times from the contract's earliest day
(before the first partition, KPI_FIRST_DAY, included) to one day after the load.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
from pathlib import Path

import pytest

from kpi_pipelines.cli import materialize
from kpi_pipelines.ingestion.contract import EARLIEST_TIME
from kpi_pipelines.ingestion.loader import EventLoader, IngestError
from kpi_pipelines.partitions import daily_partitions
from kpi_pipelines.settings import DEFAULTS, SettingError, day_setting
from kpi_pipelines_tests.conftest import SALT, definitions_for, event

DAY = dt.date(2026, 3, 10)  # conftest's event() default day
EVENTS_MD = Path(__file__).resolve().parents[1] / "docs" / "events.md"


def query(event_id: str, **fields):
    metadata = {"action": "query", "query_id": "q", "query": "shoes", "result_ids": ["P1"], "response_time_ms": 1}
    return event(event_id, **{**metadata, **fields})


def click(event_id: str, position) -> dict:
    return event(event_id, action="click", query_id="q", product_id="P1", position=position)


def feedback(event_id: str, satisfaction) -> dict:
    return event(event_id, action="feedback", query_id="q", satisfaction=satisfaction)


def generation(event_id: str, **fields) -> dict:
    metadata = {"generation_id": "g", "product_id": "P1", "model": "m", "latency_ms": 1, "status": "success"}
    return event(event_id, "generation", **{**metadata, **fields})


def review(event_id: str, **fields) -> dict:
    metadata = {"generation_id": "g", "product_id": "P1", "decision": "approved", "review_time_ms": 1}
    return event(event_id, "review", **{**metadata, **fields})


def order(event_id: str, **fields) -> dict:
    metadata = {"action": "order", "order_id": "o", "revenue": 1, "currency": "EUR", "product_ids": ["P1"]}
    return event(event_id, "business", **{**metadata, **fields})


def system(event_id: str, **fields) -> dict:
    metadata = {"service": "search", "endpoint": "/s", "latency_ms": 1, "status_code": 200}
    return event(event_id, "system_performance", **{**metadata, **fields})


def signal(event_id: str, value) -> dict:
    return event(event_id, "data_quality", table="products", check="nulls", value=value)


def nested(levels: int):
    """A value `levels` deep: [[...[]...]]."""
    return json.loads("[" * levels + "]" * levels)


def with_raw_number(line: dict, key: str, token: str) -> str:
    """The event as a JSON line whose metadata member `key` is written as `token` verbatim
    (NaN, Infinity, 1e309: json.dumps cannot write them all)."""
    marker = "__number__"
    text = json.dumps({**line, "metadata": {**line["metadata"], key: marker}})
    return text.replace(f'"{marker}"', token)


ID, TEXT = "i" * 256, "t" * 4096
LATER = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=23)).strftime("%Y-%m-%dT%H:%M:%SZ")
TOO_LATE = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=25)).strftime("%Y-%m-%dT%H:%M:%SZ")

# The largest accepted value at every bound, and every length, depth and time at its limit.
ACCEPTED = [
    click("click-lowest", 1),
    click("click-highest", 2147483647),
    feedback("feedback-1", 1),
    feedback("feedback-5", 5),
    query("query-zero", response_time_ms=0),
    query("query-longest", query=TEXT, query_id=ID, refinement_of=ID, result_ids=[ID, ID], response_time_ms=1e15),
    generation("generation-max", generation_id=ID, product_id=ID, model=ID, latency_ms=1e15),
    review("review-max", generation_id=ID, product_id=ID, review_time_ms=1e15),
    order("order-max-1", order_id=ID, revenue=1e15, currency=ID, product_ids=[ID]),
    order("order-max-2", revenue=1e15),  # the day's revenue sums to 2e15
    system("system-100", status_code=100, latency_ms=1e15, service=ID, endpoint=ID),
    system("system-599", status_code=599),
    signal("signal-lowest", -1e15),
    signal("signal-highest", 1e15),
    event(ID, session_id=ID, user_id=ID, action="click", query_id="q", product_id="P1", position=2),
    query("experiment-longest", experiment={"id": ID, "variant": ID}),
    query("nested-32", extra=nested(30)),  # event 1, metadata 2, then 30 lists
    query("escaped-backslash", query="a\\u0000b"),  # a backslash and the text u0000
    with_raw_number(query("extra-largest-double"), "score", "1.7e308"),  # members the contract does not check
    with_raw_number(query("extra-small-and-long"), "nested", '{"a": [-2.5e-300, 12345678901234567890123]}'),
    with_raw_number(query("extra-underflow"), "score", "-2.5E-1000"),  # DuckDB's parser reads it as -0.0
    event("offset-plus-14", timestamp="2026-03-10T23:00:00+14:00"),
    event("offset-minus-14", timestamp="2026-03-09T10:00:00-1400"),
    event("lowercase-z", timestamp="2026-03-10 12:00:00z"),
    event("earliest", timestamp=f"{EARLIEST_TIME}T00:00:00Z"),
    event("latest", timestamp=LATER),
]

# (line, the reason's expected part): the smallest step past each limit.
REJECTED = [
    (click("click-0", 0), "metadata.position: expected an integer between 1 and 2147483647, got 0"),
    (click("click-int32", 2147483648), "metadata.position: expected an integer between 1 and 2147483647, got 2147483648"),
    (click("click-huge", 10**30), "metadata.position: expected an integer between 1 and 2147483647, got 1000000000000000000000000000000"),
    (feedback("feedback-0", 0), "metadata.satisfaction: expected an integer between 1 and 5, got 0"),
    (feedback("feedback-6", 6), "metadata.satisfaction: expected an integer between 1 and 5, got 6"),
    (query("query-negative", response_time_ms=-0.001), "metadata.response_time_ms: expected a number between 0 and 1e15, got -0.001"),
    (query("query-slow", response_time_ms=1.000001e15), "metadata.response_time_ms: expected a number between 0 and 1e15"),
    (with_raw_number(query("query-inf"), "response_time_ms", "1e309"), "metadata.response_time_ms: expected a number between 0 and 1e15"),
    (generation("generation-slow", latency_ms=1e16), "metadata.latency_ms: expected a number between 0 and 1e15"),
    (review("review-slow", review_time_ms=1e16), "metadata.review_time_ms: expected a number between 0 and 1e15"),
    (order("order-1e308", revenue=1e308), "metadata.revenue: expected a number between 0 and 1e15, got 1e308"),
    (with_raw_number(order("order-nan"), "revenue", "NaN"), "metadata.revenue: expected a number between 0 and 1e15, got NaN"),
    (system("system-99", status_code=99), "metadata.status_code: expected an integer between 100 and 599, got 99"),
    (system("system-600", status_code=600), "metadata.status_code: expected an integer between 100 and 599, got 600"),
    (signal("signal-low", -1.0000001e15), "metadata.value: expected a number between -1e15 and 1e15"),
    (with_raw_number(signal("signal-inf", 0), "value", "-Infinity"), "metadata.value: expected a number between -1e15 and 1e15"),
    # NaN and Infinity are JSON to DuckDB, not to PostgreSQL's JSONB: in any member
    (with_raw_number(query("extra-nan"), "score", "NaN"), "metadata: expected numbers a double holds, got NaN, Infinity or beyond ±1.8e308"),
    (with_raw_number(query("extra-inf"), "nested", '{"a": [1, -infinity]}'), "metadata: expected numbers a double holds"),
    # PostgreSQL's JSONB refuses exponents past ~131,000: the file's COPY failed whole
    (with_raw_number(query("extra-huge-exponent"), "score", "1e200000"), "metadata: expected numbers a double holds"),
    (with_raw_number(query("extra-long-digits"), "score", "9" * 400), "metadata: expected numbers a double holds"),
    (click("x" * 257, 1), "id: expected at most 256 characters, got 257"),
    (event("long-session", session_id="s" * 257), "session_id: expected at most 256 characters, got 257"),
    (event("long-user", user_id="u" * 257), "user_id: expected at most 256 characters, got 257"),
    (event("long-user-1m", user_id="é" * 1_000_000), "user_id: expected at most 256 characters, got 1000000"),
    (query("long-query", query=TEXT + "t"), "metadata.query: expected at most 4096 characters, got 4097"),
    (query("long-result", result_ids=["P1", "r" * 257]), "metadata.result_ids: expected at most 256 characters each, got 257"),
    (order("long-order", order_id="o" * 257), "metadata.order_id: expected at most 256 characters, got 257"),
    (order("long-products", product_ids=["p" * 300]), "metadata.product_ids: expected at most 256 characters each, got 300"),
    (generation("long-model", model="m" * 257), "metadata.model: expected at most 256 characters, got 257"),
    (query("long-variant", experiment={"id": "e", "variant": "v" * 257}), "metadata.experiment.variant: expected at most 256 characters, got 257"),
    (query("nested-33", extra=nested(31)), "metadata: nested deeper than 32 levels"),
    (with_raw_number(query("nested-50000"), "extra", "[" * 50_000 + "]" * 50_000), "metadata: nested deeper than 32 levels"),
    (query("real-nul-escape", query="a\\\u0000b"), "a string holds the NUL character U+0000"),
    (event("offset-14-01", timestamp="2026-03-10T12:00:00+14:01"), "timestamp: expected ISO-8601 with a time zone (Z or an offset up to ±14:00"),
    (event("offset-99", timestamp="2026-03-10T12:00:00+99:00"), "timestamp: expected ISO-8601 with a time zone"),
    (event("offset-minus-15", timestamp="2026-03-10T12:00:00-15"), "timestamp: expected ISO-8601 with a time zone"),
    (event("minutes-60", timestamp="2026-03-10T12:00:00+05:60"), "timestamp: expected ISO-8601 with a time zone"),
    (event("too-early", timestamp="2019-12-31T23:59:59Z"), f"timestamp: expected from {EARLIEST_TIME}T00:00:00Z to 1 day after the load ("),
    (event("too-late", timestamp=TOO_LATE), "timestamp: expected from"),
    (event("year-10000", timestamp="9999-12-31T23:00:00-05:00"), 'got "9999-12-31T23:00:00-05:00"'),
    (event("year-0", timestamp="0000-01-01T00:00:00Z"), "timestamp: expected"),
]


@pytest.mark.slow
def test_the_extremes_of_every_field_load_and_materialize(warehouse, write_events, tmp_path, monkeypatch):
    rejected_lines = [line if isinstance(line, str) else json.dumps(line) for line, _ in REJECTED]
    result = EventLoader(warehouse, SALT).load_file(write_events(ACCEPTED + rejected_lines))
    assert (result.accepted, result.rejected) == (len(ACCEPTED), len(REJECTED))
    reasons = dict(warehouse.query("SELECT line_no, reason FROM rejected_events"))
    for number, (_, expected) in enumerate(REJECTED, start=len(ACCEPTED) + 1):
        assert expected in reasons[number], (number, reasons[number])
    # PostgreSQL reads back every stored time (it cannot read year 10000)
    times = [row[0] for row in warehouse.query("SELECT event_time FROM raw_events")]
    assert min(times) == dt.datetime.fromisoformat(EARLIEST_TIME)

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    materialize(DAY, DAY, definitions=definitions_for(warehouse))
    staged = dict(
        warehouse.query(
            "SELECT event_id, coalesce(click_position, status_code, satisfaction) FROM stg_events "
            "WHERE click_position IS NOT NULL OR status_code IS NOT NULL OR satisfaction IS NOT NULL"
        )
    )
    assert staged == {
        "click-lowest": 1, "click-highest": 2147483647, "feedback-1": 1, "feedback-5": 5,
        "system-100": 100, "system-599": 599, ID: 2,
    }
    assert warehouse.scalar("SELECT count(*) FROM stg_events") == len(ACCEPTED) - 2  # all but earliest, latest
    assert warehouse.scalar("SELECT sum(revenue) FROM stg_events") == 2e15
    assert warehouse.scalar("SELECT max(length(query_text)) FROM stg_events") == 4096


def test_a_line_too_long_is_one_rejected_line(warehouse, tmp_path):
    path = tmp_path / "long.jsonl"
    long_line = json.dumps(query("long", query="x" * (10 * 1024 * 1024)))
    path.write_text("\n".join([json.dumps(event("before")), long_line, json.dumps(event("after"))]) + "\n")
    result = EventLoader(warehouse, SALT).load_file(path)
    assert (result.accepted, result.rejected) == (2, 1)
    line_no, reason, raw_text = warehouse.query("SELECT line_no, reason, raw_text FROM rejected_events")[0]
    assert line_no == 2
    assert reason == (
        f"line longer than 8388608 bytes ({len(long_line)}): not read, its first 1024 characters kept"
    )
    # cut back to the quote opening the 10 MB query (the user id comes after: not kept either)
    assert raw_text == long_line[: long_line.index("x" * 100)]


def test_a_long_line_is_not_cut_inside_an_address(warehouse, tmp_path):
    """An e-mail address across the 1,024th character: the kept part ends before it, since a
    cut address ("someone.priv") is no longer one that masking finds."""
    path = tmp_path / "long.jsonl"

    def line_with(padding: int) -> str:
        note = "p" * padding + " someone.private@example.com"
        return json.dumps(query("long-address", query="q", note=note, filler="f" * (9 * 1024 * 1024)))

    long_line = line_with(1024 - 10 - line_with(0).index(" someone"))
    assert long_line.index("someone") < 1024 < long_line.index("example.com")
    path.write_text(long_line + "\n")
    EventLoader(warehouse, SALT).load_file(path)
    (raw_text,) = warehouse.query("SELECT raw_text FROM rejected_events")[0]
    assert raw_text == long_line[: long_line.index('"ppp') + 1]  # up to the quote opening the note
    assert "someone" not in raw_text


@pytest.mark.parametrize(
    "escape,reason",
    [
        ("\\ud800", "invalid JSON: a \\u escape of a lone surrogate (U+D800 to U+DFFF) is not text"),
        ("\\uDFFF", "invalid JSON: a \\u escape of a lone surrogate (U+D800 to U+DFFF) is not text"),
        ("\\ud83d\\ude00", None),  # a pair: an emoji, accepted
    ],
)
def test_a_lone_surrogate_is_named(warehouse, write_events, escape, reason):
    line = json.dumps(query("surrogate", query="SURROGATE")).replace("SURROGATE", escape)
    result = EventLoader(warehouse, SALT).load_file(write_events([line]))
    assert result.rejected == (reason is not None)
    if reason:
        assert warehouse.scalar("SELECT reason FROM rejected_events") == reason


def test_a_long_timestamp_is_not_quoted_cut(warehouse, write_events):
    stamp = "2026-03-10T12:00:00Z and a note from " + "x" * 20 + " someone.private@example.com"
    assert len(stamp) > 62
    EventLoader(warehouse, SALT).load_file(write_events([event("long-stamp", timestamp=stamp)]))
    reason = warehouse.scalar("SELECT reason FROM rejected_events")
    assert reason.endswith(f"got a value of {len(stamp) + 2} characters")  # the JSON text, quotes included
    assert "someone" not in reason


@pytest.mark.parametrize(
    "written",
    [
        b'{"id": "a\x00b", "type": "search"}',  # inside a string
        json.dumps(event("nul-end")).encode() + b"\x00",  # after a valid event (was silently dropped)
        b"\x00" + json.dumps(event("nul-start")).encode(),
        b"\x00",
    ],
    ids=["in-a-string", "after-a-valid-event", "before-the-event", "alone"],
)
def test_a_nul_byte_rejects_its_line_only(warehouse, tmp_path, written):
    path = tmp_path / "nul.jsonl"
    path.write_bytes(json.dumps(event("ok-1")).encode() + b"\n" + written + b"\n" + json.dumps(event("ok-2")).encode() + b"\n")
    result = EventLoader(warehouse, SALT).load_file(path)
    assert (result.accepted, result.rejected) == (2, 1)
    line_no, reason, raw_text = warehouse.query("SELECT line_no, reason, raw_text FROM rejected_events")[0]
    assert (line_no, reason) == (2, "the line holds a NUL byte, which is not text (shown as U+FFFD)")
    assert "\x00" not in raw_text and raw_text.count("\ufffd") == written.count(b"\x00")
    assert sorted(row[0] for row in warehouse.query("SELECT event_id FROM raw_events")) == ["ok-1", "ok-2"]


def test_an_escaped_backslash_before_u0000_is_text_not_nul(warehouse, write_events):
    lines = [
        json.dumps(query("one-backslash", query="a\\u0000b")),  # JSON \\u0000: backslash, then u0000
        json.dumps(query("two-backslashes", query="a\\\\u0000b")),  # two backslashes, then u0000
        json.dumps(query("escape-after-backslash", query="a\\\u0000b")),  # a backslash, then U+0000
        json.dumps(query("escape", query="\u0000")),
    ]
    assert '\\\\\\u0000' in lines[2] and lines[3].count("\\u0000") == 1
    result = EventLoader(warehouse, SALT).load_file(write_events(lines))
    assert (result.accepted, result.rejected) == (2, 2)
    assert set(dict(warehouse.query("SELECT line_no, reason FROM rejected_events")).values()) == {
        "a string holds the NUL character U+0000, which cannot be stored"
    }
    stored = {row[0]: row[1] for row in warehouse.query("SELECT event_id, metadata FROM raw_events")}
    texts = {key: (json.loads(value) if isinstance(value, str) else value)["query"] for key, value in stored.items()}
    assert texts == {"one-backslash": "a\\u0000b", "two-backslashes": "a\\\\u0000b"}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


GOOD = (json.dumps(event("g1")) + "\n").encode()


@pytest.mark.parametrize(
    "name,data,message",
    [
        ("latin1.jsonl", GOOD + '{"id": "caf\xe9"}\n'.encode("latin-1"), r"latin1\.jsonl: line 2: cannot be read: not UTF-8 text$"),
        ("image.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01", r"image\.jsonl: line 1: cannot be read: not UTF-8 text$"),
        ("cut.jsonl.gz", gzip.compress(GOOD * 3000)[:-40], r"cut\.jsonl\.gz: cannot be read: Unexpected end of GZIP stream$"),
        ("plain.jsonl.gz", GOOD, r"plain\.jsonl\.gz: cannot be read: Input is not a GZIP stream$"),
        (
            "huge-line.jsonl",
            GOOD + b'{"id": "' + b"x" * (65 * 1024 * 1024) + b'"}\n',
            r"huge-line\.jsonl: line 2: cannot be read: longer than 67108864 bytes, more than the reader holds$",
        ),
    ],
    ids=["not-utf8", "binary", "truncated-gzip", "not-gzip", "beyond-the-reader"],
)
def test_a_file_that_cannot_be_read_is_refused_naming_line_and_cause(warehouse, tmp_path, name, data, message):
    path = _write(tmp_path / name, data)
    with pytest.raises(IngestError) as refused:
        EventLoader(warehouse, SALT).load_file(path)
    text = str(refused.value)
    assert "\n" not in text and text.startswith(str(path))
    assert re.search(message, text), text
    for table in ("raw_events", "rejected_events", "ingested_files"):
        assert warehouse.scalar(f"SELECT count(*) FROM {table}") == 0


def test_the_earliest_time_is_the_earliest_first_day_not_the_first_partition(monkeypatch):
    # the contract's floor stays put; the first partition is KPI_FIRST_DAY (conftest: the
    # default), later: the earliest accepted event above is stored before it (test_partitions.py)
    assert EARLIEST_TIME == "2020-01-01" < daily_partitions.start.date().isoformat() == DEFAULTS["KPI_FIRST_DAY"]
    monkeypatch.setenv("KPI_FIRST_DAY", "2019-12-31")
    with pytest.raises(SettingError, match=r"^KPI_FIRST_DAY='2019-12-31': expected a day from 2020-01-01 to "):
        day_setting("KPI_FIRST_DAY", dt.date.fromisoformat(EARLIEST_TIME), dt.date(2026, 12, 1))


def test_events_md_states_every_limit():
    limits = EVENTS_MD.read_text().split("## Limits", 1)[1].split("\n## ", 1)[0]
    for stated in ("256 characters", "4,096 characters", "32 levels", "2,147,483,647", "10^15",
                   "±14:00", EARLIEST_TIME, "1 day after", "8 MiB", "64 MiB", "1,024 characters", "NaN"):
        assert stated in limits, stated
