"""The warehouse: one SQLAlchemy URL, DuckDB (embedded default) or PostgreSQL (production).

`Warehouse` is the plain object the loaders, KPI functions and CLI use; `WarehouseResource`
(`resource.py`) is the Dagster resource that builds one from `KPI_WAREHOUSE_URL` /
`KPI_WAREHOUSE_SCHEMA`. It is loaded on first use, so that the commands that do not run
Dagster do not import it (issue 13: importing Dagster costs about a second).
The schema is created or migrated on first use (see `schema.py`), so no step is manual.

Timeouts (docs/decisions.md, "Warehouse timeouts"): every PostgreSQL connection gives up
connecting after `connect_timeout` seconds and drops a peer that stops answering at the TCP
level (keepalives), so nothing hangs on a server that accepts connections but never
answers. A `statement_timeout` is for callers a person waits on (`kpi serve`, `kpi
metrics`): PostgreSQL cancels a longer statement, lock waits included; DuckDB interrupts
it. Batch work (Dagster runs, `kpi ingest`) has none: a backfill's statement may rightly
run long. A timeout is raised as `WarehouseTimeout`, one line naming the setting.

A DuckDB file is held by one process at a time (docs/decisions.md, "Sharing the DuckDB
file"): while `make dev`'s runs and a person's `kpi` commands work on the same file, they
take turns. Opening a file another process holds waits, polling, with one message naming
the holder, for at most `lock_timeout` seconds (KPI_WAREHOUSE_LOCK_TIMEOUT); past that the
error is one line naming the setting (`WarehouseLocked`). A waiting process says so in a
file beside the database (`<file>.waiting`); a process holding the file keeps it open while
it works (opening costs tens of milliseconds), and closes it at the end of its current
transaction when another process waits, or after a second without use (`_FileTurns`).
"""

from __future__ import annotations

import math
import re
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, TypeVar

import duckdb
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from kpi_pipelines.warehouse.dialect import Dialect

if TYPE_CHECKING:
    import pandas as pd
from kpi_pipelines.warehouse.schema import migrate

DEFAULT_WAREHOUSE_URL = "duckdb:///data/kpi.duckdb"
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds (KPI_WAREHOUSE_CONNECT_TIMEOUT)
DEFAULT_LOCK_TIMEOUT = 300.0  # seconds (KPI_WAREHOUSE_LOCK_TIMEOUT)
# DuckDB's message for a file another process holds, and the holder's program and PID in it
DUCKDB_LOCK_MESSAGE = "Could not set lock on file"
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (.+?) \(PID (\d+)\)")
# the first polls come quickly (another process's transaction is often short), then every 0.2 s
_LOCK_POLL_SECONDS = (0.02, 0.05, 0.1, 0.2)
# a wait shorter than this (another process's transaction) passes without a message
_LOCK_ANNOUNCE_AFTER = 1.0  # seconds
# a holder closes the file after this long unused; a waiter's signal counts for this long
_IDLE_RELEASE_SECONDS = 1.0
# after handing the file to a waiting process, time left for it to take it (> one poll)
_HANDOVER_PAUSE_SECONDS = 0.3
_Opened = TypeVar("_Opened")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# ":name" parameters (not "::" casts), spelled "$name" for DuckDB's own API
_NAMED_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


class WarehouseError(Exception):
    """A warehouse problem a person can act on (bad URL, unreachable server)."""


class WarehouseTimeout(WarehouseError):
    """The warehouse did not answer within a connect or statement timeout."""


class WarehouseLocked(WarehouseError):
    """Another process kept the DuckDB file longer than KPI_WAREHOUSE_LOCK_TIMEOUT."""


