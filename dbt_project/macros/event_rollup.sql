{#-
  The event rollup of one grain ('minute', 'hour', 'day' or 'week'), in kpi_metrics' long
  format: metric_name, metric_value, dimensions, "timestamp" (the bucket's start, UTC),
  aggregation_level. Reads the staged events of the run's window (widened to whole weeks for
  'week'); the models rollup_events_<grain> are one line each.

  Buckets are date_trunc(grain, event_time): minutes, hours, UTC days, ISO weeks starting on
  Monday. A bucket has rows only if it has events. Counts and sums are written for every
  bucket with events (0 when none of that kind); a rate whose denominator is 0 and a
  percentile with no values are not written (no row), as for the daily KPIs.

  Where a name is also a daily KPI of the Python assets (the metric registry,
  kpi_pipelines/kpis/registry.py, marks them rollup "events" with a Python producer) the
  definition is the same (docs/metrics.md), so the day rollup equals the daily KPI;
  kpi_pipelines_tests/test_rollups.py checks it. This list of names must equal the
  registry's rollup "events" names: kpi_pipelines_tests/test_metric_registry.py checks it.
-#}

{% macro event_rollup_metrics() -%}
  {#- (metric name, expression over the `totals` CTE) -#}
  {{ return([
      ('events.count', 'events'),
      ('sessions.active', 'active_sessions'),
      ('sessions.started', 'started_sessions'),
      ('search.queries', 'queries'),
      ('search.click_through_rate', share('clicked_queries', 'queries')),
      ('search.no_results_rate', share('no_result_queries', 'queries')),
      ('search.response_time_ms.p50', 'response_time_p50'),
      ('search.response_time_ms.p95', 'response_time_p95'),
      ('content.generations', 'generations'),
      ('content.generation_error_rate', share('generation_errors', 'generations')),
      ('content.generation_latency_ms.p50', 'generation_latency_p50'),
      ('content.generation_latency_ms.p95', 'generation_latency_p95'),
      ('system.requests', 'requests'),
      ('system.error_rate', share('server_errors', 'requests')),
      ('system.latency_ms.p50', 'request_latency_p50'),
      ('system.latency_ms.p95', 'request_latency_p95'),
      ('business.orders', 'orders'),
      ('business.revenue', 'revenue'),
  ]) }}
{%- endmacro %}


{% macro event_rollup(grain) -%}
{%- if grain not in ('minute', 'hour', 'day', 'week') -%}
  {{ exceptions.raise_compiler_error("event_rollup: unknown grain " ~ grain) }}
{%- endif -%}
with

events as (
    select cast(date_trunc('{{ grain }}', event_time) as timestamp) as bucket, *
    from {{ ref('stg_events') }}
    where {{ in_window('event_time', grain) }}
),

totals as (
    select
        bucket,
        count(*) as events,
        count(distinct session_key) as active_sessions,
        count(*) filter (where is_session_start) as started_sessions,
        count(*) filter (where event_type = 'search' and action = 'query') as queries,
        count(*) filter (where event_type = 'search' and action = 'query' and is_clicked) as clicked_queries,
        count(*) filter (where event_type = 'search' and action = 'query' and result_count = 0) as no_result_queries,
        {{ percentile_cont(0.5, "case when event_type = 'search' and action = 'query' then response_time_ms end") }} as response_time_p50,
        {{ percentile_cont(0.95, "case when event_type = 'search' and action = 'query' then response_time_ms end") }} as response_time_p95,
        count(*) filter (where event_type = 'generation') as generations,
        count(*) filter (where event_type = 'generation' and generation_status = 'error') as generation_errors,
        {#- latency of successful generations, as content.generation_latency_ms of the daily KPIs -#}
        {{ percentile_cont(0.5, "case when event_type = 'generation' and generation_status = 'success' then latency_ms end") }} as generation_latency_p50,
        {{ percentile_cont(0.95, "case when event_type = 'generation' and generation_status = 'success' then latency_ms end") }} as generation_latency_p95,
        count(*) filter (where event_type = 'system_performance') as requests,
        count(*) filter (where event_type = 'system_performance' and status_code >= 500) as server_errors,
        {{ percentile_cont(0.5, "case when event_type = 'system_performance' then latency_ms end") }} as request_latency_p50,
        {{ percentile_cont(0.95, "case when event_type = 'system_performance' then latency_ms end") }} as request_latency_p95,
        count(*) filter (where event_type = 'business' and action = 'order') as orders,
        {#- summed as a decimal: exact, so the same on every run and on both adapters (a
            double sum depends on the order DuckDB's threads add in) -#}
        coalesce(sum(case when event_type = 'business' and action = 'order' then cast(revenue as decimal(38, 9)) end), 0) as revenue
    from events
    group by bucket
),

by_event_type as (
    select bucket, event_type, count(*) as events
    from events
    group by bucket, event_type
),

long_format as (
    {%- for name, expression in event_rollup_metrics() %}
    select '{{ name }}' as metric_name, cast({{ expression }} as double precision) as metric_value, '{}' as dimensions, bucket
    from totals
    where {{ expression }} is not null
    union all
    {%- endfor %}
    select 'events.count', cast(events as double precision), {{ dimensions_json('event_type', 'event_type') }}, bucket
    from by_event_type
)

select
    cast(metric_name as varchar) as metric_name,
    cast(metric_value as double precision) as metric_value,
    cast(dimensions as varchar) as dimensions,
    cast(bucket as timestamp) as "timestamp",
    cast('{{ grain }}' as varchar) as aggregation_level
from long_format
{%- endmacro %}
