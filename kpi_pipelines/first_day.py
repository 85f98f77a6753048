"""KPI_FIRST_DAY, the first daily partition, without Dagster: `kpi` validates it at start-up
and `kpi ingest` reports events dated before it, and neither should pay for importing Dagster
(issue 13). `partitions.py` builds the daily partitions from `first_day()`.

The day is read once per process, as the definitions load: a first day that moved under a
running process would make materialized partitions vanish.
"""

import datetime as dt
import functools
from collections.abc import Mapping

from kpi_pipelines.settings import day_setting

# The earliest first day a deployment may choose, and the earliest event time the contract
# accepts (ingestion/contract.py): whatever its date, an accepted event can be brought into
# the KPIs by moving KPI_FIRST_DAY back.
EARLIEST_FIRST_DAY = dt.date(2020, 1, 1)


@functools.cache
def first_day() -> dt.date:
    """The first daily partition (KPI_FIRST_DAY); a SettingError naming the variable if unusable."""
    return day_setting("KPI_FIRST_DAY", EARLIEST_FIRST_DAY, dt.datetime.now(dt.timezone.utc).date())


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