def wait_for_duckdb_file(open_file: Callable[[], _Opened], path: Path | str, lock_timeout: float) -> _Opened:
    """`open_file()`, retried while another process holds the DuckDB file `path`: polling,
    with one message on stderr naming the holder once the wait passes a second, for at most
    `lock_timeout` seconds; then `WarehouseLocked`, one line naming KPI_WAREHOUSE_LOCK_TIMEOUT.
    Other errors pass."""
    started = time.monotonic()
    deadline = started + lock_timeout
    polls = 0
    announced = False
    while True:
        try:
            opened = open_file()
        except duckdb.IOException as error:
            if DUCKDB_LOCK_MESSAGE not in str(error):
                raise
            held = _LOCK_HOLDER.search(str(error))
            holder = f"process {held.group(2)} ({held.group(1)})" if held else "another process"
            _signal_waiting(Path(path))
            if time.monotonic() >= deadline:
                raise WarehouseLocked(
                    f"the warehouse file {path} was still held by {holder} after {lock_timeout:g} s "
                    "(KPI_WAREHOUSE_LOCK_TIMEOUT)"
                ) from None
            if not announced and time.monotonic() - started >= _LOCK_ANNOUNCE_AFTER:
                announced = True
                print(
                    f"kpi: waiting for the warehouse file {path}, held by {holder} "
                    f"(at most {lock_timeout:g} s, KPI_WAREHOUSE_LOCK_TIMEOUT)",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(min(_LOCK_POLL_SECONDS[min(polls, len(_LOCK_POLL_SECONDS) - 1)], max(0.0, deadline - time.monotonic())))
            polls += 1
        else:
            if polls:  # its turn came: other waiters renew the signal at their next poll
                _waiting_signal(Path(path)).unlink(missing_ok=True)
            return opened


def parse_warehouse_url(url: str) -> URL:
    """Validate `url` and return it with PostgreSQL pinned to the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except Exception:
        raise WarehouseError(
            f"KPI_WAREHOUSE_URL {url!r} is not a URL; use duckdb:///path/to/file.duckdb "
            "or postgresql+psycopg://user@host:5432/db"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "duckdb":
        if parsed.drivername != "duckdb":
            raise WarehouseError(f"KPI_WAREHOUSE_URL: unknown DuckDB driver {parsed.drivername!r}")
        return parsed
    if backend in ("postgresql", "postgres"):
        if parsed.drivername not in ("postgresql", "postgres", "postgresql+psycopg"):
            raise WarehouseError(
                f"KPI_WAREHOUSE_URL: driver {parsed.drivername!r} is not supported; "
                "use postgresql+psycopg:// (psycopg 3)"
            )
        return parsed.set(drivername="postgresql+psycopg")
    raise WarehouseError(
        f"KPI_WAREHOUSE_URL: unsupported scheme {parsed.drivername!r}; "
        "use duckdb:///path/to/file.duckdb or postgresql+psycopg://user@host:5432/db"
    )


def _waiting_signal(path: Path) -> Path:
    return path.with_name(path.name + ".waiting")


def _signal_waiting(path: Path) -> None:
    """Tell the process holding the DuckDB file `path` that another one waits for it."""
    try:
        _waiting_signal(path).touch()
    except OSError:  # a read-only directory: the holder still closes the file when idle
        pass


class _FileTurns:
    """Keeps a DuckDB file open while this process uses it (its pooled connections) and gives
    it up when another process waits (at the end of the transaction in progress) or after
    `_IDLE_RELEASE_SECONDS` unused. Driven by the pool's checkout and checkin events; the
    file closes when the last of this process's connections to it does."""

    def __init__(self, path: Path):
        self.signal = _waiting_signal(path)
        self.lock = threading.Lock()
        self.in_use = 0
        self.idle_since = 0.0  # monotonic time the last connection in use came back
        self.watching = False  # a timer will look at the idle time
        self.idle: set[Any] = set()  # pooled connection records not in use
        self.handed_over_at: float | None = None

    def listen(self, engine: Engine) -> None:
        sa.event.listen(engine, "checkout", self._checked_out)
        sa.event.listen(engine, "checkin", self._checked_in)

    def pause_after_handover(self) -> None:
        """Before reopening: leave a process this one just gave the file to time to take it."""
        with self.lock:
            handed_over_at, self.handed_over_at = self.handed_over_at, None
        if handed_over_at is not None:
            time.sleep(max(0.0, _HANDOVER_PAUSE_SECONDS - (time.monotonic() - handed_over_at)))

    def _someone_waits(self) -> bool:
        try:
            return time.time() - self.signal.stat().st_mtime < _IDLE_RELEASE_SECONDS
        except OSError:
            return False

    def _close_idle(self) -> None:
        """(With the lock held, nothing in use.) Close every pooled connection: the pool
        reopens one on next use."""
        for record in self.idle:
            record.invalidate()
        self.idle.clear()

    def _checked_out(self, _dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        with self.lock:
            self.idle.discard(record)
            if record.dbapi_connection is None:  # closed by an idle release while being fetched
                raise sa.exc.DisconnectionError("the DuckDB file was given up; reopening")
            self.in_use += 1

    def _checked_in(self, dbapi_connection: Any, record: Any) -> None:
        with self.lock:
            self.in_use -= 1
            if dbapi_connection is not None:
                self.idle.add(record)
            if self.in_use:
                return
            if self._someone_waits():
                self._close_idle()
                self.handed_over_at = time.monotonic()
                return
            self.idle_since = time.monotonic()
            if not self.watching:
                self.watching = True
                self._watch(_IDLE_RELEASE_SECONDS)

    def _watch(self, seconds: float) -> None:
        timer = threading.Timer(seconds, self._release_if_idle)
        timer.daemon = True
        timer.start()

    def _release_if_idle(self) -> None:
        with self.lock:
            if self.in_use:  # the next connection back starts another watch
                self.watching = False
                return
            left = _IDLE_RELEASE_SECONDS - (time.monotonic() - self.idle_since)
            if left > 0:
                self._watch(left)
                return
            self.watching = False
            self._close_idle()


class Warehouse:
    """A connection factory for one warehouse URL and schema, migrated on first use."""

    _engines: dict[tuple[str, str | None], Engine] = {}
    _lock = threading.Lock()

    def __init__(
        self,
        url: str = DEFAULT_WAREHOUSE_URL,
        schema: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        statement_timeout: float | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ):
        """`connect_timeout`, `statement_timeout`, `lock_timeout`: seconds (see the module
        doc); None: no statement timeout."""
        self.url = parse_warehouse_url(url)
        if schema and not _IDENTIFIER.match(schema):
            raise WarehouseError(f"KPI_WAREHOUSE_SCHEMA {schema!r} is not a plain SQL identifier")
        for name, value in (("connect", connect_timeout), ("statement", statement_timeout), ("lock", lock_timeout)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise WarehouseError(f"KPI_WAREHOUSE_{name.upper()}_TIMEOUT: {value!r} is not a positive number of seconds")
        self.schema = schema or None
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        self.dialect = "duckdb" if self.url.get_backend_name() == "duckdb" else "postgresql"

    @property
    def sql(self) -> Dialect:
        return Dialect(self.dialect)

    @property
    def display_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @property
    def duckdb_path(self) -> Path | None:
        if self.dialect != "duckdb" or not self.url.database or self.url.database == ":memory:":
            return None
        return Path(self.url.database)

    @property
    def schema_name(self) -> str:
        """The schema the project's tables live in (as dbt and `information_schema` see it)."""
        return self.schema or ("main" if self.dialect == "duckdb" else "public")

    @property
    def _key(self) -> tuple[str, str | None, float, float | None, float]:
        return (
            self.url.render_as_string(hide_password=False),
            self.schema,
            self.connect_timeout,
            self.statement_timeout,
            self.lock_timeout,
        )

    @property
    def engine(self) -> Engine:
        key = self._key
        with Warehouse._lock:
            engine = Warehouse._engines.get(key)
            if engine is None:
                engine = self._create_engine()
                Warehouse._engines[key] = engine
        return engine

    def _create_engine(self) -> Engine:
        schema = self.schema
        if self.dialect == "duckdb":
            path = self.duckdb_path
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            # one pooled connection keeps the file open while in use; more threads overflow
            # onto the same open database (the module doc)
            engine = sa.create_engine(self.url, poolclass=sa.pool.QueuePool, pool_size=1, max_overflow=8)
            if path is not None:
                lock_timeout, where, turns = self.lock_timeout, path.absolute(), _FileTurns(path.absolute())
                turns.listen(engine)

                @sa.event.listens_for(engine, "do_connect")
                def _wait_for_file(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
                    turns.pause_after_handover()
                    return wait_for_duckdb_file(lambda: dialect.connect(*cargs, **cparams), where, lock_timeout)

            if self.statement_timeout:
                _interrupt_after(engine, self.statement_timeout)
        else:
            # libpq counts whole seconds, at least 2; keepalives drop a silent peer after
            # about four connect timeouts (idle, then three unanswered probes)
            seconds = max(2, math.ceil(self.connect_timeout))
            connect_args = {
                "connect_timeout": seconds,
                "keepalives": 1,
                "keepalives_idle": seconds,
                "keepalives_interval": seconds,
                "keepalives_count": 3,
            }
            engine = sa.create_engine(
                self.url, pool_pre_ping=True, pool_size=4, max_overflow=4, connect_args=connect_args
            )
        statement_ms = str(math.ceil(self.statement_timeout * 1000)) if self.statement_timeout else None

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            if self.dialect == "duckdb":
                cursor.execute("SET TimeZone = 'UTC'")
                if schema:
                    cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                    cursor.execute(f"USE {schema}")
            else:
                cursor.execute("SET TIME ZONE 'UTC'")
                if statement_ms:  # lock waits count in it: a locked table cannot hang a statement
                    cursor.execute("SELECT set_config('statement_timeout', %s, false)", (statement_ms,))
                if schema:
                    cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                    cursor.execute(f"SET search_path TO {schema}")
                dbapi_connection.commit()
            cursor.close()

        try:
            with engine.begin() as connection:
                migrate(connection, self.dialect)
        except WarehouseError:
            raise
        except Exception as error:  # unreachable server, locked file, bad credentials
            engine.dispose()
            timeout = self._timeout(error)
            message = str(timeout) if timeout else _first_line(error)
            raise (WarehouseTimeout if timeout else WarehouseError)(
                f"cannot open the warehouse {self.display_url}: {message}"
            ) from None
        return engine

    def _timeout(self, error: BaseException) -> WarehouseTimeout | None:
        """`error` as a WarehouseTimeout naming the setting, or None if it is no timeout."""
        cause = getattr(error, "orig", None) or error
        if type(cause).__name__ == "ConnectionTimeout":  # psycopg's, raised when connect_timeout expires
            return WarehouseTimeout(f"no answer within {self.connect_timeout:g} s (KPI_WAREHOUSE_CONNECT_TIMEOUT)")
        if self.statement_timeout and (
            getattr(cause, "sqlstate", None) == "57014" or type(cause).__name__ == "InterruptException"
        ):
            return WarehouseTimeout(
                f"no answer within {self.statement_timeout:g} s (KPI_WAREHOUSE_STATEMENT_TIMEOUT): {_first_line(cause)}"
            )
        return None

    @contextmanager
    def _timeouts(self) -> Iterator[None]:
        try:
            yield
        except Exception as error:
            timeout = self._timeout(error)
            if timeout is None:
                raise
            raise WarehouseTimeout(f"the warehouse {self.display_url}: {timeout}") from None

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection inside one transaction: committed on success, rolled back on error."""
        with self._timeouts(), self.engine.begin() as connection:
            yield connection

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[sa.Row]:
        with self._timeouts(), self.engine.connect() as connection:
            return list(connection.execute(sa.text(sql), dict(params or {})))

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        with self._timeouts(), self.engine.connect() as connection:
            return connection.execute(sa.text(sql), dict(params or {})).scalar()

    def frame(self, sql: str, params: Mapping[str, Any] | None = None) -> "pd.DataFrame":
        """A query's rows as a dataframe, fetched column-wise by DuckDB (no Python row
        objects); through pandas on PostgreSQL. For checks that need the rows themselves."""
        import pandas as pd

        with self._timeouts(), self.engine.connect() as connection:
            if self.dialect == "duckdb":
                raw = connection.connection.driver_connection
                return raw.execute(_NAMED_PARAMETER.sub(r"$\1", sql), dict(params or {})).df()
            return pd.read_sql_query(sa.text(sql), connection, params=dict(params or {}))

    def dispose(self) -> None:
        """Close pooled connections (releases DuckDB's file lock held by this process)."""
        with Warehouse._lock:
            engine = Warehouse._engines.pop(self._key, None)
        if engine is not None:
            engine.dispose()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _interrupt_after(engine: Engine, seconds: float) -> None:
    """DuckDB has no statement timeout: a timer interrupts a statement still running after
    `seconds` (DuckDB raises InterruptException in the statement's thread)."""

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _arm(connection: Connection, *_args: Any) -> None:
        timer = threading.Timer(seconds, connection.connection.driver_connection.interrupt)
        timer.daemon = True
        timer.start()
        connection.info["kpi_statement_timer"] = timer

    @sa.event.listens_for(engine, "after_cursor_execute")
    def _disarm(connection: Connection, *_args: Any) -> None:
        timer = connection.info.pop("kpi_statement_timer", None)
        if timer is not None:
            timer.cancel()

    @sa.event.listens_for(engine, "handle_error")
    def _disarm_on_error(context: Any) -> None:
        if context.connection is not None:
            _disarm(context.connection)


def release_duckdb_file(url: str) -> int:
    """Close this process's pooled connections to the DuckDB file of `url`, whatever schema
    they were opened with, so another process (dbt) can take the file's lock. Returns how
    many connection pools were closed; a no-op for PostgreSQL."""
    parsed = parse_warehouse_url(url)
    if parsed.get_backend_name() != "duckdb" or not parsed.database:
        return 0
    target = Path(parsed.database).expanduser().absolute()
    with Warehouse._lock:
        engines = [
            Warehouse._engines.pop(key)
            for key in list(Warehouse._engines)
            if (other := parse_warehouse_url(key[0])).get_backend_name() == "duckdb"
            and other.database
            and Path(other.database).expanduser().absolute() == target
        ]
    for engine in engines:
        engine.dispose()
    return len(engines)


def wait_until_duckdb_file_is_free(url: str, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
    """Wait, as opening the file does, until no other process holds the DuckDB file of `url`;
    for a subprocess that opens the file itself (dbt). A no-op for PostgreSQL."""
    parsed = parse_warehouse_url(url)
    if parsed.get_backend_name() != "duckdb" or not parsed.database or parsed.database == ":memory:":
        return
    path = Path(parsed.database).expanduser().absolute()
    if path.exists():
        wait_for_duckdb_file(lambda: duckdb.connect(str(path)), path, lock_timeout).close()


def __getattr__(name: str):
    if name == "WarehouseResource":
        from kpi_pipelines.warehouse.resource import WarehouseResource

        return WarehouseResource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
