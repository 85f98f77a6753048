"""The landing sensor: new event files dropped into `KPI_LANDING_DIR` start a run.

The cursor is the (modification time, name) of the newest file already requested, so each
file version is requested once; the run's loader skips files already loaded as well, so a
reset cursor costs a scan, never a duplicate.
"""


import datetime as dt
import hashlib
import json

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from kpi_pipelines.ingestion.jobs import ingest_job
from kpi_pipelines.ingestion.resources import EventIngestionResource


@sensor(
    job=ingest_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Loads event files dropped into the landing directory, then refreshes today's partition.",
)
def landing_sensor(context: SensorEvaluationContext, ingestion: EventIngestionResource):
    after = json.loads(context.cursor) if context.cursor else None
    new = [
        (mtime, path)
        for mtime, path in ingestion.landing_files_stamped()
        if after is None or [mtime, path.name] > after
    ]
    if not new:
        return SkipReason(f"no new event files in {ingestion.landing_dir}")
    newest_mtime, newest = new[-1]
    context.update_cursor(json.dumps([newest_mtime, newest.name]))
    names = [str(path) for _, path in new]
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    return RunRequest(
        run_key=hashlib.sha256("\n".join(names).encode()).hexdigest()[:32] + f"-{context.cursor}",
        partition_key=today,
        run_config={"ops": {"raw_events": {"config": {"files": names}}}},
        tags={"kpi/trigger": "landing", "kpi/files": str(len(names))},
    )
