{#-
  Weekly rollup of the daily KPIs: for every daily kpi_metrics series (metric_name,
  dimensions) the mean of its daily values over the days of the ISO week (Monday 00:00 UTC)
  that have one. Incremental over the run's window widened to whole weeks, so a week is
  always recomputed from all of its stored days.
-#}
{{ config(unique_key=['metric_name', 'dimensions', 'timestamp'], pre_hook="{{ delete_window('\"timestamp\"', 'week') }}") }}

select
    cast(metric_name as varchar) as metric_name,
    -- ordered, so the double sum is added in the same order on every run
    cast(avg(metric_value order by metric_value) as double precision) as metric_value,
    cast(dimensions as varchar) as dimensions,
    cast(date_trunc('week', "timestamp") as timestamp) as "timestamp",
    cast('week' as varchar) as aggregation_level
from {{ source('warehouse', 'kpi_metrics') }}
where aggregation_level = 'day'
  and {{ in_window('"timestamp"', 'week') }}
group by metric_name, dimensions, date_trunc('week', "timestamp")
