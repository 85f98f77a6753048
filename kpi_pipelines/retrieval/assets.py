"""`retrieval_metrics`: the daily retrieval-quality KPIs over judged queries."""

from kpi_pipelines.kpis.asset_factory import daily_kpi_asset
from kpi_pipelines.retrieval.metrics import compute_retrieval_metrics

retrieval_metrics = daily_kpi_asset(
    name="retrieval_metrics",
    group_name="retrieval",
    compute=compute_retrieval_metrics,
    description=(
        "Precision@5/10, recall@5/10, MRR and nDCG@10 of the day's judged search queries "
        "(trec_eval conventions, averaged over query events), and how many there were. "
        "See docs/metrics.md."
    ),
    deps=("raw_events", "relevance_judgments"),
)
