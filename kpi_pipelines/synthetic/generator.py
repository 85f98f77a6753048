"""Realistic, deterministic synthetic AutoDescribe traffic.

`generate` writes three files: `events.jsonl` (events of the contract in docs/events.md: search
sessions with queries, clicks, feedback and orders, LLM generations and their reviews,
service latencies, catalog data-quality signals), `catalog.csv` (products with the gaps
and spelling variants of a real catalog) and `judgments.csv` (graded relevance).

Everything derives from one seed: `random.Random(seed)` for per-event decisions and
`numpy.random.default_rng(seed)` for vectorized draws. Events are produced one UTC day at
a time, sorted by time and streamed to disk; events of a day that fall after its midnight
(sessions crossing it, late reviews) are carried into the next day's batch.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import math
import random
from bisect import bisect_left
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

DAY_MS = 86_400_000
EPOCH = dt.date(1970, 1, 1)
CATALOG_SIZE = 2000

_encode = json.JSONEncoder(separators=(",", ":")).encode

# ---------------------------------------------------------------------------------------
# Catalog taxonomy: category -> (product type, typical price); colours, sizes and brands.

PRODUCT_TYPES: dict[str, list[tuple[str, float]]] = {
    "Shoes": [
        ("running shoes", 89.99), ("hiking boots", 129.0), ("sneakers", 69.99),
        ("sandals", 34.99), ("dress shoes", 99.0), ("slippers", 24.99),
    ],
    "Clothing": [
        ("t-shirt", 19.99), ("hoodie", 49.99), ("jeans", 59.99), ("rain jacket", 89.99),
        ("winter coat", 159.0), ("yoga pants", 44.99), ("socks", 12.99),
    ],
    "Electronics": [
        ("wireless earbuds", 79.99), ("bluetooth speaker", 59.99), ("phone charger", 19.99),
        ("usb-c cable", 12.99), ("mechanical keyboard", 99.99), ("wireless mouse", 29.99),
        ("smart watch", 199.0), ("noise cancelling headphones", 249.0), ("power bank", 39.99),
        ("laptop stand", 34.99),
    ],
    "Home & Kitchen": [
        ("coffee maker", 89.0), ("chef knife", 49.99), ("cast iron skillet", 39.99),
        ("blender", 69.99), ("air fryer", 99.0), ("water bottle", 24.99), ("bath towels", 29.99),
        ("desk lamp", 39.99),
    ],
    "Sports & Outdoors": [
        ("yoga mat", 29.99), ("camping tent", 149.0), ("sleeping bag", 79.99), ("dumbbells", 59.99),
        ("bike helmet", 49.99), ("hiking backpack", 89.99), ("tennis racket", 119.0),
    ],
    "Beauty": [("face moisturizer", 18.99), ("sunscreen", 14.99), ("shampoo", 9.99), ("hair dryer", 59.99)],
    "Toys & Games": [("building blocks", 39.99), ("board game", 29.99), ("jigsaw puzzle", 19.99), ("plush toy", 15.99)],
    "Pet Supplies": [("dog bed", 49.99), ("cat toy", 9.99), ("dog leash", 19.99)],
}
COLORS: dict[str, tuple[str, ...]] = {
    "Shoes": ("red", "black", "white", "blue", "grey", "green", "pink", "navy"),
    "Clothing": ("red", "black", "white", "blue", "grey", "green", "pink", "navy"),
    "Electronics": ("black", "white", "silver", "blue"),
    "Home & Kitchen": ("black", "white", "red", "silver", "green"),
    "Sports & Outdoors": ("black", "blue", "green", "orange", "purple"),
    "Beauty": ("",),
    "Toys & Games": ("red", "blue", "yellow", "multicolor"),
    "Pet Supplies": ("brown", "grey", "blue", "red"),
}
SIZES: dict[str, tuple[str, ...]] = {
    "Shoes": ("6", "7", "7.5", "8", "8.5", "9", "9.5", "10", "10.5", "11", "12"),
    "Clothing": ("XS", "S", "M", "L", "XL", "XXL"),
}
BRANDS: dict[str, tuple[str, ...]] = {
    "Shoes": ("Nike", "Adidas", "New Balance", "Asics", "Merrell"),
    "Clothing": ("Levi's", "Patagonia", "Uniqlo", "Columbia", "Nike"),
    "Electronics": ("Sony", "Anker", "Logitech", "Samsung", "JBL", "Apple"),
    "Home & Kitchen": ("KitchenAid", "Cuisinart", "Lodge", "OXO", "Philips"),
    "Sports & Outdoors": ("Coleman", "Osprey", "Wilson", "Bowflex", "Manduka"),
    "Beauty": ("CeraVe", "Neutrogena", "Dyson", "Olay"),
    "Toys & Games": ("LEGO", "Hasbro", "Ravensburger", "Mattel"),
    "Pet Supplies": ("Kong", "Petmate", "Frisco"),
}
MODEL_NAMES = ("Pro", "Air", "Classic", "Ultra", "Lite", "Max", "Flex", "Trail", "Core", "Edge", "Go", "Prime")
DESCRIPTIONS = (
    "The {brand} {model} {kind} in {color} is built for everyday use, with durable materials and a comfortable fit.",
    "{brand} {model} {kind}: lightweight, reliable and easy to care for. A customer favourite in {color}.",
    "Upgrade your routine with the {model} {kind} from {brand}. Finished in {color}, backed by a one-year warranty.",
    "Designed by {brand}, the {model} {kind} balances performance and value. Colour: {color}.",
)

# Canonical queries beyond the bare product types: (text, product type, colour, brand).
EXTRA_QUERIES: tuple[tuple[str, str, str, str], ...] = (
    ("red running shoes", "running shoes", "red", ""),
    ("black hoodie", "hoodie", "black", ""),
    ("white sneakers", "sneakers", "white", ""),
    ("blue jeans", "jeans", "blue", ""),
    ("nike running shoes", "running shoes", "", "Nike"),
    ("sony wireless earbuds", "wireless earbuds", "", "Sony"),
    ("black yoga mat", "yoga mat", "black", ""),
    ("green rain jacket", "rain jacket", "green", ""),
    ("lego building blocks", "building blocks", "", "LEGO"),
)
# Judged queries the catalog has nothing for: every judgment is 0.
NOTHING_RELEVANT_QUERIES: tuple[tuple[str, str], ...] = (
    ("vintage typewriter ribbon", "Home & Kitchen"),
    ("snow chains for tires", "Sports & Outdoors"),
)
# Frequent queries that nobody judged.
UNJUDGED_QUERIES = (
    "gift ideas", "birthday present for mom", "best sellers", "something for the kitchen",
    "summer essentials", "back to school", "home office setup", "travel accessories",
    "stocking stuffers", "deals",
)
REFINEMENT_SUFFIXES = ("for men", "for women", "on sale", "under 50", "waterproof", "kids", "2 pack", "best rated")

FIRST_NAMES = ("jane", "john", "maria", "wei", "aisha", "carlos", "emma", "liam", "priya", "noah", "sofia", "omar")
LAST_NAMES = ("doe", "smith", "garcia", "chen", "khan", "rossi", "muller", "silva", "kim", "novak")
MAIL_DOMAINS = ("example.com", "mail.example.org", "example.net")

# Zones written in timestamps: offset in minutes -> suffix.
ZONES = {0: "Z", 330: "+05:30", -480: "-08:00", 120: "+02:00", -300: "-05:00", 60: "+01:00", 540: "+09:00"}
OFFSET_ZONES = (330, -480, 120, -300, 60, 540)

# Generation models: share, median latency (ms), error rate, review decision weights.
MODELS: dict[str, tuple[float, float, float, tuple[float, float, float]]] = {
    "gpt-4o-mini": (0.45, 1400.0, 0.015, (0.72, 0.19, 0.09)),
    "claude-3-haiku": (0.35, 950.0, 0.012, (0.75, 0.17, 0.08)),
    "llama-3-8b": (0.20, 2700.0, 0.04, (0.58, 0.27, 0.15)),
}
DECISIONS = ("approved", "edited", "rejected")
REVIEW_MEDIAN_MS = {"approved": 40_000.0, "edited": 150_000.0, "rejected": 25_000.0}
REVIEWERS = 6

EXPERIMENTS = ("ranker_v2", "search_layout_b")
DQ_CHECKS = ("null_description", "invalid_price", "null_brand", "null_title")
BAD_KINDS = ("not_json", "missing_timestamp", "naive_timestamp", "unknown_type", "click_position_0")

# Behaviour knobs.
INTENTS_CUM = (0.2, 0.48, 0.75, 1.0)  # 1..4 searches per session
UNJUDGED_CANDIDATES = 20
UNJUDGED_PENALTY = 1.5
RANKER_NOISE = {False: 1.6, True: 1.35}  # score noise: control ranker, ranker_v2 treatment
CLICK_BASE = 0.30
CLICK_BY_RELEVANCE = (0.12, 0.55, 0.95, 1.35)
REFINE_AFTER_NO_CLICK = 0.34
REFINE_AFTER_CLICK = 0.10
FEEDBACK_RATE = 0.15
ORDER_IF_CLICKED = 0.048
ORDER_IF_NOT_CLICKED = 0.004
TREATMENT_ORDER_LIFT = 1.2
ANONYMOUS_RATE = 0.03
EMAIL_USER_RATE = 0.10
OFFSET_SESSION_RATE = 0.32
PII_QUERY_RATE = 0.01


@dataclass
class GeneratedTraffic:
    """Where the files are and what was written."""

    events_path: Path
    catalog_path: Path
    judgments_path: Path
    events: int
    bad_lines: int
    duplicate_lines: int
    products: int
    judgments: int


@dataclass
class _Product:
    product_id: str
    kind: str
    category: str
    color: str
    brand: str
    price: float


@dataclass
class _Query:
    """A query intent: its canonical text, the products the ranker retrieves for it, their
    ranking scores before noise and their true relevance (the grade, for judged products)."""

    text: str
    judged: bool
    no_results_rate: float
    candidates: list[str]
    scores: np.ndarray
    relevance: list[int]
    siblings: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# Catalog and judgments


def _variant(rnd: random.Random, value: str, variants: tuple[str, ...], weights: tuple[float, ...]) -> str:
    """The clean value or one of its unnormalized spellings."""
    r = rnd.random()
    for variant, weight in zip(variants, weights):
        if r < weight:
            return variant
        r -= weight
    return value


def _build_catalog(rnd: random.Random) -> tuple[list[_Product], list[list[str]]]:
    """The products (clean attributes) and their CSV rows (with gaps and variants)."""
    kinds = [(category, kind, price) for category, types in PRODUCT_TYPES.items() for kind, price in types]
    products: list[_Product] = []
    rows: list[list[str]] = []
    for n in range(1, CATALOG_SIZE + 1):
        category, kind, typical = rnd.choice(kinds)
        color = rnd.choice(COLORS[category])
        brand = rnd.choice(BRANDS[category])
        price = max(1.99, round(typical * math.exp(rnd.gauss(0.0, 0.3))) - 0.01)
        product = _Product(f"P{n:05d}", kind, category, color, brand, price)
        products.append(product)

        model = rnd.choice(MODEL_NAMES) + ("" if rnd.random() < 0.5 else f" {rnd.randint(2, 9)}")
        title = " ".join(part for part in (brand, model, color.title(), kind.title()) if part)
        r = rnd.random()
        if r < 0.02:
            title = ""
        elif r < 0.04:
            title = title.replace(" ", "  ", 1)
        elif r < 0.06:
            title += rnd.choice((" ", "  "))
        elif r < 0.08:
            title = title.upper()
        r = rnd.random()
        if r < 0.07:
            description = ""
        elif r < 0.08:
            description = rnd.choice((" ", "   "))
        else:
            description = rnd.choice(DESCRIPTIONS).format(
                brand=brand, model=model, kind=kind, color=color or "its signature finish"
            )
        brand_text = "" if rnd.random() < 0.03 else _variant(
            rnd, brand, (brand.upper(), brand.lower() + " ", brand + " Inc."), (0.06, 0.05, 0.04)
        )
        category_text = _variant(
            rnd, category, (category.lower(), f" {category.upper()} ", category + " "), (0.06, 0.04, 0.03)
        )
        text = f"{price:.2f}"
        price_text = _variant(
            rnd, text, ("", "$" + text, text.replace(".", ","), text + " USD"), (0.02, 0.04, 0.03, 0.03)
        )
        currency = _variant(rnd, "USD", ("usd", "EUR", ""), (0.05, 0.06, 0.03))
        size = rnd.choice(SIZES[category]) if category in SIZES else ""
        rows.append([product.product_id, title, description, brand_text, category_text, price_text, currency,
                     color, size])
    return products, rows


def _relevance(product: _Product, kind: str, color: str, brand: str, rnd: random.Random) -> int:
    """Graded relevance 0-3 of a product for a query about (kind, colour, brand)."""
    if product.kind == kind:
        misses = (color != "" and product.color != color) + (brand != "" and product.brand != brand)
        return 3 - misses
    return 1 if rnd.random() < 0.35 else 0


def _build_queries(rnd: random.Random, products: list[_Product]) -> tuple[list[_Query], list[tuple[str, str, int]]]:
    """Canonical (judged), nothing-relevant and unjudged queries with their candidate
    products, and the judgment rows."""
    by_kind: dict[str, list[_Product]] = {}
    by_category: dict[str, list[_Product]] = {}
    for product in products:
        by_kind.setdefault(product.kind, []).append(product)
        by_category.setdefault(product.category, []).append(product)
    category_of = {kind: category for category, types in PRODUCT_TYPES.items() for kind, _ in types}
    specs = [(kind, kind, "", "") for kind in category_of] + list(EXTRA_QUERIES)

    queries: list[_Query] = []
    judgments: list[tuple[str, str, int]] = []

    def add(text: str, judged: bool, no_results: float, pool: list[tuple[_Product, int]]) -> None:
        chosen: list[tuple[_Product, int]] = []
        if judged:
            count = rnd.randint(5, 30)
            relevant = [item for item in pool if item[1] > 0]
            irrelevant = [item for item in pool if item[1] == 0]
            take = min(len(relevant), math.ceil(count * 0.6))
            chosen = rnd.sample(relevant, take) + rnd.sample(irrelevant, min(len(irrelevant), count - take))
            judgments.extend((text, p.product_id, g) for p, g in sorted(chosen, key=lambda item: item[0].product_id))
        # Judgments were pooled from what the ranker shows: it scores the judged products by
        # their grade and the few unjudged candidates it retrieves lower.
        judged_ids = {p.product_id for p, _ in chosen}
        unjudged = [item for item in pool if item[0].product_id not in judged_ids]
        shown = chosen + rnd.sample(unjudged, min(len(unjudged), UNJUDGED_CANDIDATES))
        scores = [g - (0 if p.product_id in judged_ids else UNJUDGED_PENALTY) for p, g in shown]
        queries.append(_Query(text, judged, no_results, [p.product_id for p, _ in shown],
                              np.array(scores, dtype=float), [g for _, g in shown]))

    for text, kind, color, brand in specs:
        category = category_of[kind]
        matches = by_kind.get(kind, [])
        others = [p for p in by_category[category] if p.kind != kind]
        pool = [(p, _relevance(p, kind, color, brand, rnd)) for p in matches]
        pool += [(p, _relevance(p, kind, color, brand, rnd)) for p in rnd.sample(others, min(25, len(others)))]
        pool += [(p, 0) for p in rnd.sample(products, 15) if p.category != category]
        add(text, True, 0.045, pool)
    for text, category in NOTHING_RELEVANT_QUERIES:
        add(text, True, 0.4, [(p, 0) for p in rnd.sample(by_category[category], 40)])
    for text in UNJUDGED_QUERIES:
        add(text, False, 0.05, [(p, rnd.choice((0, 0, 1, 2))) for p in rnd.sample(products, 60)])

    judged_by_kind: dict[str, list[int]] = {}
    for index, (_, kind, _, _) in enumerate(specs):
        judged_by_kind.setdefault(kind, []).append(index)
    for indexes in judged_by_kind.values():
        for index in indexes:
            queries[index].siblings = [i for i in indexes if i != index]
    return queries, judgments


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------
# Users


class _Users:
    """A user pool with arrivals and churn: each user is active from a join day for an
    exponentially distributed lifetime, and visits with a heavy-tailed propensity."""

    def __init__(self, rnd: random.Random, nrng: np.random.Generator, sessions: int, days: int) -> None:
        history = 21
        size = max(20, int(sessions * 0.45 * (days + history)))
        self.join = nrng.integers(-history, days, size)
        self.leave = self.join + np.ceil(nrng.exponential(10.0, size)).astype(np.int64)
        self.weight = nrng.lognormal(0.0, 1.1, size)
        self.offset = [rnd.choice(OFFSET_ZONES) if rnd.random() < OFFSET_SESSION_RATE else 0 for _ in range(size)]
        self.ids = [
            f"{rnd.choice(FIRST_NAMES)}.{rnd.choice(LAST_NAMES)}{n}@{rnd.choice(MAIL_DOMAINS)}"
            if rnd.random() < EMAIL_USER_RATE else f"user-{n:06d}"
            for n in range(size)
        ]

    def draw(self, nrng: np.random.Generator, day: int, count: int) -> list[int]:
        """Indexes of the users of `count` sessions on day `day`."""
        alive = np.flatnonzero((self.join <= day) & (self.leave > day))
        if count == 0 or alive.size == 0:
            return []
        weights = self.weight[alive]
        return nrng.choice(alive, size=count, p=weights / weights.sum()).tolist()


# ---------------------------------------------------------------------------------------
# Events of one day


def _daily_cycle(peak_hour: float, floor: float) -> np.ndarray:
    """Probability of each minute of the UTC day, a cosine peaking at `peak_hour`."""
    minutes = np.arange(1440) / 60.0
    weights = floor + (1 - floor) * (1 + np.cos(2 * np.pi * (minutes - peak_hour) / 24)) / 2
    return weights / weights.sum()


SHOPPER_CYCLE = _daily_cycle(19.5, 0.15)
OFFICE_CYCLE = _daily_cycle(14.0, 0.05)


def _start_times(nrng: np.random.Generator, day_ms: int, count: int, cycle: np.ndarray) -> list[int]:
    """`count` sorted epoch-millisecond instants of one day following a daily cycle."""
    minutes = nrng.choice(1440, size=count, p=cycle)
    instants = day_ms + minutes * 60_000 + nrng.integers(0, 60_000, count)
    return np.sort(instants).tolist()


class _Day:
    """Produces the events of one UTC day as (epoch ms, JSON line) pairs."""

    def __init__(self, gen: _Generator, index: int) -> None:
        self.gen = gen
        self.rnd = gen.rnd
        self.day = gen.start + dt.timedelta(days=index)
        self.index = index
        self.tag = self.day.strftime("%Y%m%d")
        self.day_ms = (self.day - EPOCH).days * DAY_MS
        self.lines: list[tuple[int, str]] = []
        self.counter = 0
        self.queries = 0

    def emit(self, ms: int, type_: str, session_id: str, user_id: str | None, source: str, offset: int,
             metadata: dict[str, Any]) -> None:
        self.counter += 1
        event: dict[str, Any] = {
            "id": f"evt-{self.tag}-{self.counter:07d}",
            "type": type_,
            "timestamp": self.gen.iso(ms, offset),
            "session_id": session_id,
        }
        if user_id is not None:
            event["user_id"] = user_id
        event["source"] = source
        event["metadata"] = metadata
        self.lines.append((ms, _encode(event)))

    # -- search sessions ----------------------------------------------------------------

    def sessions(self) -> None:
        gen, rnd = self.gen, self.rnd
        count = gen.sessions
        starts = _start_times(gen.nrng, self.day_ms, count, SHOPPER_CYCLE)
        anonymous = [rnd.random() < ANONYMOUS_RATE for _ in range(count)]
        users = iter(gen.users.draw(gen.nrng, self.index, anonymous.count(False)))
        for n, start in enumerate(starts):
            session_id = f"sess-{self.tag}-{n:06d}"
            user = None if anonymous[n] else next(users, None)
            if user is not None:
                user_id: str | None = gen.users.ids[user]
                offset = gen.users.offset[user]
            else:
                user_id = None
                offset = rnd.choice(OFFSET_ZONES) if rnd.random() < OFFSET_SESSION_RATE else 0
            self.session(session_id, start, user_id, offset)

    def session(self, session_id: str, t: int, user_id: str | None, offset: int) -> None:
        rnd = self.rnd
        digest = hashlib.md5(session_id.encode()).digest()
        experiment = {"id": EXPERIMENTS[digest[0] & 1], "variant": "treatment" if digest[1] & 1 else "control"}
        better_ranker = experiment == {"id": "ranker_v2", "variant": "treatment"}
        sigma = RANKER_NOISE[better_ranker]
        ctx = (session_id, user_id, offset, experiment)
        clicked: list[str] = []
        r = rnd.random()
        intents = next(i for i, edge in enumerate(INTENTS_CUM, 1) if r < edge)
        for _ in range(intents):
            query = self.gen.pick_query()
            text = self.gen.spelled(query.text)
            refinement_of: str | None = None
            for depth in range(3):
                query_id, t, clicks = self.search(ctx, t, query, text, refinement_of, sigma)
                clicked += clicks
                refine = REFINE_AFTER_CLICK if clicks else REFINE_AFTER_NO_CLICK
                if depth == 2 or rnd.random() >= refine:
                    break
                refinement_of = query_id
                t += rnd.randint(4_000, 40_000)
                if query.siblings and rnd.random() < 0.5:
                    query = self.gen.queries[rnd.choice(query.siblings)]
                    text = self.gen.spelled(query.text)
                else:
                    text = f"{text.rstrip()} {rnd.choice(REFINEMENT_SUFFIXES)}"
            t += rnd.randint(10_000, 180_000)
        order_rate = ORDER_IF_CLICKED if clicked else ORDER_IF_NOT_CLICKED
        if better_ranker:
            order_rate *= TREATMENT_ORDER_LIFT
        if rnd.random() < order_rate:
            self.order(ctx, t + rnd.randint(0, 600_000), clicked)

    def search(self, ctx: tuple[str, str | None, int, dict[str, str]], t: int, query: _Query, text: str,
               refinement_of: str | None, sigma: float) -> tuple[str, int, list[str]]:
        """One query with its latency log, clicks and maybe feedback; returns the query id,
        the time of its last event and the clicked products."""
        rnd, gen = self.rnd, self.gen
        session_id, user_id, offset, experiment = ctx
        self.queries += 1
        query_id = f"q-{self.tag}-{self.queries:06d}"
        if rnd.random() < PII_QUERY_RATE:
            text = f"{text} {gen.pii()}"
        r = rnd.random()
        if r < query.no_results_rate:
            size = 0
        elif r < query.no_results_rate + 0.12:
            size = rnd.randint(3, 9)
        else:
            size = 10
        size = min(size, len(query.candidates))
        if size:
            scores = query.scores + sigma * gen.nrng.standard_normal(len(query.candidates))
            top = np.argsort(-scores)[:size].tolist()
        else:
            top = []
        results = [query.candidates[i] for i in top]
        latency = round(rnd.lognormvariate(4.6 if size else 3.9, 0.45), 1)
        metadata: dict[str, Any] = {"action": "query", "query_id": query_id, "query": text, "result_ids": results,
                                    "response_time_ms": latency}
        if refinement_of is not None:
            metadata["refinement_of"] = refinement_of
        metadata["experiment"] = experiment
        self.emit(t, "search", session_id, user_id, "api", offset, metadata)
        self.emit(t + int(latency), "system_performance", session_id, user_id, "api", offset,
                  {"service": "search-api", "endpoint": "/api/search", "latency_ms": latency,
                   "status_code": 500 if rnd.random() < 0.01 else 200})

        positions = []
        for position, i in enumerate(top, 1):
            if rnd.random() * position < CLICK_BASE * CLICK_BY_RELEVANCE[query.relevance[i]]:
                positions.append(position)
                if len(positions) == 3:
                    break
        times = sorted(t + rnd.randint(2_000, 60_000) for _ in positions)
        clicks = []
        for position, ct in zip(positions, times):
            product_id = results[position - 1]
            clicks.append(product_id)
            self.emit(ct, "search", session_id, user_id, "api", offset,
                      {"action": "click", "query_id": query_id, "product_id": product_id, "position": position,
                       "experiment": experiment})
            r = rnd.random()
            self.emit(ct + 40, "system_performance", session_id, user_id, "api", offset,
                      {"service": "catalog-api", "endpoint": "/api/products/{id}",
                       "latency_ms": round(rnd.lognormvariate(3.7, 0.5), 1),
                       "status_code": 500 if r < 0.01 else 404 if r < 0.04 else 200})
        last = times[-1] if times else t + int(latency)
        if rnd.random() < FEEDBACK_RATE:
            last += rnd.randint(2_000, 20_000)
            weights = (0.03, 0.07, 0.2, 0.35, 0.35) if clicks else (0.4, 0.3, 0.18, 0.08, 0.04)
            satisfaction = rnd.choices((1, 2, 3, 4, 5), weights)[0]
            self.emit(last, "search", session_id, user_id, "api", offset,
                      {"action": "feedback", "query_id": query_id, "satisfaction": satisfaction,
                       "experiment": experiment})
        return query_id, last, clicks

    def order(self, ctx: tuple[str, str | None, int, dict[str, str]], t: int, clicked: list[str]) -> None:
        rnd, gen = self.rnd, self.gen
        session_id, user_id, offset, experiment = ctx
        distinct = list(dict.fromkeys(clicked))
        if distinct:
            product_ids = rnd.sample(distinct, rnd.randint(1, min(3, len(distinct))))
        else:
            product_ids = [rnd.choice(gen.products).product_id]
        total = sum(gen.price[p] * (2 if rnd.random() < 0.15 else 1) for p in product_ids)
        r = rnd.random()
        currency, rate = ("USD", 1.0) if r < 0.85 else ("EUR", 0.92) if r < 0.95 else ("GBP", 0.79)
        self.emit(t, "business", session_id, user_id, "external", offset,
                  {"action": "order", "order_id": "ord-" + session_id.removeprefix("sess-"),
                   "revenue": round(max(total * rate, 0.5), 2), "currency": currency,
                   "product_ids": product_ids, "experiment": experiment})

    # -- content generation, reviews, data quality ------------------------------------------

    def generations(self) -> None:
        gen, rnd = self.gen, self.rnd
        count = max(1, gen.sessions // 3)
        names = list(MODELS)
        shares = [MODELS[m][0] for m in names]
        end_ms = gen.end_ms
        for n, t in enumerate(_start_times(gen.nrng, self.day_ms, count, OFFICE_CYCLE)):
            model = rnd.choices(names, shares)[0]
            _, median, error_rate, decisions = MODELS[model]
            product = rnd.choice(gen.products)
            generation_id = f"gen-{self.tag}-{n:06d}"
            session_id = f"genjob-{self.tag}-{n // 50:04d}"
            failed = rnd.random() < error_rate
            latency = round(median * rnd.lognormvariate(0.0, 0.35) * (3 if failed else 1), 1)
            done = t + int(latency)
            self.emit(done, "generation", session_id, None, "api", 0,
                      {"generation_id": generation_id, "product_id": product.product_id, "model": model,
                       "latency_ms": latency, "status": "error" if failed else "success"})
            self.emit(done + 5, "system_performance", session_id, None, "api", 0,
                      {"service": "generation-api", "endpoint": "/api/generate", "latency_ms": latency,
                       "status_code": 500 if failed else 200})
            if failed:
                continue
            reviewed = done + int(min(rnd.lognormvariate(math.log(2_700_000), 1.0), 12 * 3_600_000))
            if reviewed >= end_ms:
                continue
            decision = rnd.choices(DECISIONS, decisions)[0]
            reviewer = rnd.randint(1, REVIEWERS)
            review_day = gen.iso(reviewed, 0)[:10].replace("-", "")
            self.emit(reviewed, "review", f"review-{reviewer:02d}-{review_day}", f"reviewer-{reviewer:02d}",
                      "dashboard", gen.reviewer_offsets[reviewer - 1],
                      {"generation_id": generation_id, "product_id": product.product_id, "decision": decision,
                       "review_time_ms": round(REVIEW_MEDIAN_MS[decision] * rnd.lognormvariate(0.0, 0.6))})

    def data_quality(self) -> None:
        gen, rnd = self.gen, self.rnd
        for hour in range(24):
            t = self.day_ms + hour * 3_600_000 + rnd.randint(0, 120_000)
            for check in DQ_CHECKS:
                value = max(0, gen.dq_baseline[check] + rnd.randint(-3, 4))
                self.emit(t, "data_quality", f"dq-{self.tag}", None, "system", 0,
                          {"table": "products", "check": check, "value": value})


# ---------------------------------------------------------------------------------------
# Writing


class _Writer:
    """Streams sorted lines to the file, adding deliberate resends and invalid lines."""

    def __init__(self, handle: Any, rnd: random.Random, nrng: np.random.Generator, bad_rate: float) -> None:
        self.handle = handle
        self.rnd = rnd
        self.nrng = nrng
        self.bad_rate = bad_rate
        self.events = 0
        self.bad = 0
        self.duplicates = 0

    def write(self, lines: list[tuple[int, str]]) -> None:
        if not lines:
            return
        text = [line for _, line in lines]
        extras: dict[int, list[str]] = {}
        if self.bad_rate > 0:
            for i in np.flatnonzero(self.nrng.random(len(text)) < self.bad_rate).tolist():
                extras.setdefault(i, []).append(self.invalid(text[i]))
            for i in np.flatnonzero(self.nrng.random(len(text)) < self.bad_rate).tolist():
                extras.setdefault(i, []).append(text[max(0, i - self.rnd.randint(0, 20))])
                self.duplicates += 1
        out: list[str] = []
        previous = 0
        for i in sorted(extras):
            out += text[previous:i + 1]
            out += extras[i]
            previous = i + 1
        out += text[previous:]
        self.handle.write("\n".join(out))
        self.handle.write("\n")
        self.events += len(out)

    def invalid(self, line: str) -> str:
        """A line breaking the contract, derived from a valid one (kinds in rotation)."""
        kind = BAD_KINDS[self.bad % len(BAD_KINDS)]
        self.bad += 1
        if kind == "not_json":
            return line[: len(line) // 2]
        event = json.loads(line)
        event["id"] += "-bad"
        if kind == "missing_timestamp":
            del event["timestamp"]
        elif kind == "naive_timestamp":
            event["timestamp"] = event["timestamp"][:23]
        elif kind == "unknown_type":
            event["type"] = "page_view"
        else:
            event["type"] = "search"
            event["metadata"] = {"action": "click", "query_id": event["metadata"].get("query_id", "q-unknown"),
                                 "product_id": "P00001", "position": 0}
        return _encode(event)


# ---------------------------------------------------------------------------------------


class _Generator:
    """Shared state of one run: random sources, catalog, queries, users, clock."""

    def __init__(self, seed: int, days: int, sessions: int, start: dt.date) -> None:
        self.rnd = random.Random(seed)
        self.nrng = np.random.default_rng(seed)
        self.sessions = sessions
        self.start = start
        self.end_ms = ((start - EPOCH).days + days) * DAY_MS
        self.products, self.catalog_rows = _build_catalog(self.rnd)
        self.price = {p.product_id: p.price for p in self.products}
        self.queries, self.judgments = _build_queries(self.rnd, self.products)
        self.query_cum = self._query_weights()
        self.users = _Users(self.rnd, self.nrng, sessions, days)
        self.reviewer_offsets = [self.rnd.choice((0, 0, 330, 120)) for _ in range(REVIEWERS)]
        rows = self.catalog_rows
        self.dq_baseline = {
            "null_description": sum(1 for row in rows if not row[2].strip()),
            "invalid_price": sum(1 for row in rows if not row[5].replace(".", "", 1).isdigit()),
            "null_brand": sum(1 for row in rows if not row[3].strip()),
            "null_title": sum(1 for row in rows if not row[1].strip()),
        }
        self._dates: dict[int, str] = {}

    def _query_weights(self) -> list[float]:
        """Cumulative Zipf-like popularity; unjudged queries are less and nothing-relevant
        queries rarely asked."""
        order = list(range(len(self.queries)))
        self.rnd.shuffle(order)
        weights = [0.0] * len(order)
        for rank, index in enumerate(order, 1):
            weights[index] = 1.0 / rank**0.8
        for index, query in enumerate(self.queries):
            if not query.judged:
                weights[index] *= 0.5
            elif not any(query.relevance):
                weights[index] = 0.004
        total = 0.0
        cum = []
        for weight in weights:
            total += weight
            cum.append(total)
        return cum

    def pick_query(self) -> _Query:
        index = bisect_left(self.query_cum, self.rnd.random() * self.query_cum[-1])
        return self.queries[min(index, len(self.queries) - 1)]

    def spelled(self, text: str) -> str:
        """The query as a person types it: case and spacing variants."""
        r = self.rnd.random()
        if r < 0.55:
            return text
        if r < 0.70:
            return text.title()
        if r < 0.78:
            return text + " "
        if r < 0.85:
            return text.replace(" ", "  ", 1)
        if r < 0.90:
            return " " + text
        if r < 0.95:
            return text.upper()
        return text.title().replace(" ", "  ", 1) + " "

    def pii(self) -> str:
        rnd = self.rnd
        if rnd.random() < 0.5:
            return f"{rnd.choice(FIRST_NAMES)}.{rnd.choice(LAST_NAMES)}@{rnd.choice(MAIL_DOMAINS)}"
        return f"call 555-{rnd.randint(100, 999)}-{rnd.randint(1000, 9999)}"

    def iso(self, ms: int, offset: int) -> str:
        """ISO-8601 text of an epoch-millisecond instant in a zone given in minutes."""
        day, rest = divmod(ms + offset * 60_000, DAY_MS)
        date = self._dates.get(day)
        if date is None:
            date = self._dates[day] = (EPOCH + dt.timedelta(days=day)).isoformat()
        hour, rest = divmod(rest, 3_600_000)
        minute, rest = divmod(rest, 60_000)
        second, milli = divmod(rest, 1000)
        return f"{date}T{hour:02d}:{minute:02d}:{second:02d}.{milli:03d}{ZONES[offset]}"


def generate(out_dir: Path, days: int = 7, sessions: int = 2000, seed: int = 42,
             start: dt.date | None = None, bad_rate: float = 0.001) -> GeneratedTraffic:
    """Write events.jsonl, catalog.csv and judgments.csv under `out_dir`.

    `sessions` is search sessions per UTC day; `start` (default: UTC today - `days`) is
    the first day. The files are byte-for-byte the same for the same arguments.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    if sessions < 0:
        raise ValueError("sessions must not be negative")
    if not 0 <= bad_rate < 0.5:
        raise ValueError("bad_rate must be in [0, 0.5)")
    if start is None:
        start = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=days)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = _Generator(seed, days, sessions, start)

    catalog_path = out_dir / "catalog.csv"
    judgments_path = out_dir / "judgments.csv"
    events_path = out_dir / "events.jsonl"
    _write_csv(catalog_path, ["product_id", "title", "description", "brand", "category", "price", "currency",
                              "color", "size"], gen.catalog_rows)
    _write_csv(judgments_path, ["query", "product_id", "relevance"], [list(row) for row in gen.judgments])

    with events_path.open("w", encoding="utf-8", newline="\n", buffering=1 << 20) as handle:
        writer = _Writer(handle, gen.rnd, gen.nrng, bad_rate)
        carried: list[tuple[int, str]] = []
        for index in range(days):
            day = _Day(gen, index)
            day.sessions()
            day.generations()
            day.data_quality()
            lines = carried + day.lines
            lines.sort(key=itemgetter(0))
            cut = bisect_left(lines, day.day_ms + DAY_MS, key=itemgetter(0))
            writer.write(lines[:cut])
            carried = lines[cut:]
        writer.write(carried)

    return GeneratedTraffic(
        events_path=events_path,
        catalog_path=catalog_path,
        judgments_path=judgments_path,
        events=writer.events,
        bad_lines=writer.bad,
        duplicate_lines=writer.duplicates,
        products=len(gen.products),
        judgments=len(gen.judgments),
    )
