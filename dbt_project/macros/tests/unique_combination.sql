{#-
  Generic test: no two rows share the same values of `columns` (NULLs compare equal), the
  multi-column uniqueness dbt_utils.unique_combination_of_columns gives, written here since
  the project takes no hub packages. Fails with one row per duplicated key.
-#}
{% test unique_combination(model, columns) %}
  {%- set quoted = [] -%}
  {%- for column in columns -%}
    {%- do quoted.append(adapter.quote(column)) -%}
  {%- endfor %}
select {{ quoted | join(', ') }}, count(*) as copies
from {{ model }}
group by {{ quoted | join(', ') }}
having count(*) > 1
{% endtest %}
