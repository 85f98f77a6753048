"""Retrieval quality over judged queries: precision, recall, MRR, nDCG (trec_eval conventions)."""

from dagster import Definitions

from kpi_pipelines.retrieval.assets import retrieval_metrics

defs = Definitions(assets=[retrieval_metrics])
