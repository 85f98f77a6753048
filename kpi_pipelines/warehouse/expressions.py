"""SQL expressions shared by the loaders, the KPI queries and the dbt models' docs; each
reads the same on DuckDB and PostgreSQL."""


def normalized_query_sql(column: str) -> str:
    """Query text lower-cased, inner whitespace collapsed to one space, trimmed."""
    return f"trim(regexp_replace(lower({column}), '\\s+', ' ', 'g'))"
