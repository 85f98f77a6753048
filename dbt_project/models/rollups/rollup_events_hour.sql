{#- Event rollup by hour (macros/event_rollup.sql); incremental over the run's window. -#}
{{ config(unique_key=['metric_name', 'dimensions', 'timestamp'], pre_hook="{{ delete_window('\"timestamp\"', 'hour') }}") }}

{{ event_rollup('hour') }}
