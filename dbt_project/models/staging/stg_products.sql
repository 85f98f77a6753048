{#- stg_products: the catalog with blank text as NULL and currencies upper-cased (a view). -#}
{{ config(materialized='view') }}

select
    product_id,
    nullif(trim(title), '') as title,
    nullif(trim(description), '') as description,
    nullif(trim(brand), '') as brand,
    nullif(trim(category), '') as category,
    price,
    upper(nullif(trim(currency), '')) as currency,
    attributes,
    loaded_at
from {{ source('warehouse', 'products') }}
