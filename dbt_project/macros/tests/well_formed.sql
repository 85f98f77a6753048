{#-
  Generic test: the row-by-row invariants of a model in one query instead of one per column
  (each dbt test is a query, a node to schedule and, in Dagster, an asset check result per
  day of the run): no NULL in any of `not_null`, and each column of `accepted_values` (a
  mapping column -> list) within its list. Fails with the offending rows, whose NULL or
  unexpected value shows which invariant they break. Checks what dbt's not_null and
  accepted_values tests check on the same columns.
-#}
{% test well_formed(model, not_null=[], accepted_values={}) %}
  {%- set conditions = [] -%}
  {%- for column in not_null -%}
    {%- do conditions.append(adapter.quote(column) ~ ' is null') -%}
  {%- endfor -%}
  {%- for column, values in accepted_values.items() -%}
    {%- set listed = [] -%}
    {%- for value in values -%}
      {%- do listed.append("'" ~ (value | replace("'", "''")) ~ "'") -%}
    {%- endfor -%}
    {%- do conditions.append(adapter.quote(column) ~ ' not in (' ~ listed | join(', ') ~ ')') -%}
  {%- endfor %}
select *
from {{ model }}
where {{ conditions | join('\n   or ') if conditions else '1 = 0' }}
{% endtest %}
