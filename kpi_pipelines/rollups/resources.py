"""The dbt resource: dagster-dbt's `DbtCliResource`, configured from the warehouse settings.

`dbt_project/profiles.yml` has one profile with two targets, `duckdb` and `postgres`, read
from `DBT_*` environment variables. Nobody sets those by hand: `dbt_env` derives them from
`KPI_WAREHOUSE_URL` / `KPI_WAREHOUSE_SCHEMA` (the target from the URL's scheme, a DuckDB
path made absolute, PostgreSQL host, port, user, password, database and sslmode), and
`RollupsDbtResource.cli` hands them to the dbt subprocess.

DuckDB takes one process at a time on a database file, and dagster-dbt runs dbt as a
subprocess that opens the file itself and keeps it for the whole dbt command. So before
starting dbt on DuckDB, `cli` closes this process's pooled connections to the file (those
the Python KPI assets that ran before in the same run left open; they reopen on their next
query), then waits, bounded by KPI_WAREHOUSE_LOCK_TIMEOUT as every opening of the file is,
until no other process (a person's `kpi ingest`, `kpi metrics`) holds it; dbt-duckdb's own
connect retries (`DBT_DUCKDB_CONNECT_ATTEMPTS`, profiles.yml) cover another process taking
the file between that wait and dbt's start.

Each call also gives dbt its own target directory holding a copy of the warehouse's parse
state (`partial_parse.msgpack`, kpi_pipelines/rollups/project.py), so dbt starts from it
instead of parsing the project again; `keep_parse_state` keeps a successful step's state.
"""

from __future__ import annotations

import getpass
import importlib.metadata
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from dagster_dbt import DbtCliResource
from packaging import version
from pydantic import Field

from kpi_pipelines.rollups.project import (
    PARTIAL_PARSE_FILE,
    dbt_executable,
    dbt_project,
    keep_parse_state,
    partial_parse_path,
)
from kpi_pipelines.settings import resource_value, seconds_setting
from kpi_pipelines.warehouse import (
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_WAREHOUSE_URL,
    WarehouseError,
    WarehouseResource,
    parse_warehouse_url,
    release_duckdb_file,
    wait_until_duckdb_file_is_free,
)

DBT_ENV_NAMES = (
    "DBT_TARGET",
    "DBT_SCHEMA",
    "DBT_DUCKDB_PATH",
    "DBT_DUCKDB_CONNECT_ATTEMPTS",
    "DBT_PG_HOST",
    "DBT_PG_PORT",
    "DBT_PG_USER",
    "DBT_PG_PASSWORD",
    "DBT_PG_DBNAME",
    "DBT_PG_SSLMODE",
)


def dbt_env(url: str, schema: str | None = None) -> dict[str, str]:
    """The DBT_* variables `dbt_project/profiles.yml` reads, for a warehouse URL and schema."""
    parsed = parse_warehouse_url(url)
    if parsed.get_backend_name() == "duckdb":
        database = parsed.database
        if not database or database == ":memory:":
            raise WarehouseError(
                "KPI_WAREHOUSE_URL: dbt needs a DuckDB file (duckdb:///path.duckdb); an in-memory "
                "database is private to one process"
            )
        return {
            "DBT_TARGET": "duckdb",
            # relative to the working directory, as the Python side opens it; dbt runs in dbt_project/
            "DBT_DUCKDB_PATH": str(Path(database).expanduser().absolute()),
            "DBT_SCHEMA": schema or "main",
            # dbt-duckdb sleeps 1, 2, 4, ... s between attempts: 7 attempts wait about 2 minutes
            "DBT_DUCKDB_CONNECT_ATTEMPTS": "7",
        }
    query = {key: (value[0] if isinstance(value, tuple) else value) for key, value in parsed.query.items()}
    user = parsed.username or os.environ.get("PGUSER") or getpass.getuser()
    return {
        "DBT_TARGET": "postgres",
        "DBT_PG_HOST": parsed.host or query.get("host") or os.environ.get("PGHOST") or "localhost",
        "DBT_PG_PORT": str(parsed.port or query.get("port") or os.environ.get("PGPORT") or 5432),
        "DBT_PG_USER": user,
        "DBT_PG_PASSWORD": parsed.password or os.environ.get("PGPASSWORD") or "",
        "DBT_PG_DBNAME": parsed.database or os.environ.get("PGDATABASE") or user,
        "DBT_PG_SSLMODE": query.get("sslmode") or os.environ.get("PGSSLMODE") or "prefer",
        "DBT_SCHEMA": schema or "public",
    }


