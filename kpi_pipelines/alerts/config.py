"""The alerting settings (environment variables, documented in docs/alerts.md). The Dagster
resource carrying them is `resource.py`, loaded on first use, so that `kpi alerts` and the
other commands that do not run Dagster do not import it (issue 13).

Each variable's default is in the project-wide table of `kpi_pipelines/settings.py`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from kpi_pipelines.settings import DEFAULTS, setting

DEFAULT_RULES_PATH = str(Path(__file__).with_name("default_rules.yaml"))
SLACK_DEFAULT_BASE_URL = "https://slack.com/api/"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")

def truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class AlertSettings:
    rules_path: str = DEFAULT_RULES_PATH
    slack_token: str = ""
    slack_base_url: str = SLACK_DEFAULT_BASE_URL
    webserver_url: str = "http://localhost:3000"
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = "kpi-alerts@localhost"
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    metrics_relation: str = DEFAULTS["KPI_ALERT_METRICS_RELATION"]
    evaluation_interval: dt.timedelta = dt.timedelta(minutes=15)

    def __post_init__(self) -> None:
        if not _IDENTIFIER.match(self.metrics_relation):
            raise ValueError(f"KPI_ALERT_METRICS_RELATION {self.metrics_relation!r} is not a plain SQL name")

    @classmethod
    def from_env(cls) -> AlertSettings:
        from kpi_pipelines.alerts.rules import parse_duration

        return cls(
            rules_path=setting("KPI_ALERT_RULES") or DEFAULT_RULES_PATH,
            slack_token=setting("SLACK_BOT_TOKEN").strip(),
            slack_base_url=setting("KPI_SLACK_BASE_URL") or SLACK_DEFAULT_BASE_URL,
            webserver_url=setting("DAGSTER_WEBSERVER_URL"),
            smtp_host=setting("KPI_SMTP_HOST").strip(),
            smtp_port=int(setting("KPI_SMTP_PORT")),
            smtp_from=setting("KPI_SMTP_FROM"),
            smtp_user=setting("KPI_SMTP_USER"),
            smtp_password=setting("KPI_SMTP_PASSWORD"),
            smtp_starttls=truthy(setting("KPI_SMTP_STARTTLS")),
            metrics_relation=setting("KPI_ALERT_METRICS_RELATION"),
            evaluation_interval=parse_duration(setting("KPI_ALERT_EVALUATION_INTERVAL")),
        )


def __getattr__(name: str):
    if name == "AlertingResource":
        from kpi_pipelines.alerts.resource import AlertingResource

        return AlertingResource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
