"""The collector: request bodies become event lines, stored through the one event loader.

- **PostgreSQL**: the lines are written to a private temporary file and loaded by
  `EventLoader.load_file` (validation, pseudonymization, masking, dedup, one transaction);
  the answer carries the loader's own counts.
- **DuckDB** (one writing process, the Dagster runs): the API never opens the warehouse
  for writing. The lines are written durably into `KPI_LANDING_DIR` (hidden name, fsync,
  rename, fsync of the directory), where the landing sensor's runs load them with the same
  `EventLoader`. The counts of the answer come from the loader's own validation SQL
  (`lines_sql` + `stage_sql`) run on the same lines in an in-memory DuckDB: rejects with
  their reasons, and duplicates inside the request. Ids stored by earlier requests are
  skipped when the file is loaded (docs/api.md, "Duplicates on DuckDB").

Validation has a fixed cost of about 40 ms a query (the contract is a large SQL
statement), so concurrent requests are validated together: one thread takes every request
waiting, writes their lines as one landing file (group commit), validates it in one query,
splits the counts per request, publishes the file, and only then answers them all.
"""

from __future__ import annotations

import codecs
import datetime as dt
import fcntl
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import duckdb

from kpi_pipelines.api.config import MAX_EVENTS
from kpi_pipelines.ingestion.loader import (
    MAX_LINE_BYTES,
    EventLoader,
    IngestError,
    lines_sql,
    stage_sql,
)
from kpi_pipelines.warehouse import Warehouse

try:  # orjson is much faster; the standard library is the fallback
    import orjson

    _loads, _dumps = orjson.loads, orjson.dumps
except ImportError:  # pragma: no cover
    orjson = None
    _loads = json.loads

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines")


class BodyError(Exception):
    """A request body that cannot be taken at all: `status` (413, 415, 422) and a message
    naming what is wrong (`loc` is where, as in FastAPI's validation errors)."""

    def __init__(self, status: int, loc: tuple[str, ...], message: str):
        super().__init__(message)
        self.status = status
        self.loc = loc
        self.message = message


class StoreUnavailable(Exception):
    """The events could not be stored now (disk, warehouse): nothing was acknowledged."""


@dataclass
class BatchResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)  # [{"index": i, "reason": r}]
    stored_as: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # seconds, for Server-Timing

    def as_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected}


def media_type(content_type: str | None) -> str:
    return (content_type or "application/json").split(";", 1)[0].strip().lower()


def body_lines(body: bytes, content_type: str | None, max_events: int = MAX_EVENTS) -> list[bytes]:
    """The request's events, one JSON text per line, in request order (index = position)."""
    kind = media_type(content_type)
    if kind in NDJSON_TYPES:
        return _ndjson_lines(body, max_events)
    if kind in JSON_TYPES or kind.endswith("+json"):
        return _json_list_lines(body, max_events)
    raise BodyError(415, ("header", "content-type"), f"Content-Type {kind!r} is not accepted: send application/json (a list) or application/x-ndjson")


def _ndjson_lines(body: bytes, max_events: int) -> list[bytes]:
    """Lines end with \\n, \\r\\n or \\r (as the loader's reader splits them); a last line
    without its newline counts; a leading byte-order mark is dropped. A line holding a NUL
    byte is the loader's to reject, as in a file: the request's other events are stored."""
    _text(body)
    body = body.removeprefix(codecs.BOM_UTF8)
    if body.count(b"\n") > max_events + 1:
        raise BodyError(413, ("body",), f"body: more than {max_events} events (lines) in one request")
    lines = body.splitlines()
    if len(lines) > max_events:
        raise BodyError(413, ("body",), f"body: {len(lines)} events (lines); at most {max_events} a request")
    _check_line_sizes(lines)
    return lines


def _json_list_lines(body: bytes, max_events: int) -> list[bytes]:
    if not body.strip():
        raise BodyError(422, ("body",), "body: empty; send a JSON list of events")
    try:
        value = _loads(body)
    except ValueError:
        return _list_items_as_written(body, max_events)
    if not isinstance(value, list):
        raise BodyError(422, ("body",), f"body: expected a JSON list of events, got {_json_kind(value)}")
    if len(value) > max_events:
        raise BodyError(413, ("body",), f"body: {len(value)} events; at most {max_events} a request")
    try:
        lines = [_dumps(item) for item in value]
    except TypeError:  # orjson writes at most 254 levels of nesting (it reads 1,024)
        return _list_items_as_written(body, max_events)
    _check_line_sizes(lines)
    return lines


