"""The FastAPI app of `kpi serve`: the collector, the KPI API and the dashboards.

`create_app()` reads the environment (docs/api.md, "Configuration"); uvicorn calls it as a
factory (`kpi_pipelines.api.app:create_app`), once per worker process.

Every call that may block on the warehouse or the disk runs through `in_thread`: a daemon
thread, awaited for at most the warehouse's timeouts. So a database that accepts
connections but never answers gets a 503 with `Retry-After`, and on SIGTERM the process
exits within SHUTDOWN_SECONDS (anyio's worker threads are joined at exit, and one stuck on
such a database would keep the process alive).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import functools
import gc
import io
import json
import re
import string
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, TypeVar

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.staticfiles import StaticFiles

from kpi_pipelines.api.config import MAX_EVENTS, ApiSettings
from kpi_pipelines.api.ingest import (
    BodyError,
    Collector,
    LandingCollector,
    LandingWriter,
    StoreUnavailable,
    WarehouseCollector,
    body_lines,
    order_lines,
)
from kpi_pipelines.api.read import (
    METRICS_RELATION,
    DuckDBSnapshots,
    MetricQuery,
    Reader,
    Unavailable,
    WarehouseReader,
    active_alerts,
    read_metrics,
)
from kpi_pipelines.api.security import (
    KeyRing,
    RateLimiter,
    SignatureError,
    presented_key,
    verify_signature,
)
from kpi_pipelines.kpis import registry
from kpi_pipelines.warehouse import Warehouse, parse_warehouse_url

try:
    import orjson

    def _json_bytes(value: Any) -> bytes:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)

except ImportError:  # pragma: no cover

    def _json_bytes(value: Any) -> bytes:
        return json.dumps(value, default=str, allow_nan=False).encode()


STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGES_DIR = Path(__file__).resolve().parent / "pages"
DASHBOARDS = {"executive": "Executive", "operations": "Operations"}


def render_dashboard(page: str) -> str:
    """A dashboard page: the shared shell (pages/layout.html) around the page's own panels
    (pages/<page>.html)."""
    current = ' aria-current="page"'
    nav = "".join(
        f'<a href="/dashboards/{name}"{current if name == page else ""}>{label}</a>' for name, label in DASHBOARDS.items()
    )
    layout = string.Template((PAGES_DIR / "layout.html").read_text(encoding="utf-8"))
    content = (PAGES_DIR / f"{page}.html").read_text(encoding="utf-8")
    return layout.substitute(title=page, page=page, nav=nav, content=content)


MIN_DATE, MAX_DATE = dt.date(2000, 1, 1), dt.date(2100, 12, 31)
MAX_RANGE_DAYS = 3700
_DIMENSION_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\-]{1,200}$")

# The seed's reading endpoints: path under /api/kpi/ -> its summary. The metrics each serves
# come from the metric registry (MetricSpec.endpoint); a registry endpoint without a summary
# here fails at import.
ENDPOINT_SUMMARIES = {
    "data-quality/completeness": "Catalog completeness, overall, per required field and per category",
    "data-quality/normalization": "Catalog normalization (brand, category, price, title), its score and the quality score",
    "retrieval/precision-recall": "Retrieval quality over judged queries: precision, recall, MRR, nDCG",
    "search/success-rate": "Search success, click-through and no-results rates, and query volume",
    "user/engagement": "Engagement: searches and sessions per user, refinements, click position, time to first click",
    "user/satisfaction": "Search satisfaction (mean 1-5 rating) and CSAT",
    "business/conversion-rate": "Session conversion rate",
    "business/revenue-metrics": "Revenue, orders, average order value, revenue per session, 30-day customer value",
    "business/customer-retention": "Day-1 and day-7 retention of each first-seen cohort",
}
KPI_ENDPOINTS: dict[str, tuple[str, tuple[str, ...]]] = {
    path: (ENDPOINT_SUMMARIES[path], names) for path, names in registry.endpoints().items()
}


# --------------------------------------------------------------------------- models


class Rejection(BaseModel):
    index: int = Field(description="0-based position of the event in the request (the line, for NDJSON)")
    reason: str = Field(description="every contract rule the event breaks, e.g. `session_id: required`")


class EventsAccepted(BaseModel):
    accepted: int = Field(description="events stored (DuckDB: written for ingestion; see docs/api.md)")
    duplicates: int = Field(description="valid events whose id was already seen")
    rejected: list[Rejection] = Field(description="invalid events, kept in rejected_events with the reason")


class EventEnvelope(BaseModel):
    """The event contract (docs/events.md); unknown keys are kept."""

    model_config = {"extra": "allow"}
    id: str
    type: Literal["search", "generation", "review", "data_quality", "system_performance", "business"]
    timestamp: str = Field(description="ISO-8601 date and time with a zone")
    session_id: str
    user_id: str | None = None
    source: Literal["api", "dashboard", "system", "external"]
    metadata: dict[str, Any]


class Order(BaseModel):
    """An order from an external system; other keys are kept in the event's metadata."""

    model_config = {"extra": "allow"}
    order_id: str
    session_id: str
    timestamp: str = Field(description="ISO-8601 date and time with a zone")
    revenue: float = Field(ge=0)
    currency: str
    product_ids: list[str]
    user_id: str | None = None
    id: str | None = Field(default=None, description="event id; default `order:<order_id>`")


