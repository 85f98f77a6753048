"""The one partitioning of the project: UTC days, today's (still filling) day included."""

from dagster import DailyPartitionsDefinition

daily_partitions = DailyPartitionsDefinition(start_date="2020-01-01", timezone="UTC", end_offset=1)
