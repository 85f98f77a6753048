"""The README's lineage picture is the asset graph the Dagster UI draws (issue 12, item 6):
regenerated from the real definitions and compared, so it cannot drift again."""

from __future__ import annotations

import re
from pathlib import Path

from kpi_pipelines.definitions import defs
from kpi_pipelines.lineage import mermaid, readme_block

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_picture_is_the_definitions_asset_graph():
    assert readme_block(README.read_text()) == mermaid(defs), (
        "the README's lineage picture is stale: python -m kpi_pipelines.lineage --write README.md"
    )


def test_the_picture_names_every_asset_group_and_dependency_and_nothing_else():
    block = readme_block(README.read_text())
    graph = defs.resolve_asset_graph()
    assets = {key.to_user_string() for key in graph.get_all_asset_keys()}
    groups = dict(re.findall(r"^  subgraph group_(\w+) \[(\w+)\]$", block, re.M))
    members = {name for name in re.findall(r"^    (\w+)", block, re.M)}
    edges = set(re.findall(r"^  (\w+) --> (\w+)$", block, re.M))
    assert members == assets and "kpi_metrics" not in members  # a table, not an asset
    assert set(groups) == {graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert {"experiments", "rollups", "anomalies", "ingestion"} <= set(groups)
    assert edges == {
        (parent.to_user_string(), key.to_user_string())
        for key in graph.get_all_asset_keys()
        for parent in graph.get(key).parent_keys
    }
    assert len(edges) == 41
