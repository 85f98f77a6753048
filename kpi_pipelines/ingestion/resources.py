"""The ingestion resource: the pseudonymization secret and the landing directory."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from kpi_pipelines.ingestion.loader import EventLoader
from kpi_pipelines.warehouse import Warehouse

EVENT_FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")


class EventIngestionResource(ConfigurableResource):
    """Configured from `KPI_PII_SALT` and `KPI_LANDING_DIR`."""

    pii_salt: str = Field(description="secret key of the user-id pseudonyms (HMAC-SHA256)")
    landing_dir: str = Field(description="directory the landing sensor loads new event files from")

    def loader(self, warehouse: Warehouse) -> EventLoader:
        return EventLoader(warehouse, self.pii_salt)

    def landing_files(self) -> list[Path]:
        """Complete event files in the landing directory, oldest first. Writers create files
        under a hidden or `.tmp` name and rename them when complete, so those are skipped."""
        directory = Path(self.landing_dir)
        if not directory.is_dir():
            return []
        files = [
            path
            for path in directory.iterdir()
            if path.is_file() and not path.name.startswith(".") and path.name.endswith(EVENT_FILE_SUFFIXES)
        ]
        return sorted(files, key=lambda path: (path.stat().st_mtime_ns, path.name))
