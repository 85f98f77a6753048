"""`kpi serve [--host H] [--port P] [--workers N]`: uvicorn running the app factory."""

from __future__ import annotations

import argparse
import errno
import socket
import sys


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (1-64)")
    return int(text)


def add_serve_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `serve` to the `kpi` command's subparsers."""
    parser = subparsers.add_parser("serve", help="the collector, the KPI API and the dashboards (uvicorn)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--workers", type=_workers, default=None, help="worker processes (default KPI_API_WORKERS, or 1)"
    )
    parser.set_defaults(func=cmd_serve)
    return parser


def check_settings():
    """The API's settings; ConfigError, ValueError or WarehouseError (one line) for settings it
    cannot use."""
    from kpi_pipelines.api.app import ApiState
    from kpi_pipelines.api.config import ApiSettings

    settings = ApiSettings.from_env()
    ApiState(settings).close()  # validates the warehouse URL (opens nothing)
    return settings


def announce(settings) -> None:
    """Where the warehouse is and, one line each, that it does not answer (the API then answers
    503 until it does) and which doors are closed."""
    from kpi_pipelines.api.app import ApiState
    from kpi_pipelines.display import announce_warehouse
    from kpi_pipelines.warehouse import Warehouse, WarehouseError

    announce_warehouse(Warehouse(settings.warehouse_url, settings.warehouse_schema or None), sys.stdout)
    state = ApiState(settings)
    try:
        if state.warehouse is not None:  # a server: does it answer? (a DuckDB file is opened per request)
            state.warehouse.engine
    except WarehouseError as error:
        print(f"kpi: warning: {error}; serving anyway: the KPI API answers 503 until it answers", file=sys.stderr)
    finally:
        state.close()
    if not settings.api_keys:
        print("kpi: warning: KPI_API_KEYS is not set: every /api/kpi request is refused (401)", file=sys.stderr)
    if not settings.webhook_secret:
        print("kpi: warning: KPI_WEBHOOK_SECRET is not set: the business webhook is refused (401)", file=sys.stderr)


def check_address(host: str, port: int) -> None:
    """SystemExit with one line if uvicorn could not listen on host:port (it would log its own
    error and exit 3): bound and released here the way uvicorn binds it."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise SystemExit(f"kpi: error: {host}:{port} is already in use (another kpi serve?); choose another --port") from None
            raise SystemExit(f"kpi: error: cannot listen on {host}:{port}: {error.strerror or error}") from None


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int | None = None, log_level: str = "info") -> None:
    import uvicorn

    from kpi_pipelines.api.config import SHUTDOWN_SECONDS, ConfigError, default_workers
    from kpi_pipelines.warehouse import WarehouseError

    try:
        settings = check_settings()
        workers = workers or default_workers()
    except (ConfigError, ValueError, WarehouseError) as error:
        raise SystemExit(f"kpi: error: {error}") from None
    check_address(host, port)
    announce(settings)
    uvicorn.run(
        "kpi_pipelines.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    serve(args.host, args.port, args.workers)
    return 0
