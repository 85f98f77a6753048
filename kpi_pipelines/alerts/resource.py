"""The alerting settings as a Dagster resource, apart from `config.py` so that the commands
that do not run Dagster do not import it."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from kpi_pipelines.alerts.config import DEFAULT_RULES_PATH, SLACK_DEFAULT_BASE_URL, AlertSettings, truthy
from kpi_pipelines.settings import DEFAULTS, resource_value


class AlertingResource(ConfigurableResource):
    """Where the rules are and how notifications are delivered (see docs/alerts.md)."""

    rules_path: str = Field(default=DEFAULTS["KPI_ALERT_RULES"], description="alert rules file; '' = the packaged default rules")
    slack_token: str = Field(default=DEFAULTS["SLACK_BOT_TOKEN"], description="Slack bot token; '' = Slack notifications go to the log")
    slack_base_url: str = Field(default=DEFAULTS["KPI_SLACK_BASE_URL"], description="Slack Web API base URL; '' = Slack's own")
    webserver_url: str = Field(default=DEFAULTS["DAGSTER_WEBSERVER_URL"], description="Dagster UI base URL for links")
    smtp_host: str = Field(default=DEFAULTS["KPI_SMTP_HOST"], description="SMTP server; '' = e-mail notifications go to the log")
    smtp_port: str = Field(default=DEFAULTS["KPI_SMTP_PORT"])
    smtp_from: str = Field(default=DEFAULTS["KPI_SMTP_FROM"])
    smtp_user: str = Field(default=DEFAULTS["KPI_SMTP_USER"])
    smtp_password: str = Field(default=DEFAULTS["KPI_SMTP_PASSWORD"])
    smtp_starttls: str = Field(default=DEFAULTS["KPI_SMTP_STARTTLS"], description="'true' to STARTTLS before login")
    metrics_relation: str = Field(
        default=DEFAULTS["KPI_ALERT_METRICS_RELATION"], description="table or view the rules read KPI values from"
    )
    evaluation_interval: str = Field(
        default=DEFAULTS["KPI_ALERT_EVALUATION_INTERVAL"],
        description="evaluate at least this often without new materializations",
    )

    @classmethod
    def from_env(cls) -> AlertingResource:
        return cls(
            rules_path=resource_value("KPI_ALERT_RULES"),
            slack_token=resource_value("SLACK_BOT_TOKEN"),
            slack_base_url=resource_value("KPI_SLACK_BASE_URL"),
            webserver_url=resource_value("DAGSTER_WEBSERVER_URL"),
            smtp_host=resource_value("KPI_SMTP_HOST"),
            smtp_port=resource_value("KPI_SMTP_PORT"),
            smtp_from=resource_value("KPI_SMTP_FROM"),
            smtp_user=resource_value("KPI_SMTP_USER"),
            smtp_password=resource_value("KPI_SMTP_PASSWORD"),
            smtp_starttls=resource_value("KPI_SMTP_STARTTLS"),
            metrics_relation=resource_value("KPI_ALERT_METRICS_RELATION"),
            evaluation_interval=resource_value("KPI_ALERT_EVALUATION_INTERVAL"),
        )

    def get_settings(self) -> AlertSettings:
        from kpi_pipelines.alerts.rules import parse_duration

        return AlertSettings(
            rules_path=self.rules_path or DEFAULT_RULES_PATH,
            slack_token=self.slack_token.strip(),
            slack_base_url=self.slack_base_url or SLACK_DEFAULT_BASE_URL,
            webserver_url=self.webserver_url,
            smtp_host=self.smtp_host.strip(),
            smtp_port=int(self.smtp_port),
            smtp_from=self.smtp_from,
            smtp_user=self.smtp_user,
            smtp_password=self.smtp_password,
            smtp_starttls=truthy(self.smtp_starttls),
            metrics_relation=self.metrics_relation or DEFAULTS["KPI_ALERT_METRICS_RELATION"],
            evaluation_interval=parse_duration(self.evaluation_interval or "15m"),
        )
