"""The one partitioning of the project: UTC days from the first day (`KPI_FIRST_DAY`) to
today's still filling day.

The first day is read once, as the definitions load (Dagster's code server, the `kpi`
command), and is a fixed date rather than one computed from today: a start that moved would
make materialized partitions vanish. `daily_partitions.start` is the one place that says it.
"""

import datetime as dt
from collections.abc import Mapping

from dagster import DailyPartitionsDefinition

from kpi_pipelines.settings import day_setting

# The earliest first day a deployment may choose, and the earliest event time the contract
# accepts (ingestion/contract.py): whatever its date, an accepted event can be brought into
# the KPIs by moving KPI_FIRST_DAY back.
EARLIEST_FIRST_DAY = dt.date(2020, 1, 1)

daily_partitions = DailyPartitionsDefinition(
    start_date=day_setting("KPI_FIRST_DAY", EARLIEST_FIRST_DAY, dt.datetime.now(dt.timezone.utc).date()).isoformat(),
    timezone="UTC",
    end_offset=1,
)


def first_day() -> dt.date:
    """The first daily partition."""
    return daily_partitions.start.date()


def days_in(start: dt.date, end: dt.date) -> list[dt.date]:
    """The UTC days of the window [start, end), as a partition window's dates give it."""
    return [start + dt.timedelta(days=n) for n in range((end - start).days)]


def before_first_day(valid_lines_by_day: Mapping[str, int]) -> dict[str, int]:
    """The days of a load (and their valid lines) before the first day. The contract accepts
    such events and raw_events stores them, but no partition holds them: no KPI counts them
    until KPI_FIRST_DAY is moved back, so every load says so (`early_events_note`)."""
    first = first_day().isoformat()
    return {day: count for day, count in valid_lines_by_day.items() if day < first}


def early_events_note(early: Mapping[str, int]) -> str:
    """One line about the events `before_first_day` found, and how to count them."""
    return (
        f"{sum(early.values()):,} valid line(s) dated {min(early)}..{max(early)}, before KPI_FIRST_DAY={first_day()}: "
        f"stored in raw_events but in no KPI until KPI_FIRST_DAY is {min(early)} or earlier"
    )
