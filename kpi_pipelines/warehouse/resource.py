"""The warehouse as a Dagster resource, apart from `Warehouse` so that importing the warehouse
does not import Dagster (the `kpi` commands that do not run Dagster start a second sooner)."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from kpi_pipelines.warehouse import DEFAULT_LOCK_TIMEOUT, DEFAULT_WAREHOUSE_URL, Warehouse


class WarehouseResource(ConfigurableResource):
    """The project's warehouse, configured from `KPI_WAREHOUSE_URL`, `KPI_WAREHOUSE_SCHEMA` and
    `KPI_WAREHOUSE_LOCK_TIMEOUT`."""

    url: str = Field(default=DEFAULT_WAREHOUSE_URL, description="SQLAlchemy URL of the warehouse")
    schema_name: str = Field(default="", description="schema of the project's tables; '' = default")
    lock_timeout: float = Field(
        default=DEFAULT_LOCK_TIMEOUT,
        description="KPI_WAREHOUSE_LOCK_TIMEOUT: seconds to wait for a DuckDB file another process holds",
    )

    def get_warehouse(self) -> Warehouse:
        return Warehouse(self.url, self.schema_name or None, lock_timeout=self.lock_timeout)
