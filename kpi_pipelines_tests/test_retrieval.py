"""Retrieval metrics on DuckDB and PostgreSQL: hand-computed cases for every metric and
edge case, and agreement with trec_eval (pytrec_eval) on a generated set."""

from __future__ import annotations

import datetime as dt
import random
from math import log2
from pathlib import Path
from typing import Any

import pytest
import pytrec_eval
from dagster import materialize

from kpi_pipelines.ingestion.catalog import load_judgments
from kpi_pipelines.ingestion.loader import EventLoader
from kpi_pipelines.kpis.store import Metric
from kpi_pipelines.retrieval import retrieval_metrics
from kpi_pipelines.retrieval.metrics import METRIC_NAMES, compute_retrieval_metrics
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines_tests.conftest import SALT, event, warehouse_resource

JUDGMENTS = [
    ("red shoes", "P1", 3),
    ("red shoes", "P2", 0),
    ("red shoes", "P3", 1),
    ("red shoes", "P4", 2),
    ("red shoes", "P5", 1),
    ("blue hat", "H1", 0),  # judged, nothing relevant
    ("blue hat", "H2", 0),
    ("  Green   BAG ", "G1", 1),  # normalized like the events' text
]
# The ideal DCG@10 of "red shoes": its grades sorted best first (3, 2, 1, 1, 0).
IDEAL_RED = 3 / log2(2) + 2 / log2(3) + 1 / log2(4) + 1 / log2(5)
TRECEVAL_MEASURES = {"P_5", "P_10", "recall_5", "recall_10", "recip_rank", "ndcg_cut_10"}
# our name -> pytrec_eval's
MEASURE_OF = {
    "retrieval.precision_at_5": "P_5",
    "retrieval.precision_at_10": "P_10",
    "retrieval.recall_at_5": "recall_5",
    "retrieval.recall_at_10": "recall_10",
    "retrieval.mrr": "recip_rank",
    "retrieval.ndcg_at_10": "ndcg_cut_10",
}


def normalized(text: str) -> str:
    return " ".join(text.lower().split())


def query(event_id: str, text: str, results: list[str], timestamp: str, **envelope: Any) -> dict[str, Any]:
    return event(
        event_id, timestamp=timestamp, action="query", query_id=f"q-{event_id}", query=text,
        result_ids=results, response_time_ms=12, **envelope,
    )


def load(warehouse: Warehouse, write_events, tmp_path: Path, events: list[dict], judgments: list[tuple]) -> None:
    csv_path = tmp_path / "judgments.csv"
    csv_path.write_text(
        "query,product_id,relevance\n" + "".join(f'"{q}",{p},{r}\n' for q, p, r in judgments), encoding="utf-8"
    )
    assert load_judgments(warehouse, csv_path).problems == []
    result = EventLoader(warehouse, SALT).load_file(write_events(events))
    assert (result.accepted, result.rejected) == (len(events), 0)


def by_day(metrics: list[Metric]) -> dict[dt.date, dict[str, float]]:
    out: dict[dt.date, dict[str, float]] = {}
    for metric in metrics:
        assert metric.dimensions == {}
        out.setdefault(metric.day, {})[metric.name] = metric.value
    return out


def scores(p5: float, p10: float, r5: float, r10: float, rr: float, ndcg: float) -> dict[str, float]:
    return dict(zip(METRIC_NAMES[1:], (p5, p10, r5, r10, rr, ndcg)))


def day_of(*events: dict[str, float]) -> dict[str, float]:
    """The day's values: each metric averaged over its judged query events."""
    averaged = {name: sum(e[name] for e in events) / len(events) for name in METRIC_NAMES[1:]}
    return {"retrieval.judged_queries": float(len(events)), **averaged}


