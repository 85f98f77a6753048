"""The documentation stays equal to the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

from kpi_pipelines.ingestion.contract import describe_contract
from kpi_pipelines.kpis.registry import BY_NAME, EVENT_ROLLUP, INDEX_END, INDEX_START, REGISTRY, docs_index
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


def test_the_metric_index_of_metrics_md_is_the_registry():
    text = (DOCS / "metrics.md").read_text()
    index = re.search(f"{INDEX_START}\n(.*?)\n{INDEX_END}", text, re.S).group(1)
    assert index.strip() == docs_index().strip()


def test_every_registered_metric_is_defined_in_the_docs():
    """Beyond the index: each name is written where its definition is (metrics.md for the
    KPI assets, rollups.md for what only dbt's event rollup computes)."""
    text = (DOCS / "metrics.md").read_text()
    definitions = re.sub(f"{INDEX_START}.*?{INDEX_END}", "", text, flags=re.S)
    rollups = (DOCS / "rollups.md").read_text()
    missing = [
        spec.name for spec in REGISTRY
        if spec.name not in (rollups if spec.producer == EVENT_ROLLUP else definitions)
    ]
    assert missing == []


def test_every_metric_name_written_in_the_code_is_registered():
    """Metric names in the code's SQL and Python literals, the dashboards' pages and the dbt
    models are registered (names built from parts, such as the completeness fields, are
    covered by test_metric_registry's full materialization)."""
    root = Path(__file__).resolve().parents[1]
    sources = [*(root / "kpi_pipelines").rglob("*.py"), *(root / "kpi_pipelines" / "api" / "pages").glob("*.html"),
               *(root / "dbt_project").rglob("*.sql")]
    code = "\n".join(path.read_text() for path in sources if path.name != "registry.py")
    prefixes = "|".join(sorted({re.escape(spec.name.split(".")[0]) for spec in REGISTRY}))
    literals = set(re.findall(rf"['\",]((?:{prefixes})\.[a-z0-9_.]*[a-z0-9_])['\",]", code))
    assert len(literals) > 40
    file_names = re.compile(r"\.(csv|jsonl|json|gz|ya?ml)$")  # events.jsonl is a file, not a metric
    assert sorted(name for name in literals if name not in BY_NAME and not file_names.search(name)) == []
