"""The configuration table of the README, in one place: each setting's environment variable
and default. Read at the edges only (definitions, the CLI), never deep in the code."""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
import sys
from dataclasses import dataclass

from kpi_pipelines.warehouse import DEFAULT_CONNECT_TIMEOUT, DEFAULT_LOCK_TIMEOUT, DEFAULT_WAREHOUSE_URL, Warehouse

# KPI_PII_SALT's default, with a warning (`Settings.from_env`).
DEVELOPMENT_SALT = "kpi-pipelines-development-salt"

DEFAULTS = {
    "KPI_WAREHOUSE_URL": DEFAULT_WAREHOUSE_URL,
    "KPI_WAREHOUSE_SCHEMA": "",
    "KPI_WAREHOUSE_CONNECT_TIMEOUT": f"{DEFAULT_CONNECT_TIMEOUT:g}",  # seconds, every connection
    "KPI_WAREHOUSE_STATEMENT_TIMEOUT": "30",  # seconds, statements of `kpi serve` and `kpi metrics`
    "KPI_WAREHOUSE_LOCK_TIMEOUT": f"{DEFAULT_LOCK_TIMEOUT:g}",  # seconds, waiting for a DuckDB file held by another process
    "KPI_SOURCE_DB_URL": "",
    "KPI_PII_SALT": DEVELOPMENT_SALT,
    "KPI_LANDING_DIR": "data/landing",
    "KPI_LANDING_AFTER_LOAD": "delete",  # delete | archive | keep
    "DAGSTER_HOME": ".dagster_home",
    "KPI_NIGHTLY_LOOKBACK_DAYS": "2",
    "KPI_FIRST_DAY": "2026-01-01",  # the first daily partition (kpi_pipelines/first_day.py)
    # alerting (docs/alerts.md)
    "KPI_ALERT_RULES": "",  # '' = the packaged kpi_pipelines/alerts/default_rules.yaml
    "SLACK_BOT_TOKEN": "",  # '' = Slack notifications go to the log
    "KPI_SLACK_BASE_URL": "",  # '' = Slack's own
    "DAGSTER_WEBSERVER_URL": "http://localhost:3000",
    "KPI_SMTP_HOST": "",  # '' = e-mail notifications go to the log
    "KPI_SMTP_PORT": "25",
    "KPI_SMTP_FROM": "kpi-alerts@localhost",
    "KPI_SMTP_USER": "",
    "KPI_SMTP_PASSWORD": "",
    "KPI_SMTP_STARTTLS": "false",
    "KPI_ALERT_METRICS_RELATION": "kpi_metrics_all",
    "KPI_ALERT_EVALUATION_INTERVAL": "15m",
    # the collector and KPI API, `kpi serve` (docs/api.md)
    "KPI_API_KEYS": "",  # '' = every /api/kpi request is refused
    "KPI_WEBHOOK_SECRET": "",  # '' = the business webhook is refused
    "KPI_API_RATE_PER_SECOND": "50",
    "KPI_API_RATE_BURST": "100",
    "KPI_API_MAX_BODY_BYTES": str(16 * 1024 * 1024),
    "KPI_API_SNAPSHOT_SECONDS": "5",
    "KPI_API_SNAPSHOT_MINUTE_DAYS": "7",
    "KPI_API_WORKERS": "1",
}


class SettingError(ValueError):
    """A setting read as the definitions load that cannot be used; the message names the variable."""


def setting(name: str) -> str:
    """The environment's value for `name`, or its documented default."""
    value = os.environ.get(name, "")
    return value if value.strip() else DEFAULTS[name]


def choice_setting(name: str, choices: tuple[str, ...]) -> str:
    """A setting that must be one of `choices`; a ValueError naming the variable otherwise."""
    value = setting(name).strip().lower()
    if value not in choices:
        raise ValueError(f"{name}={setting(name)!r}: expected one of {', '.join(choices)}")
    return value


def seconds_setting(name: str) -> float:
    """A positive number of seconds; a ValueError naming the variable otherwise."""
    text = setting(name).strip()
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={text!r}: expected a positive number of seconds")
    return value


@functools.cache
def _warn_development_salt() -> None:
    print(
        "kpi: warning: KPI_PII_SALT is not set; user ids are pseudonymized with the "
        "development salt (set a secret in production)",
        file=sys.stderr,
    )


def day_setting(name: str, earliest: dt.date, latest: dt.date) -> dt.date:
    """A UTC day (YYYY-MM-DD) from `earliest` to `latest`; a SettingError naming the variable otherwise."""
    text = setting(name).strip()
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        day = None
    if day is None or day.isoformat() != text:  # fromisoformat also reads 20260101 and 2026-W01-1
        raise SettingError(f"{name}={text!r}: expected a day as YYYY-MM-DD")
    if not earliest <= day <= latest:
        raise SettingError(f"{name}={text!r}: expected a day from {earliest} to {latest}")
    return day


@dataclass(frozen=True)
class Settings:
    warehouse_url: str
    warehouse_schema: str
    pii_salt: str
    landing_dir: str
    connect_timeout: float
    statement_timeout: float
    lock_timeout: float

    @classmethod
    def from_env(cls, warn_salt: bool = False) -> "Settings":
        """`warn_salt`: for commands that pseudonymize events; warns (once per process) when
        KPI_PII_SALT is not set."""
        if warn_salt and setting("KPI_PII_SALT") == DEVELOPMENT_SALT:
            _warn_development_salt()
        return cls(
            warehouse_url=setting("KPI_WAREHOUSE_URL"),
            warehouse_schema=setting("KPI_WAREHOUSE_SCHEMA"),
            pii_salt=setting("KPI_PII_SALT"),
            landing_dir=setting("KPI_LANDING_DIR"),
            connect_timeout=seconds_setting("KPI_WAREHOUSE_CONNECT_TIMEOUT"),
            statement_timeout=seconds_setting("KPI_WAREHOUSE_STATEMENT_TIMEOUT"),
            lock_timeout=seconds_setting("KPI_WAREHOUSE_LOCK_TIMEOUT"),
        )

    def warehouse(self, interactive: bool = False) -> Warehouse:
        """The configured warehouse with its timeouts. `interactive`: a read a person waits on,
        bounded by KPI_WAREHOUSE_STATEMENT_TIMEOUT (batch work has no statement timeout)."""
        return Warehouse(
            self.warehouse_url,
            self.warehouse_schema or None,
            connect_timeout=self.connect_timeout,
            statement_timeout=self.statement_timeout if interactive else None,
            lock_timeout=self.lock_timeout,
        )


def resource_value(name: str):
    """For Dagster resources: an `EnvVar` when the variable is set (so the UI shows where the
    value comes from and secrets stay out of run config), else the documented default."""
    from dagster import EnvVar

    return EnvVar(name) if os.environ.get(name, "").strip() else DEFAULTS[name]
