{#-
  kpi_metrics_all: every KPI value at every grain, one row per (metric_name, dimensions,
  timestamp, aggregation_level), for readers such as the KPI API and the alerts.

  Where two producers write the same key, the first of these wins:
    1. kpi_metrics: the Python KPI assets (daily values, the reference definitions);
    2. the event rollups rollup_events_{minute,hour,day,week} (pooled over the bucket);
    3. rollup_daily_kpis_weekly (weekly mean of the daily values).
  So at 'day' a KPI computed by both a Python asset and the day rollup reads the Python value
  (the definitions are the same and the tests check the values agree), and at 'week' a KPI
  the event rollup computes reads the pooled weekly value rather than the mean of the days.
  source_asset names the producer (the Dagster asset: a Python KPI asset or a dbt model).
-#}

with candidates as (
    select metric_name, metric_value, dimensions, "timestamp", aggregation_level, source_asset, 1 as precedence
    from {{ source('warehouse', 'kpi_metrics') }}
    {%- for model in ['rollup_events_minute', 'rollup_events_hour', 'rollup_events_day', 'rollup_events_week'] %}
    union all
    select metric_name, metric_value, dimensions, "timestamp", aggregation_level, '{{ model }}', 2
    from {{ ref(model) }}
    {%- endfor %}
    union all
    select metric_name, metric_value, dimensions, "timestamp", aggregation_level, 'rollup_daily_kpis_weekly', 3
    from {{ ref('rollup_daily_kpis_weekly') }}
),

ranked as (
    select
        *,
        row_number() over (
            partition by metric_name, dimensions, "timestamp", aggregation_level order by precedence
        ) as pick
    from candidates
)

select
    cast(metric_name as varchar) as metric_name,
    cast(metric_value as double precision) as metric_value,
    cast(dimensions as varchar) as dimensions,
    cast("timestamp" as timestamp) as "timestamp",
    cast(aggregation_level as varchar) as aggregation_level,
    cast(source_asset as varchar) as source_asset
from ranked
where pick = 1
