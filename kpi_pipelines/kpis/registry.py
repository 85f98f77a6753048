"""The metric registry: every metric name the project writes, with its facts, in one place.

A metric's facts used to be kept equal by hand in several lists (the domains' name tuples,
the proportion check's pattern, the API's endpoint table, the producers of `kpi_metrics`,
the docs). They are derived from `REGISTRY` now: the `kpi_rows_valid` check bounds the
`bounded` kinds to [0, 1], the KPI API's endpoints list `endpoint` metrics, the anomaly
detection and the dbt source depend on `KPI_METRICS_PRODUCERS`, alert rules naming a
metric not here load with a warning, and docs/metrics.md's index is `docs_index()`.
`kpi_pipelines_tests/test_metric_registry.py` checks that a full materialization writes no
name missing here, at the levels and from the producers stated here.

Adding a KPI: compute it in its domain module and add its `MetricSpec` here (docs/metrics.md,
"Adding a KPI"). This module imports nothing of Dagster or the warehouse: the alert rules
and the CLI read it cheaply.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, replace

# What a value is, and so how it may be checked and shown.
KINDS = {
    "proportion": "a share in [0, 1]",
    "probability": "a p-value in [0, 1]",
    "count": "a number of things",
    "currency": "money, all currencies added as numbers",
    "duration": "milliseconds",
    "ratio": "a quotient that is not a share (per session, per user, a lift)",
    "score": "a mean of a rating, position or signal value",
}
BOUNDED_KINDS = ("proportion", "probability")  # kpi_rows_valid holds them to [0, 1]

# How the values of coarser (or finer) buckets are made.
ROLLUPS = {
    "events": "recomputed from the events of each minute, hour, day and week bucket by dbt's event rollup",
    "mean_of_days": "daily values only; the week's value is the mean of its days (rollup_daily_kpis_weekly)",
}
LEVELS = {"events": ("minute", "hour", "day", "week"), "mean_of_days": ("day", "week")}

EVENT_ROLLUP = "rollup_events"  # the dbt models rollup_events_{minute,hour,day,week}


@dataclass(frozen=True)
class MetricSpec:
    name: str
    domain: str
    unit: str
    kind: str
    rollup: str
    description: str
    producer: str  # the Dagster asset that writes its daily rows, or EVENT_ROLLUP
    dimensions: tuple[str, ...] = ()  # keys of its dimension sets besides the overall `{}`
    endpoint: str | None = None  # the KPI API endpoint (path under /api/kpi/) that serves it

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.rollup not in ROLLUPS:
            raise ValueError(f"{self.name}: unknown kind {self.kind!r} or rollup {self.rollup!r}")

    @property
    def bounded(self) -> bool:
        return self.kind in BOUNDED_KINDS

    @property
    def levels(self) -> tuple[str, ...]:
        return LEVELS[self.rollup]

    @property
    def definition(self) -> str:
        """Which computation defines the metric where dbt and Python both compute it."""
        if self.producer == EVENT_ROLLUP:
            return "dbt `rollup_events_*`"
        if self.rollup == "events":
            return f"`{self.producer}` at day; dbt's `rollup_events_day`, checked equal, and the other grains"
        return f"`{self.producer}`"


def _specs(
    domain: str, producer: str, rollup: str, rows: tuple[tuple[str, str, str, str, tuple[str, ...], str | None], ...]
) -> tuple[MetricSpec, ...]:
    """(name, unit, kind, description, dimensions, endpoint) rows of one producer."""
    return tuple(
        MetricSpec(name, domain, unit, kind, rollup, description, producer, dimensions, endpoint)
        for name, unit, kind, description, dimensions, endpoint in rows
    )


def _with_rollup(specs: tuple[MetricSpec, ...], names: set[str]) -> tuple[MetricSpec, ...]:
    """`specs` with rollup 'events' for the names dbt's event rollup also computes."""
    return tuple(replace(spec, rollup="events") if spec.name in names else spec for spec in specs)


