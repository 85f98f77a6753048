"""Which step failures are retried: only those a retry can pass.

A lost connection, a DuckDB file that another process took between the wait for it and
dbt's start (past dbt-duckdb's own connect retries), a DuckDB write conflict or a PostgreSQL
serialization failure, deadlock or lock timeout can pass a few seconds later; bad data, a
bad file or a bug fail the same way every time, and retrying them only multiplies the
failure alerts. The assets carry `TRANSIENT_RETRY_POLICY` and run their body inside
`retry_only_transient()`, which turns every other error into a `Failure` that the policy
does not retry. A DuckDB file held past KPI_WAREHOUSE_LOCK_TIMEOUT is final too: opening it
already waited that long (`WarehouseLocked`). Every step that writes the warehouse does so: raw_events, the KPI
assets, the anomalies, the experiments, the dbt rollups and the alert evaluation. Run-level retries (dagster.yaml) are kept for crashed run workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import psycopg
import sqlalchemy as sa
from dagster import Backoff, DagsterError, Failure, Jitter, RetryPolicy

from kpi_pipelines.warehouse import DUCKDB_LOCK_MESSAGE, WarehouseLocked

# Waits of about 5 s, 15 s and 35 s (each +/- 5 s): past a server restart or another
# process's write, and at most 70 s in all.
TRANSIENT_RETRY_POLICY = RetryPolicy(max_retries=3, delay=5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)

# PostgreSQL SQLSTATEs of a retry-able condition: the connection classes (08, 57P01-3:
# server shutting down or starting), too many connections, serialization failure, deadlock
# and lock not available (lock_timeout).
TRANSIENT_SQLSTATE_PREFIXES = ("08", "40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300")
# A connection refused before the server answers carries no SQLSTATE, nor do these, which
# no retry fixes.
PERMANENT_CONNECTION_MESSAGES = ("authentication failed", "does not exist", "no pg_hba.conf entry")
# DuckDB has no codes: its messages for another process holding the file, and for a write
# conflict between two transactions.
TRANSIENT_DUCKDB_MESSAGES = (DUCKDB_LOCK_MESSAGE, "Conflict on tuple deletion", "Transaction conflict")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and every error behind it: causes, contexts (kept under `from None`) and
    the driver error a SQLAlchemy error wraps."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [e for e in (current.__cause__, current.__context__, getattr(current, "orig", None)) if isinstance(e, BaseException)]


def is_transient(error: BaseException) -> bool:
    """Whether `error`, or an error behind it, is a warehouse condition a retry can pass."""
    from kpi_pipelines.ingestion.loader import IngestError  # kpi_pipelines.ingestion imports this module

    for current in _chain(error):
        if isinstance(current, IngestError):  # the file is bad, whatever DuckDB said reading it
            return False
        if isinstance(current, WarehouseLocked):  # the lock wait's bound, already waited through
            return False
        if isinstance(current, sa.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, psycopg.Error):
            state = current.sqlstate
            if state is not None:
                if state.startswith(TRANSIENT_SQLSTATE_PREFIXES):
                    return True
            elif isinstance(current, psycopg.OperationalError):  # refused, reset, server gone
                return not any(m in str(current) for m in PERMANENT_CONNECTION_MESSAGES)
        # a dbt step's failure quotes dbt's own errors, DuckDB's lock message among them
        if isinstance(current, (duckdb.Error, Failure)) and any(m in str(current) for m in TRANSIENT_DUCKDB_MESSAGES):
            return True
    return False


@contextmanager
def retry_only_transient() -> Iterator[None]:
    """Let transient errors through to the step's retry policy; make every other error a
    final failure (the policy would retry it too), keeping the error as its cause."""
    try:
        yield
    except DagsterError:  # Dagster's own control flow, which no policy retries
        raise
    except Failure as error:  # dagster-dbt's failures: keep their text and metadata
        if error.allow_retries and not is_transient(error):
            error.allow_retries = False
        raise
    except Exception as error:
        if is_transient(error):
            raise
        message = str(error).strip()
        first = message.splitlines()[0] if message else type(error).__name__
        raise Failure(description=f"{type(error).__name__}: {first}", allow_retries=False) from error