# One judged query event per case: its results and its hand-computed scores.
PARTIAL = scores(2 / 5, 2 / 10, 2 / 4, 2 / 4, 1 / 2, (3 / log2(3) + 1 / log2(5)) / IDEAL_RED)  # [X, P1, P2, P3]
EMPTY = scores(0, 0, 0, 0, 0, 0)  # no results at all: still counted
NOTHING_RELEVANT = scores(0, 0, 0, 0, 0, 0)  # "blue hat": recall and nDCG 0, not undefined
DEEP = scores(0, 1 / 10, 0, 1 / 4, 1 / 6, (2 / log2(7)) / IDEAL_RED)  # P4 at rank 6, P1 at rank 11
SHORT_PERFECT = scores(1 / 5, 1 / 10, 1, 1, 1, 1)  # [G1]: precision still divides by k
# A repeated product counts at its best rank only; the repeat is a non-relevant result.
REPEATED = scores(1 / 5, 1 / 10, 1 / 4, 1 / 4, 1, 3 / IDEAL_RED)  # [P1, P1, P2]
REPEATED_PERFECT = scores(1 / 5, 1 / 10, 1, 1, 1, 1)  # [G1, G1]: recall and nDCG stay within [0, 1]

DEEP_LIST = ["Y1", "Y2", "Y3", "Y4", "Y5", "P4", "Y7", "Y8", "Y9", "Y10", "P1", "P5"]


def test_each_metric_and_edge_case_by_hand(warehouse, write_events, tmp_path):
    events = [
        query("e1", "  RED   shoes ", ["X", "P1", "P2", "P3"], "2026-03-01T12:00:00Z"),
        query("e2", "red shoes", [], "2026-03-02T12:00:00Z"),
        query("e3", "Blue Hat", ["H1", "P1"], "2026-03-03T12:00:00Z"),
        query("e4", "red shoes", DEEP_LIST, "2026-03-04T12:00:00Z"),
        # 03:00 on March 6 in India is 21:30 UTC on March 5
        query("e5", "green\tbag", ["G1"], "2026-03-06T03:00:00+05:30"),
        query("e6", "red shoes", ["P1", "P1", "P2"], "2026-03-06T12:00:00Z"),
        # March 7: one text searched three times counts three times; unjudged text and clicks ignored
        query("e7", "red shoes", ["X", "P1", "P2", "P3"], "2026-03-07T09:00:00Z"),
        query("e8", "RED SHOES", ["X", "P1", "P2", "P3"], "2026-03-07T10:00:00Z"),
        query("e9", "red  shoes", [], "2026-03-07T11:00:00Z"),
        query("e10", "purple shoes", ["P1"], "2026-03-07T12:00:00Z"),
        event("e11", timestamp="2026-03-07T12:00:05Z", action="click", query_id="q-e7", product_id="P1", position=2),
        query("e12", "green bag", ["G1", "G1"], "2026-03-08T12:00:00Z"),
        # March 9: only an unjudged query: no retrieval rows at all
        query("e13", "nothing judged", ["P1"], "2026-03-09T12:00:00Z"),
    ]
    load(warehouse, write_events, tmp_path, events, JUDGMENTS)

    got = by_day(compute_retrieval_metrics(warehouse, dt.date(2026, 3, 1), dt.date(2026, 3, 10)))

    expected = {
        dt.date(2026, 3, 1): day_of(PARTIAL),
        dt.date(2026, 3, 2): day_of(EMPTY),
        dt.date(2026, 3, 3): day_of(NOTHING_RELEVANT),
        dt.date(2026, 3, 4): day_of(DEEP),
        dt.date(2026, 3, 5): day_of(SHORT_PERFECT),
        dt.date(2026, 3, 6): day_of(REPEATED),
        dt.date(2026, 3, 7): day_of(PARTIAL, PARTIAL, EMPTY),
        dt.date(2026, 3, 8): day_of(REPEATED_PERFECT),
    }
    assert got.keys() == expected.keys()
    for day, values in expected.items():
        assert got[day] == pytest.approx(values, abs=1e-12), day


