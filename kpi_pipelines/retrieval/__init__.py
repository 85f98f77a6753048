"""Retrieval quality over judged queries: precision, recall, MRR, nDCG (trec_eval conventions)."""

from dagster import Definitions

defs = Definitions(assets=[])
