{#-
  The time window an incremental run replaces.

  The window is --vars '{"min_date": "YYYY-MM-DD", "max_date": "YYYY-MM-DD"}' (by hand) or,
  without vars, the environment variables DBT_MIN_DATE and DBT_MAX_DATE (how Dagster passes
  the partition window of the run: vars on the command line would make dbt discard its saved
  parse state, kpi_pipelines/rollups/project.py): UTC days, min_date included, max_date
  excluded (a single-run backfill passes its whole range). With neither (a hand-run `dbt
  build`) there is no window: every stored day is recomputed.

  Weekly buckets are never rebuilt in part: for grain 'week' the window is widened to whole
  ISO weeks (Monday 00:00 UTC to the Monday after the last day), the same buckets
  date_trunc('week', ...) produces on both adapters.
-#}

{% macro rollup_window(grain='day') -%}
  {%- set min_date = var('min_date', none) -%}
  {%- set max_date = var('max_date', none) -%}
  {%- if min_date is none and max_date is none and execute -%}
    {#- Dagster's window: read at execution only, so the parse does not depend on it -#}
    {%- set min_date = env_var('DBT_MIN_DATE', '') or none -%}
    {%- set max_date = env_var('DBT_MAX_DATE', '') or none -%}
  {%- endif -%}
  {%- if min_date is none and max_date is none -%}
    {{ return(none) }}
  {%- endif -%}
  {%- if min_date is none or max_date is none -%}
    {{ exceptions.raise_compiler_error("kpi_rollups: pass both min_date and max_date (or neither), got min_date=" ~ min_date ~ ", max_date=" ~ max_date) }}
  {%- endif -%}
  {%- set dt = modules.datetime -%}
  {%- set start = dt.datetime.strptime((min_date | string)[:10], '%Y-%m-%d').date() -%}
  {%- set end = dt.datetime.strptime((max_date | string)[:10], '%Y-%m-%d').date() -%}
  {%- if end <= start -%}
    {{ exceptions.raise_compiler_error("kpi_rollups: max_date " ~ end ~ " must be after min_date " ~ start ~ " (max_date is excluded)") }}
  {%- endif -%}
  {%- if grain == 'week' -%}
    {%- set start = start - dt.timedelta(days=start.weekday()) -%}
    {%- if end.weekday() != 0 -%}
      {%- set end = end + dt.timedelta(days=7 - end.weekday()) -%}
    {%- endif -%}
  {%- elif grain not in ('minute', 'hour', 'day') -%}
    {{ exceptions.raise_compiler_error("kpi_rollups: unknown grain " ~ grain) }}
  {%- endif -%}
  {{ return({'start': start.isoformat() ~ ' 00:00:00', 'end': end.isoformat() ~ ' 00:00:00'}) }}
{%- endmacro %}


{% macro timestamp_literal(text) -%}
  cast('{{ text }}' as timestamp)
{%- endmacro %}


{#- `column` inside the run's window ("1 = 1" when there is none). -#}
{% macro in_window(column, grain='day') -%}
  {%- set window = rollup_window(grain) -%}
  {%- if window is none -%}
    1 = 1
  {%- else -%}
    {{ column }} >= {{ timestamp_literal(window.start) }} and {{ column }} < {{ timestamp_literal(window.end) }}
  {%- endif -%}
{%- endmacro %}


{#- `column` before the end of the run's window ("1 = 1" when there is none). -#}
{% macro before_window_end(column, grain='day') -%}
  {%- set window = rollup_window(grain) -%}
  {%- if window is none -%}
    1 = 1
  {%- else -%}
    {{ column }} < {{ timestamp_literal(window.end) }}
  {%- endif -%}
{%- endmacro %}


{#-
  Pre-hook of every incremental model: delete the window's rows before the new ones are
  inserted, so a re-run replaces the window (buckets that no longer have a value disappear
  too) and never duplicates. Runs inside the model's transaction; nothing on the first run.
-#}
{% macro delete_window(column, grain='day') -%}
  {%- if is_incremental() -%}
    delete from {{ this }} where {{ in_window(column, grain) }}
  {%- endif -%}
{%- endmacro %}
