"""`kpi serve [--host H] [--port P] [--workers N]`: uvicorn running the app factory."""

from __future__ import annotations

import argparse
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
    """Fail early, with one line, on settings the app cannot use; warn about closed doors."""
    from kpi_pipelines.api.app import ApiState
    from kpi_pipelines.api.config import ApiSettings

    settings = ApiSettings.from_env()
    state = ApiState(settings)  # validates the warehouse URL (opens nothing on DuckDB)
    state.close()
    if not settings.api_keys:
        print("kpi: warning: KPI_API_KEYS is not set: every /api/kpi request is refused (401)", file=sys.stderr)
    if not settings.webhook_secret:
        print("kpi: warning: KPI_WEBHOOK_SECRET is not set: the business webhook is refused (401)", file=sys.stderr)
    return settings


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int | None = None, log_level: str = "info") -> None:
    import uvicorn

    from kpi_pipelines.api.config import SHUTDOWN_SECONDS, ConfigError, default_workers

    try:
        check_settings()
        workers = workers or default_workers()
    except (ConfigError, ValueError) as error:
        raise SystemExit(f"kpi: error: {error}") from None
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