class MetricRow(BaseModel):
    metric_name: str
    metric_value: float | None
    dimensions: dict[str, Any]
    timestamp: str = Field(description="UTC bucket start, ISO-8601")
    aggregation_level: str


class MetricsResponse(BaseModel):
    relation: str
    start: str
    end: str
    aggregation_level: str
    count: int
    truncated: bool
    metrics: list[MetricRow]


class Point(BaseModel):
    timestamp: str
    value: float | None


class Series(BaseModel):
    metric_name: str
    dimensions: dict[str, Any]
    aggregation_level: str
    points: list[Point]


class SeriesResponse(BaseModel):
    endpoint: str
    metrics: list[str]
    start: str
    end: str
    aggregation_level: str
    truncated: bool
    series: list[Series]


class AlertsResponse(BaseModel):
    count: int
    alerts: list[dict[str, Any]]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    warehouse: dict[str, Any]
    collector: dict[str, Any]


class Problem(BaseModel):
    detail: Any


ERRORS = {
    401: {"model": Problem, "description": "no valid API key"},
    429: {"model": Problem, "description": "rate limit: wait `Retry-After` seconds"},
}
READ_ERRORS = {**ERRORS, 503: {"model": Problem, "description": "the warehouse cannot be read now (`Retry-After`)"}}
WRITE_ERRORS = {
    **ERRORS,
    413: {"model": Problem, "description": "body over the size limit or more than 10,000 events"},
    415: {"model": Problem, "description": "not application/json or application/x-ndjson"},
    422: {"model": Problem, "description": "the body is not a JSON list / NDJSON text (field named in `detail`)"},
    503: {"model": Problem, "description": "the events could not be stored now; nothing was acknowledged"},
}
CSV_CONTENT = {"text/csv": {"schema": {"type": "string"}}}


# --------------------------------------------------------------------------- helpers


def problem(status: int, loc: tuple[str, ...] | list[str], message: str) -> JSONResponse:
    """A 422-style answer naming the field, in FastAPI's validation-error shape."""
    return JSONResponse(
        {"detail": [{"loc": list(loc), "msg": message, "type": "value_error"}], "message": message},
        status_code=status,
    )


class InputError(Exception):
    def __init__(self, loc: tuple[str, ...], message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


def _json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json_bytes(value), status_code=status, media_type="application/json", headers=headers)


def _iso(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(timespec="seconds") + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _dimensions(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_raw": text}


_CSV_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    """Text cells that a spreadsheet would run as a formula get a leading quote (OWASP)."""
    if isinstance(value, str) and value.startswith(_CSV_FORMULA):
        return "'" + value
    return value


def _csv_response(rows: list[dict[str, Any]], columns: list[str], filename: str, headers: dict[str, str]) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(_iso(row.get(column))) for column in columns])
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={**headers, "Content-Disposition": f'attachment; filename="{filename}"'},
    )


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"body: {int(length)} bytes; at most {limit} a request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body: more than {limit} bytes; at most {limit} a request")
        chunks.append(chunk)
    return b"".join(chunks)


T = TypeVar("T")