def test_only_the_requested_days_are_computed(warehouse, write_events, tmp_path):
    events = [
        query("a", "red shoes", ["P1"], "2026-03-01T23:59:59Z"),
        query("b", "red shoes", ["P2"], "2026-03-02T00:00:00Z"),
        query("c", "red shoes", ["P3"], "2026-03-03T00:00:00+01:00"),  # 23:00 UTC on March 2
    ]
    load(warehouse, write_events, tmp_path, events, JUDGMENTS)
    got = by_day(compute_retrieval_metrics(warehouse, dt.date(2026, 3, 2), dt.date(2026, 3, 3)))
    assert list(got) == [dt.date(2026, 3, 2)]
    assert got[dt.date(2026, 3, 2)]["retrieval.judged_queries"] == 2
    assert got[dt.date(2026, 3, 2)]["retrieval.mrr"] == pytest.approx(0.5)


def test_no_judgments_means_no_rows(warehouse, write_events, tmp_path):
    load(warehouse, write_events, tmp_path, [query("a", "red shoes", ["P1"], "2026-03-01T12:00:00Z")], [])
    assert compute_retrieval_metrics(warehouse, dt.date(2026, 3, 1), dt.date(2026, 3, 2)) == []


def generated_set(seed: int = 7) -> tuple[list[tuple[str, str, int]], list[dict[str, Any]]]:
    """Random judgments and a few hundred query events over three days, covering every edge
    case: empty lists, lists shorter than 5 and 10 and longer than 10, texts judged with
    nothing relevant, unjudged texts, judged and unjudged products, case and spacing variants,
    timestamps written with offsets that move the UTC day, products repeated within a list."""
    rnd = random.Random(seed)
    products = [f"P{i:02d}" for i in range(24)]
    texts = [f"query {i}" for i in range(24)]
    judgments: list[tuple[str, str, int]] = []
    for i, text in enumerate(texts[:20]):  # the last 4 texts stay unjudged
        judged = rnd.sample(products, rnd.randint(1, 15))
        for product in judged:
            grade = 0 if i < 4 else rnd.choice((0, 0, 1, 1, 2, 3))  # the first 4: nothing relevant
            judgments.append((text, product, grade))
    events = []
    for n in range(360):
        text = rnd.choice(texts)
        spelled = rnd.choice((text, text.upper(), f"  {text} ", text.replace(" ", "   "), text.title()))
        length = rnd.choice((0, 0, 1, 3, 5, 7, 10, 10, 12, 15))
        day = dt.date(2026, 4, 1) + dt.timedelta(days=rnd.randrange(3))
        moment = dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=rnd.randrange(86_400))
        offset = dt.timezone(dt.timedelta(hours=rnd.choice((0, 0, 5.5, -7))))
        stamp = moment.replace(tzinfo=dt.timezone.utc).astimezone(offset).isoformat()
        results = rnd.sample(products, length)
        if results and rnd.random() < 0.15:
            results.insert(rnd.randrange(len(results) + 1), rnd.choice(results))
        events.append(query(f"g{n:04d}", spelled, results, stamp))
    return judgments, events


