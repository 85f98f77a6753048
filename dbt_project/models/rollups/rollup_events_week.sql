{#- Event rollup by week (macros/event_rollup.sql); incremental over the run's window, widened to whole weeks. -#}
{{ config(unique_key=['metric_name', 'dimensions', 'timestamp'], pre_hook="{{ delete_window('\"timestamp\"', 'week') }}") }}

{{ event_rollup('week') }}
