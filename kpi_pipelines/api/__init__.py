"""`kpi serve`: the event collector, the KPI API and the dashboards (docs/api.md).

Light on purpose: importing the package does not import FastAPI; `create_app` and
`active_alerts` are loaded on first use.
"""

from kpi_pipelines.api.command import add_serve_command

__all__ = ["METRICS_RELATION", "active_alerts", "add_serve_command", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from kpi_pipelines.api.app import create_app

        return create_app
    if name in ("active_alerts", "METRICS_RELATION"):
        from kpi_pipelines.api import read

        return getattr(read, name)
    raise AttributeError(name)