_environ_lock = threading.Lock()


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in os.environ while dagster-dbt builds the subprocess' environment (it copies
    os.environ and takes no extra variables), then the previous values back."""
    with _environ_lock:
        saved = {name: os.environ.get(name) for name in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


class RollupsDbtResource(DbtCliResource):
    """dbt for the rollups: the project in `dbt_project/`, the `dbt` beside this Python, the
    profile's target and connection derived from the warehouse URL and schema."""

    warehouse_url: str = Field(default=DEFAULT_WAREHOUSE_URL, description="KPI_WAREHOUSE_URL: SQLAlchemy URL of the warehouse")
    warehouse_schema: str = Field(default="", description="KPI_WAREHOUSE_SCHEMA: schema of the tables and models; '' = default")
    warehouse_lock_timeout: float = Field(
        default=DEFAULT_LOCK_TIMEOUT,
        description="KPI_WAREHOUSE_LOCK_TIMEOUT: seconds to wait for a DuckDB file another process holds before dbt starts",
    )

    def get_dbt_env(self) -> dict[str, str]:
        return dbt_env(self.warehouse_url, self.warehouse_schema or None)

    def cli(self, args: Sequence[str], *, extra_env: Mapping[str, str] | None = None, **kwargs: Any):  # type: ignore[override]
        """`DbtCliResource.cli` with the warehouse's DBT_* variables (and `extra_env`), in a
        target directory that starts from the prepared parse state, once neither this process
        nor another holds the DuckDB file (see the module docstring)."""
        profile_env = self.get_dbt_env()
        env = {**profile_env, **(extra_env or {})}
        if kwargs.get("target_path") is None:
            kwargs["target_path"] = self._target_with_parse_state(kwargs.get("context"), profile_env)
        release_duckdb_file(self.warehouse_url)
        wait_until_duckdb_file_is_free(self.warehouse_url, self.warehouse_lock_timeout)
        with _environment(env):
            return super().cli(args, **kwargs)

    def keep_parse_state(self, invocation: Any) -> None:
        """After a successful invocation without --vars: its parse state becomes the one the
        next invocations on this warehouse start from."""
        keep_parse_state(invocation.target_path, self.get_dbt_env())

    def _target_with_parse_state(self, context: Any, profile_env: Mapping[str, str]) -> Path:
        """A new target directory for one invocation, named as dagster-dbt names its own
        (step, run, random), with a copy of the prepared `partial_parse.msgpack` if any."""
        unique = uuid.uuid4().hex[:7]
        name = f"{context.op_execution_context.op.name}-{context.run.run_id[:7]}-{unique}" if context else unique
        target = Path(self.project_dir) / dbt_project.target_path / name
        target.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(partial_parse_path(profile_env), target / PARTIAL_PARSE_FILE)
        except FileNotFoundError:
            pass  # no prepared state (a parse that failed): dbt parses the whole project
        return target

    # Two costs of every DbtCliResource.cli call that this project does not need (about 4 s
    # of each dbt step; measured in docs/rollups.md):
    #
    # - dagster-dbt runs `dbt --version` once per resource instance (so once per run) to
    #   tell dbt Core from dbt Fusion. The dbt here is the one beside sys.executable, so its
    #   version is the dbt-core installed in this interpreter.
    # - it builds a dbt adapter inside the run process, used only by `fetch_row_counts()` /
    #   `fetch_column_metadata()`, which the rollups do not call: those would query the
    #   warehouse from this process, and on DuckDB hold the file dbt writes.
    @cached_property
    def _cli_version(self) -> version.Version:
        scripts = {os.path.dirname(os.path.abspath(sys.executable))}
        if os.path.dirname(os.path.abspath(self.dbt_executable)) in scripts:
            return version.parse(importlib.metadata.version("dbt-core"))
        return super()._cli_version

    def _initialize_dbt_core_adapter(self, args: Sequence[str]) -> Any:
        return None


def rollups_dbt_resource(warehouse: WarehouseResource | None = None, **overrides: Any) -> RollupsDbtResource:
    """The dbt resource for `warehouse` (the same URL and schema, `EnvVar`s kept as they are
    so the UI shows where they come from); from the environment when `warehouse` is None."""
    if warehouse is None:
        url, schema = resource_value("KPI_WAREHOUSE_URL"), resource_value("KPI_WAREHOUSE_SCHEMA")
        lock_timeout = seconds_setting("KPI_WAREHOUSE_LOCK_TIMEOUT")
    else:
        url, schema, lock_timeout = warehouse.url, warehouse.schema_name, warehouse.lock_timeout
    return RollupsDbtResource(
        project_dir=dbt_project,
        dbt_executable=dbt_executable(),
        warehouse_url=url,
        warehouse_schema=schema,
        warehouse_lock_timeout=lock_timeout,
        **overrides,
    )
