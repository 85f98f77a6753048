"""The one partitioning of the project: UTC days from the first day (`KPI_FIRST_DAY`) to
today's still filling day.

The first day is read once, as the definitions load (Dagster's code server, the `kpi`
command), and is a fixed date rather than one computed from today: a start that moved would
make materialized partitions vanish. `first_day.py` reads it without Dagster, for the commands
that do not run Dagster.
"""

import datetime as dt

from dagster import DailyPartitionsDefinition

from kpi_pipelines.first_day import first_day

daily_partitions = DailyPartitionsDefinition(start_date=first_day().isoformat(), timezone="UTC", end_offset=1)


def days_in(start: dt.date, end: dt.date) -> list[dt.date]:
    """The UTC days of the window [start, end), as a partition window's dates give it."""
    return [start + dt.timedelta(days=n) for n in range((end - start).days)]

