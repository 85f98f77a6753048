"""The synthetic traffic generator: determinism, the event contract, realistic proportions,
the catalog's gaps and variants, and the judgments."""

from __future__ import annotations

import collections
import csv
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kpi_pipelines.synthetic import GeneratedTraffic, generate

START = dt.date(2026, 3, 1)
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
SOURCES = {
    "search": "api",
    "system_performance": "api",
    "generation": "api",
    "review": "dashboard",
    "data_quality": "system",
    "business": "external",
}
# (type, action) -> {field: expected Python type}
METADATA: dict[tuple[str, str | None], dict[str, type | tuple[type, ...]]] = {
    ("search", "query"): {"query_id": str, "query": str, "result_ids": list, "response_time_ms": (int, float)},
    ("search", "click"): {"query_id": str, "product_id": str, "position": int},
    ("search", "feedback"): {"query_id": str, "satisfaction": int},
    ("generation", None): {"generation_id": str, "product_id": str, "model": str, "latency_ms": (int, float),
                           "status": str},
    ("review", None): {"generation_id": str, "product_id": str, "decision": str, "review_time_ms": (int, float)},
    ("business", "order"): {"order_id": str, "revenue": (int, float), "currency": str, "product_ids": list},
    ("system_performance", None): {"service": str, "endpoint": str, "latency_ms": (int, float), "status_code": int},
    ("data_quality", None): {"table": str, "check": str, "value": (int, float)},
}
ACTIONS = {"search": {"query", "click", "feedback"}, "business": {"order"}}


def violation(event: Any, results: dict[str, list[str]]) -> str | None:
    """Why a parsed line breaks the event contract of docs/design (None when it obeys it).
    `results` maps the query ids seen so far to their result ids."""
    if not isinstance(event, dict):
        return "not an object"
    for name in ("id", "type", "timestamp", "session_id", "source"):
        if not isinstance(event.get(name), str) or not event[name].strip():
            return f"{name}: required string"
    if event["type"] not in SOURCES:
        return "type: unknown"
    if event["source"] != SOURCES[event["type"]]:
        return "source: unexpected for the type"
    if not ISO.match(event["timestamp"]):
        return "timestamp: not ISO-8601 with a zone"
    dt.datetime.fromisoformat(event["timestamp"])
    if "user_id" in event and not (isinstance(event["user_id"], str) and event["user_id"]):
        return "user_id: not a string"
    metadata = event.get("metadata")
    if not isinstance(metadata, dict):
        return "metadata: required object"
    action = metadata.get("action")
    if event["type"] in ACTIONS and action not in ACTIONS[event["type"]]:
        return "metadata.action: unknown"
    rules = METADATA[(event["type"], action if event["type"] in ACTIONS else None)]
    for name, kind in rules.items():
        value = metadata.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"metadata.{name}: expected {kind}"
    experiment = metadata.get("experiment")
    if experiment is not None and not (
        isinstance(experiment, dict) and experiment.get("id") and experiment.get("variant")
    ):
        return "metadata.experiment: expected an object with id and variant"
    if event["type"] == "search" and action == "query":
        if not all(isinstance(p, str) for p in metadata["result_ids"]):
            return "metadata.result_ids: expected strings"
        if "refinement_of" in metadata and metadata["refinement_of"] not in results:
            return "metadata.refinement_of: unknown query"
        results[metadata["query_id"]] = metadata["result_ids"]
    if event["type"] == "search" and action == "click":
        shown = results.get(metadata["query_id"], [])
        position = metadata["position"]
        if not 1 <= position <= len(shown) or shown[position - 1] != metadata["product_id"]:
            return "metadata.position: not where the product was shown"
    if event["type"] == "search" and action == "feedback" and not 1 <= metadata["satisfaction"] <= 5:
        return "metadata.satisfaction: out of range"
    if event["type"] == "generation" and metadata["status"] not in ("success", "error"):
        return "metadata.status: unknown"
    if event["type"] == "review" and metadata["decision"] not in ("approved", "rejected", "edited"):
        return "metadata.decision: unknown"
    if event["type"] == "business":
        if metadata["revenue"] <= 0 or round(metadata["revenue"], 2) != metadata["revenue"]:
            return "metadata.revenue: not a positive amount"
        if not metadata["product_ids"] or not all(isinstance(p, str) for p in metadata["product_ids"]):
            return "metadata.product_ids: expected product ids"
    if event["type"] == "system_performance" and not 100 <= metadata["status_code"] <= 599:
        return "metadata.status_code: out of range"
    return None


