"""Landing files that cannot be read are set aside instead of failing every later run.

Every run loads every unloaded file of the landing directory, so one unreadable file left
in place (a truncated gzip, bytes that are not UTF-8, a binary file) would fail the landing
run and every hourly and nightly run after it. Such a file is moved whole (a rename: its
bytes unchanged) to `failed/` with `<name>.error.txt` beside it giving the reason, and
recorded in `quarantined_files`; `kpi landing retry NAME` moves it back once fixed.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from kpi_pipelines.ingestion.pii import mask_text
from kpi_pipelines.warehouse import Warehouse

FAILED_DIR = "failed"
ERROR_SUFFIX = ".error.txt"


class QuarantineError(Exception):
    """A `kpi landing` request that cannot be done (unknown name, target exists)."""


@dataclass(frozen=True)
class Quarantined:
    path: Path
    reason: str

    @property
    def name(self) -> str:
        return self.path.name


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ERROR_SUFFIX)


def quarantine(warehouse: Warehouse, landing_dir: str, path: Path, reason: str, run_id: str | None) -> Quarantined | None:
    """Move `path` to `failed/` with its reason beside it and record it; None when the file
    vanished before it could be moved."""
    failed = Path(landing_dir) / FAILED_DIR
    failed.mkdir(parents=True, exist_ok=True)
    target = failed / path.name
    if target.exists() or _sidecar(target).exists():  # an earlier file of this name is still there: keep both
        target = failed / f"{time.time_ns()}-{path.name}"
    reason = mask_text(reason)
    try:
        with warehouse.begin() as connection:  # the row commits only if the file moved
            connection.execute(
                sa.text(
                    "INSERT INTO quarantined_files VALUES (:id, :landing_path, :failed_path, :size, :reason, :run_id, :now)"
                ),
                {
                    "id": uuid.uuid4().hex,
                    "landing_path": str(path),
                    "failed_path": str(target),
                    "size": path.stat().st_size,
                    "reason": reason,
                    "run_id": run_id,
                    "now": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
                },
            )
            shutil.move(path, target)
    except FileNotFoundError:
        return None
    _sidecar(target).write_text(reason + "\n", encoding="utf-8")
    return Quarantined(target, reason)


def quarantined_before(warehouse: Warehouse, path: Path) -> bool:
    return bool(warehouse.scalar("SELECT count(*) FROM quarantined_files WHERE landing_path = :path", {"path": str(path)}))


def list_quarantined(landing_dir: str) -> list[Quarantined]:
    """The files now under `failed/`, by name, with the reason their sidecar gives."""
    failed = Path(landing_dir) / FAILED_DIR
    if not failed.is_dir():
        return []
    out = []
    for path in sorted(failed.iterdir()):
        if not path.is_file() or path.name.endswith(ERROR_SUFFIX):
            continue
        sidecar = _sidecar(path)
        reason = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else "(no reason recorded)"
        out.append(Quarantined(path, reason))
    return out


def retry(landing_dir: str, name: str) -> Path:
    """Move the quarantined file `name` back into the landing directory, dated now so that the
    landing sensor sees it as new, and drop its sidecar; returns where it went."""
    failed = Path(landing_dir) / FAILED_DIR
    source = failed / name
    if Path(name).name != name or name.endswith(ERROR_SUFFIX) or not source.is_file():
        raise QuarantineError(f"no quarantined file {name!r} in {failed} (`kpi landing list` shows them)")
    target = Path(landing_dir) / name
    if target.exists():
        raise QuarantineError(f"{target} already exists: move it away first, then retry {name!r}")
    os.utime(source)
    shutil.move(source, target)
    _sidecar(source).unlink(missing_ok=True)
    return target
