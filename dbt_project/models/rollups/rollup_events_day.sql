{#- Event rollup by day (macros/event_rollup.sql); incremental over the run's window. -#}
{{ config(unique_key=['metric_name', 'dimensions', 'timestamp'], pre_hook="{{ delete_window('\"timestamp\"', 'day') }}") }}

{{ event_rollup('day') }}
