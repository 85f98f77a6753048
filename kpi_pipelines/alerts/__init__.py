"""Alerting: rules (YAML) over the KPI values, Grafana-style states, Slack / webhook / e-mail
delivery through a warehouse outbox, and the Dagster sensors that drive it (docs/alerts.md).

The Dagster definitions (`defs`, in `definitions.py`) are loaded on first use, so that `kpi
alerts` does not import Dagster (issue 13).
"""


def __getattr__(name: str):
    if name == "defs":
        from kpi_pipelines.alerts.definitions import defs

        return defs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