def _json_kind(value: Any) -> str:
    return f"a JSON {type(value).__name__}" if value is not None else "JSON null"


_SPACE = re.compile(r"[ \t\n\r]*")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decoder(**numbers: Callable[[str], Any]) -> json.JSONDecoder:
    return json.JSONDecoder(parse_constant=_no_constant, **numbers)


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyError(422, ("body",), f"body: not UTF-8 text (byte {error.start})") from None


def _invalid(error: Exception) -> BodyError:
    if isinstance(error, RecursionError):
        return BodyError(422, ("body",), "body: JSON nested deeper than the parser's limit (about 1,000 levels)")
    return BodyError(422, ("body",), f"body: not valid JSON: {str(error).splitlines()[0]}")


def _list_items_as_written(body: bytes, max_events: int) -> list[bytes]:
    """A JSON list orjson refuses (a lone surrogate escape, a number beyond a double, nesting
    over its limit), split by the standard library into each item's own text: every event
    reaches the loader as the client wrote it, and the loader rejects the bad ones one by one
    with a reason. Numbers are kept as text (no conversion limit); raw line breaks can only
    be whitespace between tokens (JSON strings cannot hold them), so they become spaces."""
    text = _text(body)
    decoder = _decoder(parse_int=str, parse_float=str)
    position = _SPACE.match(text).end()
    if not text.startswith("[", position):
        try:
            value = decoder.decode(text)
        except (ValueError, RecursionError) as error:
            raise _invalid(error) from None
        raise BodyError(422, ("body",), f"body: expected a JSON list of events, got {_json_kind(value)}")
    lines: list[bytes] = []
    position = _SPACE.match(text, position + 1).end()
    closed = text.startswith("]", position)
    while not closed:
        try:
            _, end = decoder.raw_decode(text, position)
        except (ValueError, RecursionError) as error:
            raise _invalid(error) from None
        lines.append(text[position:end].replace("\n", " ").replace("\r", " ").encode("utf-8"))
        if len(lines) > max_events:
            raise BodyError(413, ("body",), f"body: more than {max_events} events; at most {max_events} a request")
        position = _SPACE.match(text, end).end()
        closed = text.startswith("]", position)
        if not closed and not text.startswith(",", position):
            raise BodyError(422, ("body",), f"body: not valid JSON: expected ',' or ']' at char {position}")
        position = _SPACE.match(text, position + 1).end()
    if position != len(text):
        raise BodyError(422, ("body",), f"body: not valid JSON: extra data after the list at char {position}")
    _check_line_sizes(lines)
    return lines


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > 100:  # far beyond any field's range; Python refuses 4,300 digits
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits is out of range")
    return int(text)


def _orders_by_stdlib(body: bytes, max_events: int) -> list[bytes]:
    """The webhook's lines when orjson refuses the body (a lone surrogate escape, a number
    beyond a double, nesting over its limits): the standard library takes it. NaN and
    Infinity are not JSON and stay refused, as do numbers no field can hold. A lone
    surrogate is written as its escape (`\\ud800`, which the loader rejects with a
    reason), every other character as UTF-8."""
    try:
        orders = _orders(_decoder(parse_float=_finite, parse_int=_integer).decode(_text(body)), max_events)
        return [
            json.dumps(_order_event(order), separators=(",", ":"), ensure_ascii=False).encode("utf-8", "backslashreplace")
            for order in orders
        ]
    except (ValueError, RecursionError) as error:
        raise _invalid(error) from None


def _check_line_sizes(lines: list[bytes]) -> None:
    for index, line in enumerate(lines):
        if len(line) > MAX_LINE_BYTES:
            raise BodyError(413, ("body", str(index)), f"body: event {index} is longer than {MAX_LINE_BYTES} bytes")