@dataclass
class Scan:
    """Every line of an events file, classified."""

    lines: int = 0
    invalid: collections.Counter[str] = field(default_factory=collections.Counter)
    duplicates: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)


def scan(path: Path) -> Scan:
    out = Scan()
    results: dict[str, list[str]] = {}
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            out.lines += 1
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                out.invalid["invalid JSON"] += 1
                continue
            reason = violation(event, results)
            if reason is not None:
                out.invalid[reason] += 1
            elif event["id"] in seen:
                out.duplicates += 1
            else:
                seen.add(event["id"])
                out.events.append(event)
    return out


def utc_day(event: dict[str, Any]) -> dt.date:
    return dt.datetime.fromisoformat(event["timestamp"]).astimezone(dt.timezone.utc).date()


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> tuple[GeneratedTraffic, Scan]:
    """Three days of 1500 sessions, with 1% bad and 1% duplicate lines."""
    result = generate(tmp_path_factory.mktemp("traffic"), days=3, sessions=1500, seed=7, start=START, bad_rate=0.01)
    return result, scan(result.events_path)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[GeneratedTraffic, Scan]:
    """Eight days of 600 sessions, no bad or duplicate lines."""
    result = generate(tmp_path_factory.mktemp("clean"), days=8, sessions=600, seed=3, start=START, bad_rate=0)
    return result, scan(result.events_path)


