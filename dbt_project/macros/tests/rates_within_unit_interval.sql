{#-
  Generic test on a long-format metrics model: every value of a rate metric lies in [0, 1].
  A rate is a row whose metric_name matches `rate_pattern`, a LIKE pattern with ! as its
  escape character: by default the names ending in `_rate`. Fails with the offending rows.
-#}
{% test rates_within_unit_interval(model, column_name, name_column='metric_name', rate_pattern='%!_rate') %}
select *
from {{ model }}
where {{ adapter.quote(name_column) }} like '{{ rate_pattern }}' escape '!'
  and ({{ column_name }} < 0 or {{ column_name }} > 1 or {{ column_name }} is null)
{% endtest %}
