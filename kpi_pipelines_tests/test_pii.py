"""No raw user id, e-mail address or phone number reaches any table, whatever the line's shape.

A file of hostile lines plants a unique value in each shape (a user id as an object, in a
list, under an escaped key, duplicated, nested in metadata, in lines that do not parse;
e-mails and phones in ids, in choice fields quoted by reasons, internationalized or written
with JSON escapes), is loaded on both backends, and every column of every table is searched
for each planted value.
"""

from __future__ import annotations

import json

import duckdb
import pytest

from kpi_pipelines.ingestion.loader import EventLoader
from kpi_pipelines.ingestion.pii import mask_sql, mask_text, pseudonymize
from kpi_pipelines_tests.conftest import SALT, event


def query_metadata(query_id: str, query: str = "red shoes", **extra) -> dict:
    return {"action": "query", "query_id": query_id, "query": query, "result_ids": ["P1"], "response_time_ms": 12,
            **extra}


def with_key(line: dict, key: str, written: str) -> str:
    """The JSON text of `line` with the member `key` spelled `written` (escapes kept)."""
    text = json.dumps(line)
    assert text.count(f'"{key}"') == 1
    return text.replace(f'"{key}"', written)


# line number -> (line text, planted values, hand-made expectation: "accepted" or a reason part)
E = {
    "type": "type.field@example.com",
    "id": "event.owner@example.org",
    "intl": "jürgen@exämple.de",
    "greek": "ανδρέας@παράδειγμα.ελ",
    "escaped_at": "escaped.at@example.net",
    "long": "long.value@example.com",
    "session": "SHOUT.CASE@EXAMPLE.COM",
    "broken": "broken.line@example.com",
    "action": "action.mail@example.com",
    "cjk": "用户@例子.广告",
    "user": "uid.mail@example.com",
}
P = {
    "source": "+1 555 010 7788",
    "session": "(555) 201-3344",
    "note": "+44 (0)20 7946 0958",
    "number_field": "555.867.5309",
    "id": "+49 151 2345 6789",
}
U = {
    "plain": "uid-plain-9826",
    "object": "uid-object-4471",
    "list": "uid-list-5582",
    "escaped_rejected": "uid-escaped-6693",
    "escaped_accepted": "uid-escaped-7704",
    "dup_a": "uid-dup-a-8815",
    "dup_b": "uid-dup-b-8826",
    "meta": "uid-meta-9937",
    "deep": "uid-deep-1048",
    "meta_object": "uid-metaobj-2159",
    "broken": "uid-broken-3260",
    "broken_escaped": "uid-brokenesc-4371",
    "python": "uid-python-5482",
    "truncated": "uid-truncated-6593",
    "in_list": "uid-inlist-7604",
    "number": "4471234567",
    "upper": "uid-upper-8715",
}