def test_same_arguments_give_the_same_bytes(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", days=2, sessions=80, seed=11, start=START, bad_rate=0.02)
    second = generate(tmp_path / "b", days=2, sessions=80, seed=11, start=START, bad_rate=0.02)
    generate(tmp_path / "c", days=2, sessions=80, seed=12, start=START, bad_rate=0.02)
    for name in ("events.jsonl", "catalog.csv", "judgments.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    counts = ("events", "bad_lines", "duplicate_lines", "products", "judgments")
    assert [getattr(first, c) for c in counts] == [getattr(second, c) for c in counts]


def test_counts_match_what_was_written(traffic: tuple[GeneratedTraffic, Scan]) -> None:
    result, found = traffic
    assert result.events == found.lines
    assert result.bad_lines == sum(found.invalid.values())
    assert result.duplicate_lines == found.duplicates
    assert result.events == len(found.events) + result.bad_lines + result.duplicate_lines
    assert 0.006 < result.bad_lines / result.events < 0.014
    assert 0.006 < result.duplicate_lines / result.events < 0.014
    reasons = set(found.invalid)
    assert {"invalid JSON", "timestamp: required string", "timestamp: not ISO-8601 with a zone", "type: unknown",
            "metadata.position: not where the product was shown"} <= reasons, reasons
    assert result.products == 2000
    assert result.judgments == sum(1 for _ in result.judgments_path.open()) - 1


def test_no_bad_or_duplicate_lines_at_rate_zero(clean: tuple[GeneratedTraffic, Scan]) -> None:
    result, found = clean
    assert result.bad_lines == result.duplicate_lines == 0
    assert not found.invalid and found.duplicates == 0
    assert len(found.events) == result.events


def test_time_span_and_order(clean: tuple[GeneratedTraffic, Scan]) -> None:
    _, found = clean
    days = [utc_day(e) for e in found.events]
    assert min(days) == START
    assert max(days) <= START + dt.timedelta(days=8)
    assert sum(1 for d in days if d == START + dt.timedelta(days=8)) < 0.002 * len(days)
    instants = [dt.datetime.fromisoformat(e["timestamp"]).timestamp() for e in found.events]
    assert all(a <= b for a, b in zip(instants, instants[1:]))
    zoned = sum(1 for e in found.events if not e["timestamp"].endswith("Z"))
    assert 0.2 < zoned / len(found.events) < 0.4
    assert {e["timestamp"][-6:] for e in found.events} >= {"+05:30", "-08:00", "+02:00"}
    session_days: dict[str, set[dt.date]] = collections.defaultdict(set)
    for event, day in zip(found.events, days):
        if event["session_id"].startswith("sess-"):
            session_days[event["session_id"]].add(day)
    assert len(session_days) == 8 * 600
    assert any(len(d) > 1 for d in session_days.values()), "no session crosses UTC midnight"
    hours = collections.Counter(dt.datetime.fromisoformat(e["timestamp"]).astimezone(dt.timezone.utc).hour
                                for e in found.events if e["type"] == "search")
    assert max(hours.values()) > 3 * min(hours.values()), "no daily cycle"


def test_search_proportions(traffic: tuple[GeneratedTraffic, Scan]) -> None:
    _, found = traffic
    search = [e for e in found.events if e["type"] == "search"]
    queries = {e["metadata"]["query_id"]: e for e in search if e["metadata"]["action"] == "query"}
    clicks = [e for e in search if e["metadata"]["action"] == "click"]
    clicked = collections.Counter(e["metadata"]["query_id"] for e in clicks)
    feedback = [e for e in search if e["metadata"]["action"] == "feedback"]
    n = len(queries)
    assert 0.45 < len(clicked) / n < 0.8
    assert max(clicked.values()) <= 3
    assert 0.025 < sum(1 for e in queries.values() if not e["metadata"]["result_ids"]) / n < 0.08
    assert 0.12 < sum(1 for e in queries.values() if "refinement_of" in e["metadata"]) / n < 0.28
    assert 0.11 < len(feedback) / n < 0.19
    sizes = collections.Counter(len(e["metadata"]["result_ids"]) for e in queries.values())
    assert sizes[10] / n > 0.7 and any(sizes[k] for k in range(3, 10))
    pii = sum(1 for e in queries.values() if re.search(r"@|\b\d{3}-\d{3}-\d{4}\b", e["metadata"]["query"]))
    assert 0.003 < pii / n < 0.025
    texts = {e["metadata"]["query"] for e in queries.values()}
    assert {"red running shoes", "Red Running Shoes", "red running shoes "} & texts
    assert any("  " in t for t in texts) and any(t.isupper() for t in texts)

    positions = collections.Counter(e["metadata"]["position"] for e in clicks)
    assert positions[1] > 1.5 * positions[2] > positions[5] > positions[10]
    when = {qid: dt.datetime.fromisoformat(e["timestamp"]) for qid, e in queries.items()}
    delays = [(dt.datetime.fromisoformat(e["timestamp"]) - when[e["metadata"]["query_id"]]).total_seconds()
              for e in clicks]
    assert 1 <= min(delays) and max(delays) <= 61

    satisfied = collections.defaultdict(list)
    for e in feedback:
        satisfied[e["metadata"]["query_id"] in clicked].append(e["metadata"]["satisfaction"])
    assert sum(satisfied[True]) / len(satisfied[True]) > sum(satisfied[False]) / len(satisfied[False]) + 1


def test_users_sessions_and_orders(clean: tuple[GeneratedTraffic, Scan]) -> None:
    _, found = clean
    shopper = [e for e in found.events if e["session_id"].startswith("sess-")]
    sessions = {e["session_id"] for e in shopper}
    anonymous = {e["session_id"] for e in shopper if "user_id" not in e}
    assert 0.01 < len(anonymous) / len(sessions) < 0.06
    users = {e["user_id"] for e in shopper if "user_id" in e}
    emails = {u for u in users if "@" in u}
    assert 0.05 < len(emails) / len(users) < 0.16
    assert all(re.fullmatch(r"user-\d{6}", u) for u in users - emails)

    by_day: dict[dt.date, set[str]] = collections.defaultdict(set)
    for e in shopper:
        if "user_id" in e:
            by_day[utc_day(e)].add(e["user_id"])
    first = [START + dt.timedelta(days=i) for i in range(8)]
    day1 = [len(by_day[a] & by_day[b]) / len(by_day[a]) for a, b in zip(first, first[1:])]
    assert all(0.18 < r < 0.4 for r in day1), day1
    day7 = len(by_day[first[0]] & by_day[first[7]]) / len(by_day[first[0]])
    assert 0.03 < day7 < min(day1)

    orders = [e for e in found.events if e["type"] == "business"]
    assert 0.025 < len(orders) / len(sessions) < 0.07
    assert len({e["metadata"]["order_id"] for e in orders}) == len(orders)
    currencies = collections.Counter(e["metadata"]["currency"] for e in orders)
    assert set(currencies) == {"USD", "EUR", "GBP"} and currencies["USD"] > 0.7 * len(orders)
    clicked = collections.defaultdict(set)
    for e in shopper:
        if e["metadata"].get("action") == "click":
            clicked[e["session_id"]].add(e["metadata"]["product_id"])
    for order in orders:
        products = set(order["metadata"]["product_ids"])
        assert products <= clicked[order["session_id"]] or len(products) == 1

    assignment: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
    for e in shopper:
        if e["type"] in ("search", "business"):
            experiment = e["metadata"]["experiment"]
            assignment[e["session_id"]].add((experiment["id"], experiment["variant"]))
    assert all(len(a) == 1 for a in assignment.values())
    arms = collections.Counter(next(iter(a)) for a in assignment.values())
    assert {experiment for experiment, _ in arms} == {"ranker_v2", "search_layout_b"}
    assert all(0.2 < count / len(assignment) < 0.3 for count in arms.values()), arms


def test_generation_review_and_system_events(clean: tuple[GeneratedTraffic, Scan]) -> None:
    _, found = clean
    generations = {e["metadata"]["generation_id"]: e for e in found.events if e["type"] == "generation"}
    assert {e["metadata"]["model"] for e in generations.values()} == {"gpt-4o-mini", "claude-3-haiku", "llama-3-8b"}
    errors = sum(1 for e in generations.values() if e["metadata"]["status"] == "error")
    assert 0.005 < errors / len(generations) < 0.05
    reviews = [e for e in found.events if e["type"] == "review"]
    decisions = collections.Counter(e["metadata"]["decision"] for e in reviews)
    assert 0.6 < decisions["approved"] / len(reviews) < 0.8
    assert 0.12 < decisions["edited"] / len(reviews) < 0.28
    assert 0.05 < decisions["rejected"] / len(reviews) < 0.16
    for review in reviews:
        generation = generations[review["metadata"]["generation_id"]]
        assert generation["metadata"]["status"] == "success"
        assert generation["metadata"]["product_id"] == review["metadata"]["product_id"]
        assert dt.datetime.fromisoformat(review["timestamp"]) > dt.datetime.fromisoformat(generation["timestamp"])

    system = [e["metadata"] for e in found.events if e["type"] == "system_performance"]
    assert {m["service"] for m in system} == {"search-api", "generation-api", "catalog-api"}
    assert {m["endpoint"] for m in system} == {"/api/search", "/api/generate", "/api/products/{id}"}
    codes = collections.Counter(m["status_code"] for m in system)
    assert codes[200] / len(system) > 0.95 and codes[404] and 0.003 < codes[500] / len(system) < 0.03
    quality = [e["metadata"] for e in found.events if e["type"] == "data_quality"]
    assert {m["table"] for m in quality} == {"products"}
    assert {"null_description", "invalid_price"} <= {m["check"] for m in quality}


def test_catalog_has_gaps_and_variants(clean: tuple[GeneratedTraffic, Scan]) -> None:
    result, _ = clean
    with result.catalog_path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["product_id", "title", "description", "brand", "category", "price", "currency",
                                     "color", "size"]
        rows = list(reader)
    assert [r["product_id"] for r in rows] == [f"P{n:05d}" for n in range(1, 2001)]

    def blank(name: str) -> float:
        return sum(1 for r in rows if not r[name].strip()) / len(rows)

    assert 0.05 < blank("description") < 0.11
    assert 0.015 < blank("brand") < 0.05
    assert 0.01 < blank("title") < 0.035
    assert 0.01 < blank("price") < 0.035
    brands = {r["brand"] for r in rows}
    spelled_four_ways = [b for b in brands if {b.upper(), b.lower() + " ", b + " Inc."} <= brands]
    assert len(spelled_four_ways) >= 10 and {"Nike", "NIKE", "nike "} <= brands
    assert {"Electronics", "electronics", " ELECTRONICS "} <= {r["category"] for r in rows}
    prices = [r["price"] for r in rows]
    assert sum(1 for p in prices if re.fullmatch(r"\d+\.\d\d", p)) > 0.8 * len(rows)
    assert any(p.startswith("$") for p in prices) and any(re.fullmatch(r"\d+,\d\d", p) for p in prices)
    assert any(p.endswith(" USD") for p in prices)
    assert {"USD", "usd", "EUR", ""} <= {r["currency"] for r in rows}
    titles = [r["title"] for r in rows if r["title"]]
    assert any("  " in t for t in titles) and any(t != t.rstrip() for t in titles)
    assert any(t.isupper() for t in titles)


def test_judgments_and_ranking_quality(traffic: tuple[GeneratedTraffic, Scan]) -> None:
    result, found = traffic
    with result.judgments_path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["query", "product_id", "relevance"]
        rows = list(reader)
    grades: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for row in rows:
        grades[row["query"]][row["product_id"]] = int(row["relevance"])
    assert 50 <= len(grades) <= 70
    assert all(5 <= len(g) <= 30 for g in grades.values())
    assert {v for g in grades.values() for v in g.values()} == {0, 1, 2, 3}
    only_zeros = [q for q, g in grades.items() if not any(g.values())]
    assert 1 <= len(only_zeros) <= 4
    products = {f"P{n:05d}" for n in range(1, 2001)}
    assert all(p in products for g in grades.values() for p in g)

    precision, reciprocal, shown, unjudged = [], [], 0, 0
    for event in found.events:
        metadata = event["metadata"]
        if event["type"] != "search" or metadata["action"] != "query":
            continue
        judged = grades.get(" ".join(metadata["query"].lower().split()))
        if judged is None or not any(judged.values()):
            continue
        ranked = [judged.get(p, 0) for p in metadata["result_ids"]]
        shown += len(ranked)
        unjudged += sum(1 for p in metadata["result_ids"] if p not in judged)
        precision.append(sum(1 for g in ranked[:5] if g > 0) / 5)
        reciprocal.append(next((1 / k for k, g in enumerate(ranked, 1) if g > 0), 0.0))
    assert 0.1 < unjudged / shown < 0.5
    assert 0.45 < sum(precision) / len(precision) < 0.9
    assert 0.6 < sum(reciprocal) / len(reciprocal) < 0.97


def test_default_start_covers_the_last_full_days(tmp_path: Path) -> None:
    before = dt.datetime.now(dt.timezone.utc).date()
    result = generate(tmp_path, days=2, sessions=20, bad_rate=0)
    after = dt.datetime.now(dt.timezone.utc).date()
    first = json.loads(result.events_path.open().readline())
    assert utc_day(first) in {before - dt.timedelta(days=2), after - dt.timedelta(days=2)}


@pytest.mark.parametrize("kwargs", [{"days": 0}, {"sessions": -1}, {"bad_rate": 0.7}])
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path, **kwargs)
