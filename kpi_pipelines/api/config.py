"""The API's settings: the project's (`kpi_pipelines.settings`) plus the few only `kpi serve`
reads. Read once, when the app is created."""

from __future__ import annotations

from dataclasses import dataclass, field

from kpi_pipelines.settings import Settings, setting

MAX_EVENTS = 10_000  # events (lines) per POST, the contract's limit
WEBHOOK_TOLERANCE_SECONDS = 300
SHUTDOWN_SECONDS = 3  # on SIGTERM, requests still running after this are dropped (docs/api.md)


class ConfigError(ValueError):
    """A setting with a value `kpi serve` cannot use."""


def _number(name: str, kind: type = float, minimum: float = 0) -> float:
    text = setting(name)
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={text!r} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class ApiSettings:
    warehouse_url: str
    warehouse_schema: str
    pii_salt: str
    landing_dir: str
    connect_timeout: float
    statement_timeout: float
    api_keys: tuple[str, ...] = field(repr=False)
    webhook_secret: str = field(repr=False)
    rate_per_second: float
    rate_burst: float
    max_body_bytes: int
    snapshot_seconds: float
    snapshot_minute_days: int

    @classmethod
    def from_env(cls) -> ApiSettings:
        base = Settings.from_env()
        keys = tuple(key.strip() for key in setting("KPI_API_KEYS").split(",") if key.strip())
        return cls(
            warehouse_url=base.warehouse_url,
            warehouse_schema=base.warehouse_schema,
            pii_salt=base.pii_salt,
            landing_dir=base.landing_dir,
            connect_timeout=base.connect_timeout,
            statement_timeout=base.statement_timeout,
            api_keys=keys,
            webhook_secret=setting("KPI_WEBHOOK_SECRET"),
            rate_per_second=_number("KPI_API_RATE_PER_SECOND", float, 0.001),
            rate_burst=_number("KPI_API_RATE_BURST", float, 1),
            max_body_bytes=int(_number("KPI_API_MAX_BODY_BYTES", int, 1024)),
            snapshot_seconds=_number("KPI_API_SNAPSHOT_SECONDS", float, 0),
            snapshot_minute_days=int(_number("KPI_API_SNAPSHOT_MINUTE_DAYS", int, 1)),
        )


def default_workers() -> int:
    return int(_number("KPI_API_WORKERS", int, 1))