def file_bytes(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


# --------------------------------------------------------------------------- validation


class BatchValidator:
    """Runs the loader's validation SQL for many requests at once (see the module doc)."""

    def __init__(
        self, salt: str, writer: LandingWriter | None = None, max_lines: int = 50_000, workers: int = 1, threads: int = 1
    ):
        self.salt = salt
        self.writer = writer  # set: each batch's lines become one durable landing file (group commit)
        self.max_lines = max_lines
        self.threads = threads  # DuckDB threads of each validating connection
        self._pending: list[tuple[list[bytes], Future]] = []
        self._cond = threading.Condition()
        self._workdir = tempfile.mkdtemp(prefix="kpi-api-validate-")
        self._stage = stage_sql("kpi_lines", salt)
        self._local = threading.local()
        self._closed = False
        # One validating thread by default: on two cores shared with the request handling,
        # larger batches (less planning) beat a second thread (bench/api.py).
        self._threads = [
            threading.Thread(target=self._run, name=f"kpi-api-validator-{n}", daemon=True) for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, lines: list[bytes]) -> Future:
        future: Future = Future()
        future.submitted = time.perf_counter()  # type: ignore[attr-defined]
        with self._cond:
            if self._closed:
                raise StoreUnavailable("the collector is shutting down")
            self._pending.append((lines, future))
            self._cond.notify()
        return future

    def validate(self, lines: list[bytes]) -> BatchResult:
        return self.submit(lines).result()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed and not self._pending:
                    self._reset()
                    return
                batch, total = [], 0
                while self._pending and (not batch or total + len(self._pending[0][0]) <= self.max_lines):
                    item = self._pending.pop(0)
                    if item[1].set_running_or_notify_cancel():  # False: its request gave up
                        batch.append(item)
                        total += len(item[0])
            if batch:
                self._validate_batch(batch)

    def _connection(self) -> duckdb.DuckDBPyConnection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = duckdb.connect()
            db.execute(f"SET threads = {int(self.threads)}")
            db.execute("SET TimeZone = 'UTC'")
            db.execute("SET preserve_insertion_order = true")
        return db

    def _validate_batch(self, batch: list[tuple[list[bytes], Future]]) -> None:
        started = time.perf_counter()
        requests = [lines for lines, _ in batch]
        temp = None
        try:
            data = b"".join(file_bytes(lines) for lines in requests if lines)
            if self.writer is not None:
                temp = self.writer.write_temp(data)  # fsync'ed, still hidden
                path = str(temp)
            else:
                path = os.path.join(self._workdir, f"batch-{threading.get_ident()}.ndjson")
                with open(path, "wb") as handle:
                    handle.write(data)
            results = self._validate_file(path, requests)
            if temp is not None:
                final = self.writer.publish(temp).name  # durable and visible: now acknowledge
                temp = None
                for result in results:
                    result.stored_as = final
        except duckdb.Error as error:
            self._discard(temp)
            self._reset()
            if len(batch) > 1:  # one request's lines broke the reader: find it, spare the others
                for item in batch:
                    self._validate_batch([item])
                return
            batch[0][1].set_exception(
                BodyError(422, ("body",), f"body: cannot be read as JSON lines: {str(error).strip().splitlines()[0]}")
            )
            return
        except OSError as error:
            self._discard(temp)
            failure = StoreUnavailable(f"cannot write to the landing directory: {error.strerror or error}")
            for _, future in batch:
                future.set_exception(failure)
            return
        except BaseException as error:  # never leave a request waiting
            self._discard(temp)
            self._reset()
            for _, future in batch:
                future.set_exception(error)
            return
        ended = time.perf_counter()
        lines = sum(len(item) for item in requests)
        for (_, future), result in zip(batch, results):
            result.timings = {"queue": started - future.submitted, "batch": ended - started, "batch_lines": lines / 1000}
            future.set_result(result)

    def _discard(self, temp: Path | None) -> None:
        if temp is not None and self.writer is not None:
            self.writer.discard(temp)

    def _reset(self) -> None:
        db = getattr(self._local, "db", None)
        self._local.db = None
        if db is not None:
            db.close()

    def _validate(self, requests: list[list[bytes]]) -> list[BatchResult]:
        """Validate requests together from a scratch file (no landing file)."""
        path = os.path.join(self._workdir, f"batch-{threading.get_ident()}.ndjson")
        with open(path, "wb") as handle:
            handle.write(b"".join(file_bytes(lines) for lines in requests if lines))
        return self._validate_file(path, requests)

    def _validate_file(self, path: str, requests: list[list[bytes]]) -> list[BatchResult]:
        """Counts per request of a file holding the requests' lines one after the other."""
        results = [BatchResult() for _ in requests]
        firsts, line = [], 1
        for lines in requests:
            firsts.append(line)
            line += len(lines)
        if line == 1:
            return results
        db = self._connection()
        db.execute(f"CREATE OR REPLACE TEMP TABLE kpi_lines AS {lines_sql(path)}")
        read = db.execute("SELECT count(*) FROM kpi_lines").fetchone()[0]
        if read != line - 1:  # the reader split lines differently: never misattribute
            raise duckdb.InvalidInputException(f"read {read} lines, expected {line - 1}")
        db.execute("CREATE OR REPLACE TEMP TABLE kpi_requests (req INTEGER, first_line BIGINT)")
        db.executemany(  # empty requests have no line (and would tie with the next one's first line)
            "INSERT INTO kpi_requests VALUES (?, ?)", [[i, first] for i, first in enumerate(firsts) if requests[i]]
        )
        # Per request as the loader counts per file (`_accepted_events`): a valid line is
        # accepted when it is the first valid line of its id, a duplicate otherwise.
        rows = db.execute(
            f"""
            WITH staged AS (
                SELECT r.req, s.line_no - r.first_line AS idx, s.reason, s.event_id
                FROM (SELECT line_no, reason, event_id FROM ({self._stage})) s
                ASOF JOIN kpi_requests r ON s.line_no >= r.first_line
            ),
            ranked AS (
                SELECT *, row_number() OVER (PARTITION BY req, reason IS NULL, event_id ORDER BY idx) AS rn
                FROM staged
            )
            SELECT req,
                   count(*) FILTER (WHERE reason IS NULL AND rn = 1) AS accepted,
                   count(*) FILTER (WHERE reason IS NULL AND rn > 1) AS duplicates,
                   coalesce(list(idx ORDER BY idx) FILTER (WHERE reason IS NOT NULL), []) AS bad_index,
                   coalesce(list(reason ORDER BY idx) FILTER (WHERE reason IS NOT NULL), []) AS bad_reason
            FROM ranked GROUP BY req
            """
        ).fetchall()
        db.execute("DROP TABLE kpi_lines")
        for req, accepted, duplicates, indexes, reasons in rows:
            result = results[req]
            result.accepted, result.duplicates = accepted, duplicates
            result.rejected = [{"index": int(i), "reason": r} for i, r in zip(indexes, reasons)]
        return results


# --------------------------------------------------------------------------- storage


class LandingWriter:
    """Durable files in the landing directory, visible only when complete (the landing
    directory's convention: hidden name, then rename)."""

    def __init__(self, directory: str | os.PathLike[str], sweep: bool = True):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.directory / ".kpi-api.lock"
        if sweep:
            self._sweep()

    def _sweep(self, older_than: float = 3600) -> None:
        """Remove temporary files left by a crash (never acknowledged: their clients got no
        202 and send again). An hour is far longer than any request."""
        limit = time.time() - older_than
        for path in self.directory.glob(".api-*.ndjson.tmp"):
            try:
                if path.stat().st_mtime < limit:
                    path.unlink()
            except OSError:
                pass

    def check(self) -> None:
        """Raise OSError when files cannot be written there."""
        probe = self.directory / f".kpi-api-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)

    def write_temp(self, data: bytes) -> Path:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"api-{stamp}-{uuid.uuid4().hex[:16]}.ndjson"
        temp = self.directory / f".{name}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.discard(temp)
            raise
        os.close(fd)
        return temp

    def publish(self, temp: Path) -> Path:
        """Rename the complete file to its visible name, then fsync the directory: after
        this returns, a crash loses nothing. The rename happens under a lock with the
        file's modification time set just before, so files appear in modification-time
        order (the landing sensor's cursor is the newest modification time it has seen)."""
        final = temp.with_name(temp.name[1:-len(".tmp")])
        lock = os.open(self._lock_path, os.O_WRONLY | os.O_CREAT, 0o640)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            now = time.time_ns()
            os.utime(temp, ns=(now, now))
            os.rename(temp, final)
        finally:
            os.close(lock)  # releases the flock
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return final

    @staticmethod
    def discard(temp: Path) -> None:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass


class Collector:
    """Stores a request's event lines; `store` returns only once they are durable."""

    def store(self, lines: list[bytes]) -> BatchResult:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LandingCollector(Collector):
    """DuckDB: landing files, counts from the loader's validation SQL. Requests validated
    together share one landing file (group commit): fewer, larger files for the landing
    sensor's runs, and one fsync per batch; each request's 202 waits for that file to be
    durable and visible."""

    def __init__(self, landing_dir: str, salt: str):
        self.writer = LandingWriter(landing_dir)
        self.validator = BatchValidator(salt, writer=self.writer)

    def store(self, lines: list[bytes]) -> BatchResult:
        if not lines:
            return BatchResult()
        return self.validator.validate(lines)

    def close(self) -> None:
        self.validator.close()


class WarehouseCollector(Collector):
    """PostgreSQL: `EventLoader.load_file` in one transaction; the loader's counts. The
    reasons of rejected lines (the loader only counts them) come from the same validation
    SQL, run only when there are rejects."""

    def __init__(self, warehouse: Warehouse, salt: str):
        self.warehouse = warehouse
        self.loader = EventLoader(warehouse, salt)
        self.validator = BatchValidator(salt)
        self._workdir = tempfile.mkdtemp(prefix="kpi-api-load-")

    def store(self, lines: list[bytes]) -> BatchResult:
        if not lines:
            return BatchResult()
        name = f"api-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:16]}"
        path = Path(self._workdir) / f"{name}.ndjson"
        path.write_bytes(file_bytes(lines))
        try:
            loaded = self.loader.load_file(path, source_name=f"api:{name}")
        except IngestError as error:
            raise BodyError(422, ("body",), f"body: {str(error).split(': ', 1)[-1]}") from None
        except Exception as error:  # the warehouse: nothing was committed
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise StoreUnavailable(f"the warehouse did not take the events: {message}") from None
        finally:
            path.unlink(missing_ok=True)
        result = BatchResult(loaded.accepted, loaded.duplicates, stored_as=f"api:{name}")
        if loaded.rejected:
            result.rejected = self.validator.validate(lines).rejected
        return result

    def close(self) -> None:
        self.validator.close()
        shutil.rmtree(self._workdir, ignore_errors=True)


# --------------------------------------------------------------------------- webhooks


def order_lines(body: bytes, max_events: int = MAX_EVENTS) -> list[bytes]:
    """Orders posted by an external system (one JSON object, or a list of them) as
    `business` events with action `order`, one line each. Nothing is checked here: the
    loader's validation rejects a bad order with a reason naming the envelope field.

    An order: `order_id`, `session_id`, `timestamp`, `revenue`, `currency`,
    `product_ids`, optional `user_id`, optional `id` (the event id; default
    `order:<order_id>`, so a re-sent order is a duplicate), any other keys kept in the
    event's metadata."""
    if not body.strip():
        raise BodyError(422, ("body",), "body: empty; send an order object or a list of orders")
    try:
        lines = [_dumps(_order_event(order)) for order in _orders(_loads(body), max_events)]
    except (ValueError, TypeError):  # orjson refuses the text, or to write nesting over 254 levels
        lines = _orders_by_stdlib(body, max_events)
    _check_line_sizes(lines)
    return lines


def _orders(value: Any, max_events: int) -> list[Any]:
    orders = value if isinstance(value, list) else [value]
    if len(orders) > max_events:
        raise BodyError(413, ("body",), f"body: {len(orders)} orders; at most {max_events} a request")
    return orders


_ENVELOPE_KEYS = ("id", "timestamp", "session_id", "user_id")


def _order_event(order: Any) -> Any:
    if not isinstance(order, dict):
        return order  # rejected by the loader as not an object
    metadata = {key: value for key, value in order.items() if key not in _ENVELOPE_KEYS}
    metadata["action"] = "order"
    order_id = order.get("order_id")
    event: dict[str, Any] = {
        "id": order.get("id", f"order:{order_id}" if isinstance(order_id, str) and order_id.strip() else None),
        "type": "business",
        "timestamp": order.get("timestamp"),
        "session_id": order.get("session_id"),
        "source": "external",
        "metadata": metadata,
    }
    if "user_id" in order:
        event["user_id"] = order["user_id"]
    return event
