"""The one partitioning of the project: UTC days, today's (still filling) day included."""

import datetime as dt

from dagster import DailyPartitionsDefinition

daily_partitions = DailyPartitionsDefinition(start_date="2020-01-01", timezone="UTC", end_offset=1)


def days_in(start: dt.date, end: dt.date) -> list[dt.date]:
    """The UTC days of the window [start, end), as a partition window's dates give it."""
    return [start + dt.timedelta(days=n) for n in range((end - start).days)]
