"""The documentation stays equal to the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

from kpi_pipelines.ingestion.contract import describe_contract
from kpi_pipelines.settings import DEFAULTS

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = Path(__file__).resolve().parents[1] / "README.md"


def test_event_contract_table_is_generated_from_the_code():
    text = (DOCS / "events.md").read_text()
    table = re.search(r"<!-- contract:start -->\n(.*?)\n<!-- contract:end -->", text, re.S).group(1)
    assert table.strip() == describe_contract().strip()


def test_every_setting_is_in_the_readme_configuration_table():
    readme = README.read_text()
    for name in DEFAULTS:
        assert f"`{name}`" in readme, name


def test_every_stored_metric_name_is_defined_in_metrics_md(tmp_path):
    """Metric names found in the code's SQL and Python literals appear in docs/metrics.md."""
    metrics_md = (DOCS / "metrics.md").read_text()
    code = "\n".join(p.read_text() for p in (Path(__file__).resolve().parents[1] / "kpi_pipelines").rglob("*.py"))
    names = set(re.findall(r"['\"]((?:retrieval|search|business|content|system|data_quality|experiment)\.[a-z0-9_.]+)['\"]", code))
    assert len(names) > 30
    missing = sorted(n for n in names if n not in metrics_md and not n.endswith("."))
    assert missing == []
