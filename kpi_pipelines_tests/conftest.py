"""Fixtures: a real DuckDB file and a real PostgreSQL server (KPI_TEST_POSTGRES_URL), each
test on its own database file or schema."""

from __future__ import annotations

import inspect
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import sqlalchemy as sa

from kpi_pipelines.settings import DEFAULTS

# The tests' partitions start at the documented default, whatever the developer exported or
# `kpi demo` wrote to `.env` (a `kpi` the tests start keeps an environment value over `.env`).
# Set before anything imports kpi_pipelines.partitions, which reads it once.
os.environ["KPI_FIRST_DAY"] = DEFAULTS["KPI_FIRST_DAY"]

from kpi_pipelines.alerts.testing import FakeHTTPServer  # noqa: E402
from kpi_pipelines.warehouse import Warehouse  # noqa: E402

POSTGRES_URL = os.environ.get("KPI_TEST_POSTGRES_URL", "")
SALT = "test-salt"


def pytest_report_header() -> str | None:
    """Dagster's own commands give a `.env` in their working directory priority over the
    environment: the Dagster processes some tests start in the repository (deployment, DuckDB
    sharing) read the repository's `.env`. Say so when there is one."""
    env_file = Path(__file__).resolve().parents[1] / ".env"
    if not env_file.exists():
        return None
    from dotenv import dotenv_values

    names = ", ".join(sorted(dotenv_values(env_file)))
    return f"{env_file} sets {names or 'nothing'}: Dagster processes the tests start in the repository take it over their environment"


# The test tiers (pytest.ini, README "Tests"). `postgres` is derived here from what a test
# uses, so that no PostgreSQL test can miss it: a fixture that opens a PostgreSQL schema, a
# parameter naming the backend (the `warehouse` fixture's and the instance fixtures'), or a
# call of `postgres_or_skip` in the test or in one of its fixtures. `browser` likewise from
# the Chromium fixture; `deployment` and `slow` are marked by the tests themselves.
POSTGRES_FIXTURES = {"pg_schema", "postgres_warehouse"}
BROWSER_FIXTURES = {"browser"}


def _calls_postgres_or_skip(item: pytest.Item) -> bool:
    # pytest has no public API for the fixture definitions an item uses (`_fixtureinfo`)
    functions = [item.function] + [
        definition.func for definitions in item._fixtureinfo.name2fixturedefs.values() for definition in definitions
    ]
    return any("postgres_or_skip(" in inspect.getsource(function) for function in functions)


def uses_postgres(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(value == "postgresql" for value in callspec.params.values()):
        return True
    return bool(POSTGRES_FIXTURES & set(item.fixturenames)) or _calls_postgres_or_skip(item)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if uses_postgres(item):
            item.add_marker(pytest.mark.postgres)
        if BROWSER_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.browser)


def warehouse_resource(warehouse: Warehouse):
    """The project's Dagster warehouse resource for a test warehouse (its URL and schema)."""
    from kpi_pipelines.warehouse.resource import WarehouseResource

    return WarehouseResource(url=warehouse.url.render_as_string(hide_password=False), schema_name=warehouse.schema or "")


def definitions_for(warehouse: Warehouse, landing_dir: str = "/nonexistent", after_load: str = "delete"):
    """The project's own definitions, bound to a test warehouse."""
    from kpi_pipelines.definitions import build_definitions
    from kpi_pipelines.ingestion.resources import EventIngestionResource

    return build_definitions(
        warehouse_resource(warehouse),
        EventIngestionResource(pii_salt=SALT, landing_dir=landing_dir, after_load=after_load),
    )


def postgres_or_skip() -> str:
    if POSTGRES_URL:
        return POSTGRES_URL
    reason = "KPI_TEST_POSTGRES_URL is not set: PostgreSQL tests skipped"
    if os.environ.get("KPI_REQUIRE_POSTGRES"):
        pytest.fail(reason + " (KPI_REQUIRE_POSTGRES=1 requires them)")
    pytest.skip(reason)


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """(PostgreSQL URL, a fresh schema name), dropped afterwards."""
    url = postgres_or_skip()
    schema = "t_" + uuid.uuid4().hex[:12]
    yield url, schema
    Warehouse(url, schema).dispose()
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()


def _make_warehouse(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Warehouse:
    if backend == "duckdb":
        warehouse = Warehouse(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
        request.addfinalizer(warehouse.dispose)
        return warehouse
    url, schema = request.getfixturevalue("pg_schema")
    return Warehouse(url, schema)


@pytest.fixture(params=["duckdb", "postgresql"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Warehouse:
    """The same test on both backends."""
    return _make_warehouse(request.param, tmp_path, request)


@pytest.fixture
def duckdb_warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Warehouse:
    return _make_warehouse("duckdb", tmp_path, request)


@pytest.fixture
def postgres_warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Warehouse:
    return _make_warehouse("postgresql", tmp_path, request)


def event(
    event_id: str,
    type_: str = "search",
    timestamp: str = "2026-03-10T12:00:00Z",
    session_id: str = "s-1",
    user_id: str | None = "user-1",
    source: str = "api",
    **metadata: Any,
) -> dict[str, Any]:
    """A valid event of the contract; metadata defaults to a search query."""
    if not metadata:
        metadata = {
            "action": "query",
            "query_id": f"q-{event_id}",
            "query": "red shoes",
            "result_ids": ["P1", "P2"],
            "response_time_ms": 120,
        }
    out: dict[str, Any] = {
        "id": event_id,
        "type": type_,
        "timestamp": timestamp,
        "session_id": session_id,
        "source": source,
        "metadata": metadata,
    }
    if user_id is not None:
        out["user_id"] = user_id
    return out


@pytest.fixture
def write_events(tmp_path: Path) -> Callable[..., Path]:
    """Write events (dicts, or raw strings written as they are) as a JSONL file."""
    counter = iter(range(1_000_000))

    def write(lines: list[Any], name: str | None = None) -> Path:
        path = tmp_path / (name or f"events-{next(counter)}.jsonl")
        text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def load_events(warehouse: Warehouse, write_events: Callable[..., Path], events: list[dict[str, Any]]) -> None:
    """Load events that must all be accepted (the KPI tests' fixtures)."""
    from kpi_pipelines.ingestion.loader import EventLoader

    result = EventLoader(warehouse, SALT).load_file(write_events(events))
    assert (result.accepted, result.rejected) == (len(events), 0), result


def metric_values(metrics: list[Any]) -> dict[tuple[Any, str, str], float]:
    """{(day, name, dimensions): value}, asserting no metric was produced twice."""
    out = {(m.day, m.name, m.dimensions_text): m.value for m in metrics}
    assert len(out) == len(metrics), "a metric was written twice"
    return out


def all_table_text(warehouse: Warehouse) -> str:
    """Every value of every table of the warehouse schema, as one text (for PII scans)."""
    names = [
        row[0]
        for row in warehouse.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = :schema",
            {"schema": warehouse.schema_name},
        )
    ]
    assert "raw_events" in names
    return "\n".join(str(row) for name in names for row in warehouse.query(f'SELECT * FROM "{name}"'))


@pytest.fixture
def slack() -> Iterator[FakeHTTPServer]:
    """A local HTTP server answering like Slack's Web API (and webhooks), stopped afterwards."""
    server = FakeHTTPServer().start()
    yield server
    server.stop()
