{#-
  Overrides dbt's get_where_subquery, which wraps the model every generic test reads.

  A model whose config has meta `window_column` (and optionally `window_grain`) is
  incremental over the run's window: the rows outside it were not touched by this run and
  were tested when their own window was built. Its tests therefore read the window only
  (the same window the model replaced, widened to whole weeks for grain 'week'), so a
  nightly run tests one day, not all of history. Without --vars (a full build) there is no
  window and the whole model is tested. Other models, and a test's own `where` config,
  behave as in dbt.
-#}
{% macro get_where_subquery(relation) -%}
    {%- set conditions = [] -%}
    {%- set where = config.get('where', '') -%}
    {%- if where -%}
        {%- do conditions.append('(' ~ where ~ ')') -%}
    {%- endif -%}
    {%- if execute -%}
        {%- set meta = tested_model_meta(relation) -%}
        {%- if meta.get('window_column') and rollup_window(meta.get('window_grain', 'day')) is not none -%}
            {%- do conditions.append(in_window(meta['window_column'], meta.get('window_grain', 'day'))) -%}
        {%- endif -%}
    {%- endif -%}
    {%- if conditions -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ conditions | join(' and ') }}) dbt_subquery
        {%- endset -%}
        {% do return(filtered) %}
    {%- else -%}
        {% do return(relation) %}
    {%- endif -%}
{%- endmacro %}


{#- The meta config of the model `relation` is built from ({} if it is not a model of the graph). -#}
{% macro tested_model_meta(relation) -%}
    {%- for node in graph.nodes.values() -%}
        {%- if node.resource_type == 'model' and (node.alias or node.name) == relation.identifier
              and (node.schema | lower) == (relation.schema | lower) -%}
            {{ return(node.config.get('meta', {}) or {}) }}
        {%- endif -%}
    {%- endfor -%}
    {{ return({}) }}
{%- endmacro %}
