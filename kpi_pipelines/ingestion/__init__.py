"""Ingestion: events (raw_events, rejected_events), the catalog and relevance judgments.

The domain's Dagster definitions (`defs`, in `definitions.py`) are loaded on first use: `kpi
ingest` and the other commands import the loaders from this package without paying for
Dagster (issue 13).
"""


def __getattr__(name: str):
    if name == "defs":
        from kpi_pipelines.ingestion.definitions import defs

        return defs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