LINES: list[tuple[str, str]] = [
    (json.dumps(event("ok-plain", user_id=U["plain"])), "accepted"),
    (json.dumps({**event("r-type"), "type": E["type"]}), 'type: expected one of search, generation, review, '
     'data_quality, system_performance, business, got "[email]"'),
    (json.dumps(event(E["id"])), "id: must not hold personal data"),
    (json.dumps(event("ok-intl", **query_metadata("q1", f"write to {E['intl']} please"))), "accepted"),
    # ensure_ascii: the Greek address is written as \u escapes only
    (json.dumps({**event("r-greek", source="web"), "note": E["greek"]}), "source: expected one of"),
    (json.dumps(event("ok-escaped-at", **query_metadata("q2", f"mail {E['escaped_at']}"))).replace("@", "\\u0040"),
     "accepted"),
    (json.dumps({**event("r-long"), "source": "x" * 70 + " " + E["long"]}), "got a value of 95 characters"),
    (json.dumps(event("r-session-mail", session_id=E["session"])), "session_id: must not hold personal data"),
    (f'{{"id": "r-broken", "contact": "{E["broken"]}", ', "invalid JSON"),
    (json.dumps(event("ok-action", "generation", action=E["action"], generation_id="g", product_id="P1", model="m",
                      latency_ms=5, status="success")), "accepted"),
    (json.dumps({**event("r-cjk"), "type": "nope", "note": E["cjk"]}, ensure_ascii=False), "type: expected one of"),
    (json.dumps({**event("r-source-phone"), "source": P["source"]}),
     'source: expected one of api, dashboard, system, external, got "[phone]"'),
    (json.dumps(event("r-session-phone", session_id=P["session"])), "session_id: must not hold personal data"),
    (json.dumps(event("ok-phone-note", **query_metadata("q3", note=f"call {P['note']}"))), "accepted"),
    (json.dumps(event("r-number-field", **{**query_metadata("q4"), "response_time_ms": P["number_field"]})),
     'got "[phone]"'),
    (json.dumps(event(P["id"])), "id: must not hold personal data"),
    (json.dumps({**event("r-uid-object"), "user_id": {"id": U["object"]}}), "user_id: expected a string, got an object"),
    (json.dumps({**event("r-uid-list"), "user_id": ["x-first", U["list"]]}), "user_id: expected a string, got a list"),
    (with_key({**event("r-uid-escaped", user_id=U["escaped_rejected"]), "type": "nope"}, "user_id", '"user\\u005fid"'),
     "type: expected one of"),
    (with_key(event("ok-uid-escaped", user_id=U["escaped_accepted"]), "user_id", '"\\u0075ser_id"'), "accepted"),
    ('{"user_id": "%s", ' % U["dup_a"] + json.dumps({**event("r-dup", user_id=None), "type": "nope"})[1:-1]
     + ', "user_id": "%s"}' % U["dup_b"], "type: expected one of"),
    (json.dumps({**event("ok-meta-uid"), "metadata": query_metadata("q5", user_id=U["meta"])}), "accepted"),
    (json.dumps(event("ok-meta-deep", **query_metadata("q6", context={"items": [{"userId": U["deep"]}]}))),
     "accepted"),
    (json.dumps({**event("r-meta-uid-object"), "metadata": query_metadata("q7", user_id={"value": U["meta_object"]})}),
     "metadata: a user_id member must be a string or a number"),
    ('{"user_id": "%s", "id": ' % U["broken"], "invalid JSON"),
    ('{"us\\u0065r_id": "%s", "id": ' % U["broken_escaped"], "invalid JSON"),
    ("{'id': 'r-python', 'user_id': '%s'}" % U["python"], "invalid JSON"),
    ('{"id": "r-trunc", "user_id": "%s and more' % U["truncated"], "invalid JSON"),
    ('[{"user_id": "%s"}]' % U["in_list"], "not a JSON object"),
    (json.dumps({**event("r-uid-number"), "user_id": int(U["number"])}), "user_id: expected a string, got a number"),
    (json.dumps(event("ok-meta-upper", **query_metadata("q8", USER_ID=U["upper"]))), "accepted"),
    (json.dumps(event("ok-uid-mail", user_id=E["user"])), "accepted"),
]
ACCEPTED = ["ok-plain", "ok-intl", "ok-escaped-at", "ok-action", "ok-phone-note", "ok-uid-escaped", "ok-meta-uid",
            "ok-meta-deep", "ok-meta-upper", "ok-uid-mail"]
PLANTED = [*E.values(), *P.values(), *U.values(), "x-first"]


def every_value(warehouse) -> str:
    """Every column of every table of the warehouse schema, cast to text, lower-cased."""
    tables = [
        row[0]
        for row in warehouse.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = :schema",
            {"schema": warehouse.schema_name},
        )
    ]
    assert {"raw_events", "rejected_events", "ingested_files"} <= set(tables)
    texts = []
    for table in tables:
        columns = [
            row[0]
            for row in warehouse.query(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = :schema AND table_name = :t",
                {"schema": warehouse.schema_name, "t": table},
            )
        ]
        cast = ", ".join(f'CAST("{column}" AS VARCHAR)' for column in columns)
        texts += [" | ".join(str(v) for v in row) for row in warehouse.query(f'SELECT {cast} FROM "{table}"')]
    return "\n".join(texts).lower()


def metadata_of(warehouse, event_id: str) -> dict:
    value = warehouse.scalar("SELECT metadata FROM raw_events WHERE event_id = :id", {"id": event_id})
    return json.loads(value) if isinstance(value, str) else value