async def in_thread(call: Callable[[], T], deadline: float) -> T:
    """`call()` in a new daemon thread, awaited for at most `deadline` seconds; past it,
    `Unavailable` (503). The call may still finish: a write is then stored but not
    acknowledged, and its retry is counted as duplicates."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def run() -> None:
        try:
            result, error = call(), None
        except BaseException as caught:  # noqa: BLE001  (handed to the awaiting request)
            result, error = None, caught
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: the server stopped, no one is waiting
            pass

    threading.Thread(target=run, name="kpi-api-call", daemon=True).start()
    try:
        return await asyncio.wait_for(future, deadline)
    except TimeoutError:
        raise Unavailable(f"the warehouse did not answer within {deadline:g} s", retry_after=5) from None


# --------------------------------------------------------------------------- the app


class ApiState:
    """What the routes share: settings, keys, rate limits, the collector and the reader."""

    def __init__(self, settings: ApiSettings):
        self.settings = settings
        self.keys = KeyRing(settings.api_keys)
        self.limiter = RateLimiter(settings.rate_per_second, settings.rate_burst)
        self.failures = RateLimiter(5.0, 30.0)  # failed authentication, per client address
        self.url = parse_warehouse_url(settings.warehouse_url)
        self.dialect = "duckdb" if self.url.get_backend_name() == "duckdb" else "postgresql"
        self.warehouse: Warehouse | None = None
        self.snapshots: DuckDBSnapshots | None = None
        if self.dialect == "duckdb":
            database = self.url.database or ""
            if not database or database.startswith(":memory:"):
                raise ValueError("KPI_WAREHOUSE_URL: `kpi serve` needs a DuckDB file, not an in-memory database")
            self.snapshots = DuckDBSnapshots(
                Path(database), settings.warehouse_schema or None, settings.snapshot_seconds, settings.snapshot_minute_days
            )
        else:
            self.warehouse = Warehouse(
                settings.warehouse_url,
                settings.warehouse_schema or None,
                connect_timeout=settings.connect_timeout,
                statement_timeout=settings.statement_timeout,
            )
        # a request waits this long for the warehouse: its own timeouts normally answer first
        self.deadline = settings.connect_timeout + settings.statement_timeout + 2
        self._collector: Collector | None = None
        self._collector_lock = threading.Lock()

    def collector(self) -> Collector:
        if self._collector is None:
            with self._collector_lock:
                if self._collector is None:
                    try:
                        if self.dialect == "duckdb":
                            self._collector = LandingCollector(self.settings.landing_dir, self.settings.pii_salt)
                        else:
                            self._collector = WarehouseCollector(self.warehouse, self.settings.pii_salt)
                    except OSError as error:
                        raise StoreUnavailable(f"cannot use the landing directory: {error.strerror or error}") from None
        return self._collector

    def reader(self) -> Reader:
        if self.snapshots is not None:
            return self.snapshots.reader()
        return WarehouseReader(self.warehouse)

    def close(self) -> None:
        if self._collector is not None:
            self._collector.close()

    def off_loop(self, route: Callable[..., T]) -> Callable[..., Any]:
        """A blocking route as an async one whose work runs `in_thread` (same signature, so
        FastAPI resolves the same parameters)."""

        @functools.wraps(route)
        async def wrapper(*args: Any, **kwargs: Any) -> T:
            return await in_thread(lambda: route(*args, **kwargs), self.deadline)

        return wrapper


_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer KEY`, a key of KPI_API_KEYS")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="a key of KPI_API_KEYS")


def _state(request: Request) -> ApiState:
    return request.app.state.kpi


def require_key(
    request: Request,
    _bearer_credentials: Any = Security(_bearer),
    _x_api_key: Any = Security(_api_key),
) -> int:
    """401 without a valid key, 429 when the key's bucket is empty; returns the key's index."""
    state = _state(request)
    index = state.keys.match(presented_key(request.headers.get("authorization"), request.headers.get("x-api-key")))
    if index is None:
        client = request.client.host if request.client else "unknown"
        wait = state.failures.take(f"ip:{client}")
        if wait:
            raise HTTPException(429, "too many failed authentications; slow down", headers={"Retry-After": str(wait)})
        message = (
            "a valid API key is required (Authorization: Bearer KEY or X-API-Key: KEY)"
            if state.keys
            else "the API is closed: no API keys are configured (set KPI_API_KEYS)"
        )
        raise HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})
    wait = state.limiter.take(f"key:{index}")
    if wait:
        raise HTTPException(429, f"rate limit of this API key exceeded; retry in {wait} s", headers={"Retry-After": str(wait)})
    return index


Key = Annotated[int, Depends(require_key)]


def _date_param(name: str, value: dt.date | None, default: dt.date) -> dt.date:
    value = default if value is None else value
    if not MIN_DATE <= value <= MAX_DATE:
        raise InputError(("query", name), f"{name}: must be between {MIN_DATE} and {MAX_DATE}")
    return value


def metric_query(
    request: Request,
    start: Annotated[dt.date | None, Query(description="first UTC day, YYYY-MM-DD (default: 29 days before end)")] = None,
    end: Annotated[dt.date | None, Query(description="last UTC day, included, YYYY-MM-DD (default: today)")] = None,
    aggregation_level: Annotated[Literal["minute", "hour", "day", "week"], Query(description="bucket size")] = "day",
    dimensions: Annotated[
        str | None,
        Query(
            max_length=2000,
            description='exact dimension set as a JSON object of strings, e.g. `{"model":"gpt-x"}`; `{}` = the overall value. '
            "`dim.KEY=VALUE` (repeatable) keeps the series having that dimension value.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1_000_000, description="at most this many rows")] = 100_000,
) -> MetricQuery:
    today = dt.datetime.now(dt.UTC).date()
    end_day = _date_param("end", end, today)
    start_day = _date_param("start", start, end_day - dt.timedelta(days=29))
    if start_day > end_day:
        raise InputError(("query", "start"), f"start: {start_day} is after end {end_day}")
    if (end_day - start_day).days > MAX_RANGE_DAYS:
        raise InputError(("query", "start"), f"start: the range is longer than {MAX_RANGE_DAYS} days")
    exact = None
    if dimensions is not None:
        try:
            exact = json.loads(dimensions)
        except (ValueError, RecursionError):
            raise InputError(("query", "dimensions"), "dimensions: not a JSON object") from None
        _check_dimensions(exact, ("query", "dimensions"))
    contains: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("dim."):
            name = key[4:]
            if not _DIMENSION_KEY.match(name):
                raise InputError(("query", key), f"{key}: a dimension name is letters, digits and _ (at most 64)")
            if len(value) > 500:
                raise InputError(("query", key), f"{key}: value longer than 500 characters")
            if name in contains and contains[name] != value:
                raise InputError(("query", key), f"{key}: given twice with different values")
            contains[name] = value
    if len(contains) > 10:
        raise InputError(("query", "dim"), "dim.*: at most 10 dimension filters")
    return MetricQuery(start_day, end_day, (), aggregation_level, exact, contains, limit)


def _nul_parameter(request: Request) -> Response | None:
    """422 for a query parameter holding U+0000 (PostgreSQL text cannot hold it; no
    parameter needs it), before any route reads it."""
    for key, value in request.query_params.multi_items():
        if "\x00" in key or "\x00" in value:
            name = key.replace("\x00", "\\x00")
            return problem(422, ("query", name), f"query parameter {name}: holds the NUL character (U+0000)")
    return None


def _check_dimensions(value: Any, loc: tuple[str, ...]) -> None:
    if not isinstance(value, dict):
        raise InputError(loc, "dimensions: not a JSON object")
    if len(value) > 10:
        raise InputError(loc, "dimensions: at most 10 keys")
    for key, item in value.items():
        if not _DIMENSION_KEY.match(key):
            raise InputError(loc, f"dimensions: key {key[:70]!r} is not letters, digits and _ (at most 64)")
        if not isinstance(item, str) or len(item) > 500:
            raise InputError(loc, f"dimensions.{key}: expected a string of at most 500 characters")


Format = Annotated[Literal["json", "csv"], Query(description="`csv` exports the rows as CSV")]


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings.from_env()
    state = ApiState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # The start-up objects (FastAPI, pydantic, DuckDB, SQLAlchemy) never die: keep them
        # out of the cyclic collector, whose full passes over them stalled requests by ~100 ms.
        gc.freeze()
        yield
        state.close()

    app = FastAPI(
        title="KPI pipelines API",
        version="1.0",
        description=(
            "The collector, the KPI API and the dashboards of `kpi serve`. Every `/api/kpi` endpoint "
            "needs a key of `KPI_API_KEYS` (`Authorization: Bearer KEY` or `X-API-Key: KEY`); the "
            "business webhook is signed instead. See docs/api.md."
        ),
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN: not offline
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.kpi = state

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(error.errors())
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", [])]
        where = f"{loc[0]} parameter {'.'.join(loc[1:])}" if len(loc) > 1 else ".".join(loc)
        return JSONResponse({"detail": errors, "message": f"{where}: {first.get('msg')}"}, status_code=422)

    @app.exception_handler(InputError)
    async def _input(request: Request, error: InputError) -> JSONResponse:
        return problem(422, error.loc, error.message)

    @app.exception_handler(BodyError)
    async def _body(request: Request, error: BodyError) -> JSONResponse:
        if error.status == 422:
            return problem(422, error.loc, error.message)
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, error: Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": str(error.retry_after)})

    @app.exception_handler(StoreUnavailable)
    async def _store(request: Request, error: StoreUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, error: ClientDisconnect) -> Response:
        # the client left before its body arrived (or sent more than its Content-Length, the
        # rest being a bad next request): nobody reads this answer, and nothing is wrong here
        return Response(status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=getattr(error, "headers", None))

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        path = request.url.path
        response = _nul_parameter(request) if path.startswith("/api/") else None
        if response is None:
            response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if path.startswith("/api/") or path == "/healthz":
            response.headers.setdefault("Cache-Control", "no-store")
        else:
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
            )
            response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    # ------------------------------------------------------------------ health

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}}, tags=["health"])
    async def healthz() -> Response:
        """The warehouse can be read (or is busy with a writer) and events can be stored. No key needed."""
        try:
            warehouse, collector = await in_thread(_check_health, state.deadline)
        except Unavailable as error:
            warehouse, collector = {"dialect": state.dialect, "ok": False, "detail": str(error)}, {"ok": False}
        ok = warehouse["ok"] and collector["ok"]
        body = {"status": "ok" if ok else "unavailable", "warehouse": warehouse, "collector": collector}
        return _json_response(body, 200 if ok else 503, None if ok else {"Retry-After": "5"})

    def _check_health() -> tuple[dict[str, Any], dict[str, Any]]:
        warehouse: dict[str, Any] = {"dialect": state.dialect, "ok": True}
        collector: dict[str, Any] = {"ok": True}
        if state.snapshots is not None:
            try:
                state.snapshots.current()
            except Unavailable as error:
                warehouse["ok"] = error.retry_after < 5  # locked by a writer: busy, not broken
                warehouse["detail"] = str(error)
            warehouse.update(state.snapshots.status())
            try:
                LandingWriter(settings.landing_dir, sweep=False).check()
                collector["landing_dir"] = "writable"
            except OSError as error:
                collector.update(ok=False, detail=f"landing directory not writable: {error.strerror or error}")
        else:
            try:
                state.warehouse.scalar("SELECT 1")
            except Exception as error:
                text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                warehouse.update(ok=False, detail=text)
            collector["ok"] = warehouse["ok"]
        return warehouse, collector

    # ------------------------------------------------------------------ collector

    events_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "array", "maxItems": MAX_EVENTS, "items": EventEnvelope.model_json_schema()}},
                "application/x-ndjson": {"schema": {"type": "string", "description": "one event (JSON object) per line"}},
            },
        }
    }

    @app.post(
        "/api/kpi/events",
        status_code=202,
        response_model=EventsAccepted,
        responses=WRITE_ERRORS,
        openapi_extra=events_body,
        tags=["collector"],
    )
    async def post_events(request: Request, _key: Key) -> Response:
        """Store up to 10,000 events: a JSON list, or NDJSON (`Content-Type: application/x-ndjson`).

        Validated, pseudonymized, masked and deduplicated by the event loader, as `kpi ingest`.
        `rejected[].index` is the 0-based position in the request. A 202 means the accepted
        events are stored durably."""
        started = time.perf_counter()
        body = await read_body(request, settings.max_body_bytes)
        content_type = request.headers.get("content-type")
        timings: dict[str, float] = {"read": time.perf_counter() - started}

        def store() -> Any:
            began = time.perf_counter()
            lines = body_lines(body, content_type)
            timings["parse"] = time.perf_counter() - began
            stored = state.collector().store(lines)
            timings["store"] = time.perf_counter() - began - timings["parse"]
            return stored

        result = await in_thread(store, state.deadline)
        timings.update(result.timings)
        timings["total"] = time.perf_counter() - started
        headers = {"Server-Timing": ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in timings.items())}
        if result.stored_as:
            headers["X-KPI-Stored-As"] = result.stored_as
        return _json_response(result.as_json(), 202, headers)

    @app.post(
        "/api/kpi/webhooks/business",
        status_code=202,
        response_model=EventsAccepted,
        responses={
            **{k: v for k, v in WRITE_ERRORS.items() if k != 401},
            401: {"model": Problem, "description": "missing, stale or wrong signature"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"oneOf": [Order.model_json_schema(), {"type": "array", "items": Order.model_json_schema()}]}
                    }
                },
            }
        },
        tags=["collector"],
    )
    async def business_webhook(
        request: Request,
        x_kpi_signature: Annotated[
            str | None, Header(description="`sha256=<hex HMAC-SHA256 of the raw body with KPI_WEBHOOK_SECRET>`")
        ] = None,
        x_kpi_timestamp: Annotated[
            str | None, Header(description="optional unix seconds; then the signed text is `<timestamp>.<body>`")
        ] = None,
    ) -> Response:
        """Orders from external systems, signed with KPI_WEBHOOK_SECRET, stored as `business`
        events with action `order` (source `external`, id `order:<order_id>` unless given)."""
        client = request.client.host if request.client else "unknown"
        wait = state.limiter.take(f"webhook:{client}")
        if wait:
            raise HTTPException(429, f"rate limit exceeded; retry in {wait} s", headers={"Retry-After": str(wait)})
        body = await read_body(request, settings.max_body_bytes)
        try:
            verify_signature(settings.webhook_secret, body, x_kpi_signature, x_kpi_timestamp)
        except SignatureError as error:
            raise HTTPException(401, str(error)) from None
        result = await in_thread(lambda: state.collector().store(order_lines(body)), state.deadline)
        return _json_response(result.as_json(), 202)

    # ------------------------------------------------------------------ reading

    def _metrics(query: MetricQuery) -> tuple[list[dict[str, Any]], bool, dict[str, str]]:
        reader = state.reader()
        since = getattr(reader, "minute_since", None)
        if query.aggregation_level == "minute" and since is not None and query.start < since:
            raise InputError(
                ("query", "start"),
                f"start: on DuckDB the API holds minute values from {since} on (the last "
                f"{settings.snapshot_minute_days} days of KPI_API_SNAPSHOT_MINUTE_DAYS); ask for a later start "
                "or aggregation_level=hour",
            )
        probe = MetricQuery(**{**query.__dict__, "limit": query.limit + 1})
        rows = read_metrics(reader, probe)
        truncated = len(rows) > query.limit
        return rows[: query.limit], truncated, getattr(reader, "headers", {})

    def _rows_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "metric_name": row["metric_name"],
                "metric_value": None if row["metric_value"] is None else float(row["metric_value"]),
                "dimensions": _dimensions(row["dimensions"]),
                "timestamp": _iso(row["timestamp"]),
                "aggregation_level": row["aggregation_level"],
            }
            for row in rows
        ]

    @app.get(
        "/api/kpi/metrics",
        response_model=MetricsResponse,
        responses={**READ_ERRORS, 200: {"content": CSV_CONTENT}},
        tags=["metrics"],
    )
    @state.off_loop
    def get_metrics(
        _key: Key,
        query: Annotated[MetricQuery, Depends(metric_query)],
        name: Annotated[
            list[str] | None,
            Query(
                description="metric name or shell-style pattern (`retrieval.*`), repeatable",
                json_schema_extra={"maxItems": 50, "items": {"type": "string", "pattern": _NAME_PATTERN.pattern}},
            ),
        ] = None,
        format: Format = "json",
    ) -> Response:
        """KPI values of every grain (`kpi_metrics_all`: the daily KPIs and the dbt rollups), filtered;
        `format=csv` exports them."""
        names = list(name or [])
        if len(names) > 50:
            raise InputError(("query", "name"), "name: at most 50 names or patterns")
        for pattern in names:
            if not _NAME_PATTERN.match(pattern):
                raise InputError(("query", "name"), f"name: {pattern[:80]!r} is not a metric name or pattern (letters, digits, . _ - * ?)")
        query = MetricQuery(**{**query.__dict__, "names": tuple(names)})
        rows, truncated, headers = _metrics(query)
        if truncated:
            headers = {**headers, "X-KPI-Truncated": "true"}
        if format == "csv":
            return _csv_response(rows, list(("metric_name", "metric_value", "dimensions", "timestamp", "aggregation_level")),
                                 f"kpi-metrics-{query.start}-{query.end}.csv", headers)
        body = {
            "relation": METRICS_RELATION,
            "start": query.start.isoformat(),
            "end": query.end.isoformat(),
            "aggregation_level": query.aggregation_level,
            "count": len(rows),
            "truncated": truncated,
            "metrics": _rows_json(rows),
        }
        return _json_response(body, headers=headers)

    def _kpi_route(path: str, summary: str, names: tuple[str, ...]) -> None:
        @state.off_loop
        def endpoint(_key: Key, query: Annotated[MetricQuery, Depends(metric_query)], format: Format = "json") -> Response:
            query = MetricQuery(**{**query.__dict__, "names": names})
            rows, truncated, headers = _metrics(query)
            if format == "csv":
                return _csv_response(rows, ["metric_name", "metric_value", "dimensions", "timestamp", "aggregation_level"],
                                     f"kpi-{path.replace('/', '-')}-{query.start}-{query.end}.csv", headers)
            series: dict[tuple[str, str], dict[str, Any]] = {}
            for row in rows:
                key = (row["metric_name"], row["dimensions"])
                item = series.get(key)
                if item is None:
                    item = series[key] = {
                        "metric_name": row["metric_name"],
                        "dimensions": _dimensions(row["dimensions"]),
                        "aggregation_level": row["aggregation_level"],
                        "points": [],
                    }
                value = row["metric_value"]
                item["points"].append({"timestamp": _iso(row["timestamp"]), "value": None if value is None else float(value)})
            body = {
                "endpoint": path,
                "metrics": list(names),
                "start": query.start.isoformat(),
                "end": query.end.isoformat(),
                "aggregation_level": query.aggregation_level,
                "truncated": truncated,
                "series": list(series.values()),
            }
            return _json_response(body, headers=headers)

        endpoint.__name__ = "get_" + re.sub(r"[^a-z0-9]+", "_", path)
        app.get(
            f"/api/kpi/{path}",
            response_model=SeriesResponse,
            responses={**READ_ERRORS, 200: {"content": CSV_CONTENT}},
            summary=summary,
            description=f"{summary}. Metrics: " + ", ".join(f"`{n}`" for n in names) + " (docs/metrics.md).",
            tags=["metrics"],
        )(endpoint)

    for path, (summary, names) in KPI_ENDPOINTS.items():
        _kpi_route(path, summary, names)

    @app.get(
        "/api/kpi/alerts",
        response_model=AlertsResponse,
        responses={**READ_ERRORS, 200: {"content": CSV_CONTENT}},
        tags=["alerts"],
    )
    @state.off_loop
    def get_alerts(_key: Key, format: Format = "json") -> Response:
        """Active and suppressed alert instances, newest first ([] before the alert manager has run)."""
        reader = state.reader()
        alerts = [{key: _iso(value) for key, value in alert.items()} for alert in active_alerts(reader)]
        headers = getattr(reader, "headers", {})
        if format == "csv":
            columns = list(alerts[0]) if alerts else ["id", "rule_name", "metric_name", "status", "severity", "triggered_at"]
            return _csv_response(alerts, columns, "kpi-alerts.csv", headers)
        return _json_response({"count": len(alerts), "alerts": alerts}, headers=headers)

    # ------------------------------------------------------------------ dashboards

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return RedirectResponse("/dashboards/executive")

    pages = {page: render_dashboard(page) for page in DASHBOARDS}

    @app.get("/dashboards/{page}", include_in_schema=False)
    def dashboard(page: str) -> Response:
        if page not in pages:
            raise HTTPException(404, f"no such dashboard: {' or '.join(pages)}")
        return HTMLResponse(pages[page])

    return app
