{#-
  stg_events: one row per event, typed, deduplicated and sessionized.

  Incremental (delete+insert) over the run's window of UTC days: Dagster runs it per daily
  partition (min_date / max_date vars); a re-run replaces the window.

  Deduplicated: one row per event_id, the first stored copy (ingested_at, source_file,
  event_time). The loader already stores each id once (PostgreSQL also has the primary
  key); this keeps the guarantee whatever loaded the table.

  Sessionized: session_key splits the client's session_id after more than
  `session_timeout_minutes` (30) without an event, as GA4 and PostHog do: events of one
  session_id ordered by time, a gap > 30 min starts a new session, session_key is
  '<session_id>#<n>' (n = 1, 2, ... counted from the session_id's first stored event). The
  split looks at every earlier stored event of the window's session_ids, not just the
  window's, so keys do not depend on how the days were partitioned.

  Typed: the metadata fields of the event envelope (docs/events.md) as columns, each read
  only for the event type and action it belongs to (unknown extra keys cannot break a cast).
-#}
{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key='event_id',
    on_schema_change='fail',
    pre_hook=[
        "{{ refresh_statistics(source('warehouse', 'raw_events')) }}",
        "{{ delete_window('event_time') }}",
    ],
    post_hook="{{ refresh_statistics(this) }}",
) }}

{%- set is_query = "e.event_type = 'search' and e.action = 'query'" -%}
{%- set is_click = "e.event_type = 'search' and e.action = 'click'" -%}
{%- set is_feedback = "e.event_type = 'search' and e.action = 'feedback'" -%}
{%- set is_search = "e.event_type = 'search'" -%}
{%- set is_generation = "e.event_type = 'generation'" -%}
{%- set is_review = "e.event_type = 'review'" -%}
{%- set is_content = "e.event_type in ('generation', 'review')" -%}
{%- set is_order = "e.event_type = 'business' and e.action = 'order'" -%}
{%- set is_system = "e.event_type = 'system_performance'" -%}
{%- set is_data_quality = "e.event_type = 'data_quality'" %}

with

window_events as (
    -- the window's events, each id once: the first stored copy (ingested_at, then
    -- source_file, then event_time); an anti-join rather than row_number() so that
    -- PostgreSQL estimates the row count (a filter on a window function's result is
    -- estimated at a fraction of a percent, and the plans built on it take minutes)
    select distinct raw.*
    from {{ source('warehouse', 'raw_events') }} as raw
    where {{ in_window('raw.event_time') }}
      and not exists (
          select 1
          from {{ source('warehouse', 'raw_events') }} as earlier
          where earlier.event_id = raw.event_id
            and {{ earlier_copy('earlier', 'raw') }}
      )
),

session_history as (
    -- every stored event of the window's client sessions up to the window's end (later
    -- events cannot change how earlier ones are split), each id once
    select distinct history.event_id, history.session_id, history.event_time
    from {{ source('warehouse', 'raw_events') }} as history
    where history.session_id in (select session_id from window_events)
      and {{ before_window_end('history.event_time') }}
      and not exists (
          select 1
          from {{ source('warehouse', 'raw_events') }} as earlier
          where earlier.event_id = history.event_id
            and {{ earlier_copy('earlier', 'history') }}
      )
),

session_gaps as (
    select
        event_id, session_id, event_time,
        case
            when lag(event_time) over by_time is null then 1
            when event_time - lag(event_time) over by_time > interval '{{ var("session_timeout_minutes") }} minutes' then 1
            else 0
        end as starts_session
    from session_history
    window by_time as (partition by session_id order by event_time, event_id)
),

session_numbers as (
    select
        event_id, session_id, event_time, starts_session,
        sum(starts_session) over (
            partition by session_id order by event_time, event_id rows between unbounded preceding and current row
        ) as session_number
    from session_gaps
),

sessions as (
    select
        event_id,
        cast(session_number as integer) as session_number,
        session_id || '#' || cast(cast(session_number as integer) as varchar) as session_key,
        starts_session = 1 as is_session_start,
        min(event_time) over (partition by session_id, session_number) as session_started_at
    from session_numbers
),

clicked_queries as (
    -- query ids of the window's query events with a click on any stored day
    select distinct metadata->>'query_id' as query_id
    from {{ source('warehouse', 'raw_events') }}
    where event_type = 'search' and action = 'click'
      and metadata->>'query_id' in (
          select metadata->>'query_id' from window_events where event_type = 'search' and action = 'query'
      )
)

select
    e.event_id,
    e.event_type,
    e.action,
    e.event_time,
    e.event_date,
    e.session_id,
    s.session_key,
    s.session_number,
    s.is_session_start,
    s.session_started_at,
    e.user_key,
    e.source,
    -- search
    case when {{ is_search }} then e.metadata->>'query_id' end as query_id,
    case when {{ is_query }} then e.metadata->>'query' end as query_text,
    case when {{ is_query }} then {{ json_array_length("e.metadata->'result_ids'") }} end as result_count,
    case when {{ is_query }} then cast(e.metadata->>'response_time_ms' as double precision) end as response_time_ms,
    case when {{ is_query }} then e.metadata->>'refinement_of' end as refinement_of,
    case when {{ is_query }} then c.query_id is not null end as is_clicked,
    case when {{ is_click }} then cast(e.metadata->>'position' as integer) end as click_position,
    case when {{ is_feedback }} then cast(e.metadata->>'satisfaction' as integer) end as satisfaction,
    -- search clicks, generation and review
    case when {{ is_click }} or {{ is_content }} then e.metadata->>'product_id' end as product_id,
    case when {{ is_content }} then e.metadata->>'generation_id' end as generation_id,
    case when {{ is_generation }} then e.metadata->>'model' end as model,
    case when {{ is_generation }} then e.metadata->>'status' end as generation_status,
    case when {{ is_review }} then e.metadata->>'decision' end as review_decision,
    case when {{ is_review }} then cast(e.metadata->>'review_time_ms' as double precision) end as review_time_ms,
    -- generation and system performance
    case when {{ is_generation }} or {{ is_system }} then cast(e.metadata->>'latency_ms' as double precision) end as latency_ms,
    -- business
    case when {{ is_order }} then e.metadata->>'order_id' end as order_id,
    case when {{ is_order }} then cast(e.metadata->>'revenue' as double precision) end as revenue,
    case when {{ is_order }} then upper(trim(e.metadata->>'currency')) end as currency,
    -- system performance
    case when {{ is_system }} then e.metadata->>'service' end as service,
    case when {{ is_system }} then e.metadata->>'endpoint' end as endpoint,
    case when {{ is_system }} then cast(e.metadata->>'status_code' as integer) end as status_code,
    -- data quality signals
    case when {{ is_data_quality }} then e.metadata->>'table' end as dq_table,
    case when {{ is_data_quality }} then e.metadata->>'check' end as dq_check,
    case when {{ is_data_quality }} then cast(e.metadata->>'value' as double precision) end as dq_value,
    -- A/B assignment (any event type)
    e.metadata->'experiment'->>'id' as experiment_id,
    e.metadata->'experiment'->>'variant' as experiment_variant,
    e.metadata,
    e.source_file,
    e.ingested_at
from window_events as e
left join sessions as s on s.event_id = e.event_id
left join clicked_queries as c on c.query_id = (case when {{ is_query }} then e.metadata->>'query_id' end)