COMPLETENESS, NORMALIZATION = "data-quality/completeness", "data-quality/normalization"
SUCCESS, ENGAGEMENT, SATISFACTION = "search/success-rate", "user/engagement", "user/satisfaction"
REVENUE = "business/revenue-metrics"
CATEGORY = ("category",)

REGISTRY: tuple[MetricSpec, ...] = (
    *_specs("data_quality", "data_quality_metrics", "mean_of_days", (
        ("data_quality.completeness", "1", "proportion", "products with every required field present ÷ products", CATEGORY, COMPLETENESS),
        ("data_quality.completeness.title", "1", "proportion", "products with a title ÷ products", CATEGORY, COMPLETENESS),
        ("data_quality.completeness.description", "1", "proportion", "products with a description ÷ products", CATEGORY, COMPLETENESS),
        ("data_quality.completeness.brand", "1", "proportion", "products with a brand ÷ products", CATEGORY, COMPLETENESS),
        ("data_quality.completeness.category", "1", "proportion", "products with a category ÷ products", CATEGORY, COMPLETENESS),
        ("data_quality.completeness.price", "1", "proportion", "products with a price ÷ products", CATEGORY, COMPLETENESS),
        ("data_quality.normalization.brand", "1", "proportion", "brands spelled canonically ÷ brands present", (), NORMALIZATION),
        ("data_quality.normalization.category", "1", "proportion", "categories spelled canonically ÷ categories present", (), NORMALIZATION),
        ("data_quality.normalization.price", "1", "proportion", "normalized prices ÷ prices present", (), NORMALIZATION),
        ("data_quality.normalization.title", "1", "proportion", "clean titles ÷ titles present", (), NORMALIZATION),
        ("data_quality.normalization_score", "1", "proportion", "products whose present fields are all normalized", (), NORMALIZATION),
        ("data_quality.quality_score", "1", "proportion", "0.5 × completeness + 0.5 × normalization score", (), NORMALIZATION),
        ("data_quality.products", "products", "count", "rows of the catalog", (), None),
        ("data_quality.signal", "value", "score", "mean value of the day's data_quality events per table and check", ("check", "table"), None),
    )),
    *_specs("retrieval", "retrieval_metrics", "mean_of_days", tuple(
        (name, unit, kind, description, (), "retrieval/precision-recall")
        for name, unit, kind, description in (
            ("retrieval.judged_queries", "query events", "count", "judged query events of the day"),
            ("retrieval.precision_at_5", "1", "proportion", "relevant in the top 5 ÷ 5 (trec_eval P_5)"),
            ("retrieval.precision_at_10", "1", "proportion", "relevant in the top 10 ÷ 10 (trec_eval P_10)"),
            ("retrieval.recall_at_5", "1", "proportion", "relevant in the top 5 ÷ relevant judged (trec_eval recall_5)"),
            ("retrieval.recall_at_10", "1", "proportion", "relevant in the top 10 ÷ relevant judged (trec_eval recall_10)"),
            ("retrieval.mrr", "1", "proportion", "1 ÷ rank of the first relevant result (trec_eval recip_rank)"),
            ("retrieval.ndcg_at_10", "1", "proportion", "DCG@10 ÷ ideal DCG@10 (trec_eval ndcg_cut_10)"),
        )
    )),
    *_with_rollup(_specs("search", "search_experience_metrics", "mean_of_days", (
        ("search.queries", "query events", "count", "query events of the day", (), SUCCESS),
        ("search.click_through_rate", "1", "proportion", "query events with a click ÷ query events", (), SUCCESS),
        ("search.no_results_rate", "1", "proportion", "query events with no results ÷ query events", (), SUCCESS),
        ("search.success_rate", "1", "proportion", "clicked and not refined query events ÷ query events", (), SUCCESS),
        ("search.average_click_position", "rank", "score", "mean 1-based position of the day's clicks", (), ENGAGEMENT),
        ("search.time_to_first_click_ms.p50", "ms", "duration", "median time from a query to its first click", (), ENGAGEMENT),
        ("search.time_to_first_click_ms.p90", "ms", "duration", "90th percentile time from a query to its first click", (), ENGAGEMENT),
        ("search.refinements_per_session", "per session", "ratio", "refining query events ÷ sessions with queries", (), ENGAGEMENT),
        ("search.satisfaction", "1-5", "score", "mean satisfaction of the day's feedback events", (), SATISFACTION),
        ("search.satisfaction.csat", "1", "proportion", "feedback events rated 4 or 5 ÷ feedback events", (), SATISFACTION),
        ("search.searches_per_user", "per user", "ratio", "identified query events ÷ active identified users", (), ENGAGEMENT),
        ("search.sessions_per_user", "per user", "ratio", "identified sessions ÷ active identified users", (), ENGAGEMENT),
    )), {"search.queries", "search.click_through_rate", "search.no_results_rate"}),
    *_with_rollup(_specs("business", "business_metrics", "mean_of_days", (
        ("business.conversion_rate", "1", "proportion", "sessions with an order ÷ sessions", (), "business/conversion-rate"),
        ("business.average_order_value", "currency", "currency", "order revenue ÷ orders", (), REVENUE),
        ("business.revenue_per_session", "currency", "currency", "order revenue ÷ sessions", (), REVENUE),
        ("business.revenue", "currency", "currency", "order revenue, in total and per currency", ("currency",), REVENUE),
        ("business.orders", "orders", "count", "order events of the day", (), REVENUE),
        ("business.retention.day_1", "1", "proportion", "users first seen the day before who return on the day", (), "business/customer-retention"),
        ("business.retention.day_7", "1", "proportion", "users first seen 7 days before who return on the day", (), "business/customer-retention"),
        ("business.customer_lifetime_value_30d", "currency", "currency", "identified order revenue ÷ paying users over 30 days", (), REVENUE),
    )), {"business.revenue", "business.orders"}),
    *_with_rollup(_specs("content", "content_generation_metrics", "mean_of_days", tuple(
        (name, unit, kind, description, ("model",), None)
        for name, unit, kind, description in (
            ("content.approval_rate", "1", "proportion", "reviews approving ÷ reviews"),
            ("content.edit_rate", "1", "proportion", "reviews editing ÷ reviews"),
            ("content.rejection_rate", "1", "proportion", "reviews rejecting ÷ reviews"),
            ("content.generation_error_rate", "1", "proportion", "failed generation events ÷ generation events"),
            ("content.generation_latency_ms.p50", "ms", "duration", "median latency of successful generations"),
            ("content.generation_latency_ms.p95", "ms", "duration", "95th percentile latency of successful generations"),
            ("content.time_to_review_ms.p50", "ms", "duration", "median time from a generation to its review"),
            ("content.review_time_ms.mean", "ms", "duration", "mean reviewer working time"),
            ("content.generations", "generation events", "count", "generation events of the day"),
        )
    )), {"content.generation_error_rate", "content.generation_latency_ms.p50", "content.generation_latency_ms.p95", "content.generations"}),
    *_with_rollup(_specs("system", "system_performance_metrics", "mean_of_days", tuple(
        (name, unit, kind, description, ("endpoint", "service"), None)
        for name, unit, kind, description in (
            ("system.latency_ms.p50", "ms", "duration", "median request latency"),
            ("system.latency_ms.p95", "ms", "duration", "95th percentile request latency"),
            ("system.latency_ms.p99", "ms", "duration", "99th percentile request latency"),
            ("system.error_rate", "1", "proportion", "requests answered 5xx ÷ requests"),
            ("system.requests", "requests", "count", "requests of the day"),
        )
    )), {"system.error_rate", "system.latency_ms.p50", "system.latency_ms.p95", "system.requests"}),
    *_specs("experiment", "experiment_results", "mean_of_days", tuple(
        (name, unit, kind, description, dimensions, None)
        for name, unit, kind, description, dimensions in (
            ("experiment.sessions", "sessions", "count", "sessions assigned to the variant through the day", ("experiment", "variant")),
            ("experiment.conversion_rate", "1", "proportion", "converting sessions ÷ sessions of the variant", ("experiment", "variant")),
            ("experiment.revenue_per_session", "currency", "currency", "revenue ÷ sessions of the variant", ("experiment", "variant")),
            ("experiment.conversion_lift", "1", "ratio", "relative lift of the conversion rate over the control's", ("experiment", "variant")),
            ("experiment.p_value_conversion", "1", "probability", "pooled two-proportion z-test, two-sided", ("experiment", "variant")),
            ("experiment.revenue_lift", "1", "ratio", "relative lift of revenue per session over the control's", ("experiment", "variant")),
            ("experiment.p_value_revenue", "1", "probability", "Welch's t-test of session revenue, two-sided", ("experiment", "variant")),
            ("experiment.srm_p_value", "1", "probability", "chi-square sample-ratio-mismatch test", ("experiment",)),
            ("experiment.excluded_sessions", "sessions", "count", "sessions seen in two or more variants", ("experiment",)),
        )
    )),
    *_specs("events", EVENT_ROLLUP, "events", (
        ("events.count", "events", "count", "stored events of the bucket, in total and per event type", ("event_type",), None),
        ("sessions.active", "sessions", "count", "sessions with an event in the bucket", (), None),
        ("sessions.started", "sessions", "count", "sessions whose first event falls in the bucket", (), None),
        ("search.response_time_ms.p50", "ms", "duration", "median response time of the bucket's queries", (), None),
        ("search.response_time_ms.p95", "ms", "duration", "95th percentile response time of the bucket's queries", (), None),
    )),
)

BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in REGISTRY}
if len(BY_NAME) != len(REGISTRY):
    raise ValueError("the metric registry names a metric twice")


def names_of(producer: str) -> tuple[str, ...]:
    """The names a producer writes, in registry order."""
    return tuple(spec.name for spec in REGISTRY if spec.producer == producer)


def producers() -> tuple[str, ...]:
    """The Python assets that write daily rows to `kpi_metrics`, in registry order."""
    return tuple(dict.fromkeys(spec.producer for spec in REGISTRY if spec.producer != EVENT_ROLLUP))


def endpoints() -> dict[str, tuple[str, ...]]:
    """KPI API endpoint path -> the metrics it serves, in registry order."""
    out: dict[str, tuple[str, ...]] = {}
    for spec in REGISTRY:
        if spec.endpoint is not None:
            out[spec.endpoint] = (*out.get(spec.endpoint, ()), spec.name)
    return out


def is_bounded(name: str) -> bool:
    """Whether the metric's values must lie in [0, 1] (an unregistered name is not checked)."""
    spec = BY_NAME.get(name)
    return spec is not None and spec.bounded


def matching(pattern: str) -> tuple[str, ...]:
    """Registered names matching a shell-style pattern (`retrieval.*`) or equal to a name."""
    return tuple(spec.name for spec in REGISTRY if fnmatch.fnmatchcase(spec.name, pattern))


def closest(name: str, count: int = 3) -> list[str]:
    """Up to `count` registered names closest to `name` (difflib's ratio, 0.5 at least)."""
    return difflib.get_close_matches(name, list(BY_NAME), n=count, cutoff=0.5)


INDEX_START, INDEX_END = "<!-- metric-index:start -->", "<!-- metric-index:end -->"


def docs_index() -> str:
    """docs/metrics.md's index of every metric, generated from the registry."""
    lines = [
        "| metric | domain | kind | unit | levels | dimensions | defined by | API endpoint |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for spec in REGISTRY:
        endpoint = f"`/api/kpi/{spec.endpoint}`" if spec.endpoint else "—"
        lines.append(
            f"| `{spec.name}` | {spec.domain} | {spec.kind} | {spec.unit} | {', '.join(spec.levels)} | "
            f"{', '.join(spec.dimensions) or '—'} | {spec.definition} | {endpoint} |"
        )
    return "\n".join(lines)