def test_no_planted_user_id_email_or_phone_reaches_any_table(warehouse, write_events):
    path = write_events([line for line, _ in LINES])
    result = EventLoader(warehouse, SALT).load_file(path)
    assert (result.accepted, result.rejected) == (10, 22)

    text = every_value(warehouse)
    for value in PLANTED:
        for form in {value.lower(), json.dumps(value)[1:-1].lower(), json.dumps(value, ensure_ascii=False)[1:-1].lower()}:
            assert form not in text, f"{value!r} stored as {form!r}"

    assert sorted(r[0] for r in warehouse.query("SELECT event_id FROM raw_events")) == sorted(ACCEPTED)
    rejected = {no: (event_id, reason, raw) for no, event_id, reason, raw in
                warehouse.query("SELECT line_no, event_id, reason, raw_text FROM rejected_events")}
    expected_rejects = {no: reason for no, (_, reason) in enumerate(LINES, 1) if reason != "accepted"}
    assert sorted(rejected) == sorted(expected_rejects)
    for no, reason in expected_rejects.items():
        assert reason in rejected[no][1], (no, rejected[no][1])
        assert rejected[no][2], no

    # the user ids that could be pseudonymized are, each its own, wherever they were written
    keys = dict(warehouse.query("SELECT event_id, user_key FROM raw_events"))
    assert keys["ok-plain"] == pseudonymize(U["plain"], SALT)
    assert keys["ok-uid-escaped"] == pseudonymize(U["escaped_accepted"], SALT)
    assert keys["ok-uid-mail"] == pseudonymize(E["user"], SALT)
    assert metadata_of(warehouse, "ok-meta-uid")["user_id"] == pseudonymize(U["meta"], SALT)
    assert metadata_of(warehouse, "ok-meta-deep")["context"] == {"items": [{"userId": pseudonymize(U["deep"], SALT)}]}
    assert metadata_of(warehouse, "ok-meta-upper")["USER_ID"] == pseudonymize(U["upper"], SALT)
    assert metadata_of(warehouse, "ok-intl")["query"] == "write to [email] please"
    assert metadata_of(warehouse, "ok-escaped-at")["query"] == "mail [email]"
    assert metadata_of(warehouse, "ok-phone-note")["note"] == "call [phone]"
    assert warehouse.scalar("SELECT action FROM raw_events WHERE event_id = 'ok-action'") == "[email]"

    # rejected lines: ids masked, user ids replaced by their pseudonyms, what cannot be
    # delimited withheld
    assert rejected[3][0] == "[email]" and rejected[16][0] == "[phone]"
    h = {name: pseudonymize(U[name], SALT) for name in U}
    assert rejected[25][2] == '{"user_id": "%s", "id": ' % h["broken"]
    assert rejected[27][2] == "{'id': 'r-python', 'user_id': \"%s\"}" % h["python"]
    assert rejected[29][2] == '[{"user_id": "%s"}]' % h["in_list"]
    assert rejected[26][2].startswith("[withheld: the line is not valid JSON and holds \\u escapes")
    assert rejected[28][2].startswith('{"id": "r-trunc", "user_id": "[withheld: not a string or a number')
    assert rejected[17][2].endswith('"user_id": "[withheld: not a string or a number; the rest of the line is not kept]"')
    assert h["dup_a"] in rejected[21][2] and h["dup_b"] in rejected[21][2]
    assert h["escaped_rejected"] in rejected[19][2]
    assert f'"user_id": "{h["number"]}"' in rejected[30][2]
    assert "[email]" in rejected[5][2] and "[email]" in rejected[11][2] and "[email]" in rejected[9][2]


@pytest.mark.parametrize(
    "text,masked",
    [
        ("write to jürgen@exämple.de now", "write to [email] now"),
        ("Иван@почта.рф", "[email]"),
        ("用户@例子.广告。", "[email]。"),
        ("a.b+tag@mail.example.org, c@d.io", "[email], [email]"),
        ("call (555)123-4567 or 555.123.4567", "call [phone] or [phone]"),
        ("+44 (0)20 7946 0958 / +4915123456789", "[phone] / [phone]"),
        # not personal data: ids, uuids, timestamps, prices, an address without a domain
        ("evt-20261117-0000145", "evt-20261117-0000145"),
        ("550e8400-e29b-41d4-a716-446655440000", "550e8400-e29b-41d4-a716-446655440000"),
        ("2026-03-10T12:00:00+05:30 12.50 1e+308", "2026-03-10T12:00:00+05:30 12.50 1e+308"),
        ("root@localhost", "root@localhost"),
    ],
)
def test_python_and_sql_masking_agree(text, masked):
    """`mask_text` (Python) and `mask_sql` (DuckDB's RE2) run one definition of the patterns."""
    assert mask_text(text) == masked
    with duckdb.connect() as db:
        assert db.execute(f"SELECT {mask_sql('t')} FROM (SELECT ? AS t)", [text]).fetchone()[0] == masked
