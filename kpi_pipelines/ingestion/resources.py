"""The ingestion resource: the pseudonymization secret, the landing directory and what
becomes of a landing file once it is loaded."""

from __future__ import annotations

import datetime as dt
import shutil
import stat
import time
from pathlib import Path
from typing import Literal

AfterLoad = Literal["delete", "archive", "keep"]

from dagster import ConfigurableResource
from pydantic import Field

from kpi_pipelines.ingestion.loader import EVENT_FILE_SUFFIXES, EventLoader
from kpi_pipelines.warehouse import Warehouse


class EventIngestionResource(ConfigurableResource):
    """Configured from `KPI_PII_SALT`, `KPI_LANDING_DIR` and `KPI_LANDING_AFTER_LOAD`."""

    pii_salt: str = Field(description="secret key of the user-id pseudonyms (HMAC-SHA256)")
    landing_dir: str = Field(description="directory the landing sensor loads new event files from")
    after_load: AfterLoad = Field(
        default="delete",
        description=(
            "what becomes of a landing file once its load has committed: delete it (its raw user ids "
            "leave the disk), archive it under loaded/<UTC day>/, or keep it in place"
        ),
    )

    def loader(self, warehouse: Warehouse) -> EventLoader:
        return EventLoader(warehouse, self.pii_salt)

    def landing_files_stamped(self) -> list[tuple[int, Path]]:
        """(modification time in ns, path) of the complete event files in the landing
        directory, oldest first. Writers create files under a hidden or `.tmp` name and
        rename them when complete, so those are skipped; so is a file removed while listing
        (a concurrent run loaded it)."""
        directory = Path(self.landing_dir)
        if not directory.is_dir():
            return []
        stamped = []
        for path in directory.iterdir():
            if path.name.startswith(".") or not path.name.endswith(EVENT_FILE_SUFFIXES):
                continue
            try:
                status = path.stat()
            except FileNotFoundError:
                continue
            if stat.S_ISREG(status.st_mode):
                stamped.append((status.st_mtime_ns, path))
        return sorted(stamped, key=lambda item: (item[0], item[1].name))

    def landing_files(self) -> list[Path]:
        return [path for _, path in self.landing_files_stamped()]

    def in_landing_dir(self, path: Path) -> bool:
        return path.parent.resolve() == Path(self.landing_dir).resolve()

    def settle_loaded(self, path: Path) -> str:
        """Apply `after_load` to a landing file whose load has committed (files elsewhere,
        such as those given to `kpi ingest`, are never touched); returns what was done."""
        if self.after_load == "keep" or not self.in_landing_dir(path):
            return "kept"
        if self.after_load == "delete":
            path.unlink(missing_ok=True)
            return "deleted"
        archive = Path(self.landing_dir) / "loaded" / dt.datetime.now(dt.timezone.utc).date().isoformat()
        archive.mkdir(parents=True, exist_ok=True)
        target = archive / path.name
        if target.exists():  # a producer dropped another file of the same name today: keep both
            target = archive / f"{time.time_ns()}-{path.name}"
        shutil.move(path, target)
        return f"archived as {target}"