def trec_eval_by_day(judgments: list[tuple[str, str, int]], events: list[dict[str, Any]]) -> dict[dt.date, dict[str, float]]:
    """trec_eval's values per UTC day, averaged over the day's judged query events."""
    qrels_by_text: dict[str, dict[str, int]] = {}
    for text, product, grade in judgments:
        qrels_by_text.setdefault(normalized(text), {})[product] = grade
    days: dict[dt.date, tuple[dict, dict]] = {}
    for e in events:
        text = normalized(e["metadata"]["query"])
        if text not in qrels_by_text:
            continue
        day = dt.datetime.fromisoformat(e["timestamp"]).astimezone(dt.timezone.utc).date()
        qrels, run = days.setdefault(day, ({}, {}))
        # Each event is its own trec_eval query: qid = event id, the run its ranked list with
        # descending scores (trec_eval ranks by score), the qrels its normalized text's judgments.
        qrels[e["id"]] = qrels_by_text[text]
        # trec_eval refuses a ranking that repeats a document; ours counts a repeat as a
        # non-relevant result at its rank, i.e. an unjudged placeholder document there.
        results = [p if p not in e["metadata"]["result_ids"][:rank] else f"repeat-{rank}"
                   for rank, p in enumerate(e["metadata"]["result_ids"])]
        run[e["id"]] = {product: float(len(results) - rank) for rank, product in enumerate(results)}
    out = {}
    for day, (qrels, run) in days.items():
        evaluated = pytrec_eval.RelevanceEvaluator(qrels, TRECEVAL_MEASURES).evaluate(run)
        # trec_eval averages only over the queries it evaluates: a query without retrieved
        # documents or judged relevant ones may be left out (trec_eval without -c). Our
        # definition keeps every judged query event with 0s, as `trec_eval -c` does, so a
        # query pytrec_eval leaves out counts here as 0 on every measure.
        zeros = dict.fromkeys(TRECEVAL_MEASURES, 0.0)
        per_query = [evaluated.get(qid, zeros) for qid in qrels]
        out[day] = {"retrieval.judged_queries": float(len(per_query))}
        for name, measure in MEASURE_OF.items():
            out[day][name] = sum(values[measure] for values in per_query) / len(per_query)
    return out


def test_agrees_with_trec_eval_on_a_generated_set(warehouse, write_events, tmp_path):
    judgments, events = generated_set()
    by_text = {normalized(t) for t, _, _ in judgments}
    judged = [e for e in events if normalized(e["metadata"]["query"]) in by_text]
    relevant = {normalized(t) for t, _, g in judgments if g >= 1}
    # the generated set covers every edge case
    assert any(not e["metadata"]["result_ids"] for e in judged)
    assert any(0 < len(e["metadata"]["result_ids"]) < 5 for e in judged)
    assert any(len(e["metadata"]["result_ids"]) > 10 for e in judged)
    assert any(normalized(e["metadata"]["query"]) not in relevant for e in judged)
    assert len(judged) < len(events)
    assert any(e["metadata"]["query"] != normalized(e["metadata"]["query"]) for e in judged)
    assert any(not e["timestamp"].endswith("+00:00") for e in judged)
    assert any(len(set(e["metadata"]["result_ids"])) < len(e["metadata"]["result_ids"]) for e in judged)

    load(warehouse, write_events, tmp_path, events, judgments)
    got = by_day(compute_retrieval_metrics(warehouse, dt.date(2026, 4, 1), dt.date(2026, 4, 4)))
    expected = trec_eval_by_day(judgments, events)

    assert got.keys() == expected.keys() == {dt.date(2026, 4, d) for d in (1, 2, 3)}
    for day, values in expected.items():
        assert got[day] == pytest.approx(values, abs=1e-9, rel=0), day


def test_asset_writes_its_partition_once(warehouse, write_events, tmp_path):
    load(warehouse, write_events, tmp_path, [query("a", "red shoes", ["P1"], "2026-03-01T12:00:00Z")], JUDGMENTS)
    resource = warehouse_resource(warehouse)
    for _ in range(2):  # re-materializing replaces the partition's rows
        result = materialize([retrieval_metrics], partition_key="2026-03-01", resources={"warehouse": resource})
        assert result.success
    rows = warehouse.query(
        "SELECT metric_name, metric_value, dimensions FROM kpi_metrics WHERE source_asset = 'retrieval_metrics'"
    )
    assert sorted(name for name, _, _ in rows) == sorted(METRIC_NAMES)
    assert {dims for _, _, dims in rows} == {"{}"}
    assert dict((name, value) for name, value, _ in rows)["retrieval.mrr"] == 1.0
