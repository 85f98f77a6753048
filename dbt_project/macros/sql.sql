{#- The few spellings that differ between the adapters, dispatched per adapter. -#}

{#- Length of a JSON array (metadata is JSON on DuckDB, JSONB on PostgreSQL). -#}
{% macro json_array_length(expression) -%}
  {{ return(adapter.dispatch('json_array_length', 'kpi_rollups')(expression)) }}
{%- endmacro %}

{% macro default__json_array_length(expression) -%}
  json_array_length({{ expression }})
{%- endmacro %}

{% macro postgres__json_array_length(expression) -%}
  jsonb_array_length({{ expression }})
{%- endmacro %}


{#-
  Continuous percentile (linear interpolation between the two nearest ranks, NULLs ignored).
  DuckDB and PostgreSQL both take the SQL-standard ordered-set form; checked equal to 1e-9
  on the same data (kpi_pipelines_tests/test_rollups.py). An adapter that spells it
  otherwise adds its own `<adapter>__percentile_cont`.
-#}
{% macro percentile_cont(fraction, expression) -%}
  {{ return(adapter.dispatch('percentile_cont', 'kpi_rollups')(fraction, expression)) }}
{%- endmacro %}

{% macro default__percentile_cont(fraction, expression) -%}
  percentile_cont({{ fraction }}) within group (order by {{ expression }})
{%- endmacro %}


{#- numerator ÷ denominator as a double; NULL (no row is written) when the denominator is 0. -#}
{% macro share(numerator, denominator) -%}
  cast({{ numerator }} as double precision) / nullif({{ denominator }}, 0)
{%- endmacro %}


{#-
  A one-key dimension set as stored in kpi_metrics.dimensions: the text Python's
  json.dumps({key: value}, sort_keys=True) writes, e.g. {"event_type": "search"}.
-#}
{% macro dimensions_json(key, value_expression) -%}
  '{"{{ key }}": "' || replace(replace({{ value_expression }}, '\', '\\'), '"', '\"') || '"}'
{%- endmacro %}


{#-
  Refresh the planner statistics of a relation: PostgreSQL only (DuckDB keeps its own).
  raw_events is usually read right after a load, before autovacuum has analyzed it; with
  stale statistics PostgreSQL estimates a handful of rows and picks nested loops that take
  seconds per thousand events. ANALYZE samples a fixed number of rows (fast whatever the
  table size); a role that does not own the table gets a warning, not an error.
-#}
{% macro refresh_statistics(relation) -%}
  {{ return(adapter.dispatch('refresh_statistics', 'kpi_rollups')(relation)) }}
{%- endmacro %}

{% macro default__refresh_statistics(relation) -%}
{%- endmacro %}

{% macro postgres__refresh_statistics(relation) -%}
  analyze {{ relation }}
{%- endmacro %}


{#- Copy `earlier` of an event was stored before copy `later` (ingested_at, source_file, event_time). -#}
{% macro earlier_copy(earlier, later) -%}
  ({{ earlier }}.ingested_at < {{ later }}.ingested_at
   or ({{ earlier }}.ingested_at = {{ later }}.ingested_at and {{ earlier }}.source_file < {{ later }}.source_file)
   or ({{ earlier }}.ingested_at = {{ later }}.ingested_at and {{ earlier }}.source_file = {{ later }}.source_file
       and {{ earlier }}.event_time < {{ later }}.event_time))
{%- endmacro %}
