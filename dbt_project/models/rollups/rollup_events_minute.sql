{#- Event rollup by minute (macros/event_rollup.sql); incremental over the run's window. -#}
{{ config(unique_key=['metric_name', 'dimensions', 'timestamp'], pre_hook="{{ delete_window('\"timestamp\"', 'minute') }}") }}

{{ event_rollup('minute') }}
