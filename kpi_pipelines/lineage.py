"""The README's lineage picture, drawn from the definitions' asset graph the way the Dagster
UI draws its global lineage: one box per asset group, one node per asset (a rounded one for
an external asset, loaded by a `kpi` command rather than materialized), one arrow per
dependency. A test regenerates it and compares it with README.md, so the picture cannot
drift from the code (it once showed a `kpi_metrics` node, a table that is no asset).

`python -m kpi_pipelines.lineage` prints the mermaid block; `--write README.md` replaces it
in place.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from dagster import AssetKey, Definitions

MARKER = "<!-- lineage: generated from the definitions by `python -m kpi_pipelines.lineage --write README.md` -->"
FENCE = "```"


def mermaid(defs: Definitions) -> str:
    """The asset graph as a mermaid flowchart: groups upstream first, assets by depth in a
    group, then by name; edges sorted, so the text changes only when the graph does."""
    graph = defs.resolve_asset_graph()
    keys = sorted(graph.get_all_asset_keys(), key=AssetKey.to_user_string)
    depth: dict[AssetKey, int] = {}
    for level, layer in enumerate(graph.toposorted_asset_keys_by_level):
        depth.update(dict.fromkeys(layer, level))
    groups: dict[str, list[AssetKey]] = defaultdict(list)
    for key in keys:
        groups[graph.get(key).group_name].append(key)
    lines = ["flowchart LR"]
    for group, members in sorted(groups.items(), key=lambda item: (min(depth[key] for key in item[1]), item[0])):
        lines.append(f"  subgraph group_{group} [{group}]")
        for key in sorted(members, key=lambda key: (depth[key], key.to_user_string())):
            name = _node_id(key)
            lines.append(f"    {name}([{name}])" if graph.get(key).is_external else f"    {name}")
        lines.append("  end")
    for child in keys:
        for parent in sorted(graph.get(child).parent_keys, key=AssetKey.to_user_string):
            lines.append(f"  {_node_id(parent)} --> {_node_id(child)}")
    return "\n".join(lines) + "\n"


def _node_id(key: AssetKey) -> str:
    return "__".join(key.path)


def readme_block(readme: str) -> str:
    """The mermaid text below the marker in the README, or '' when there is none."""
    _, found, after = readme.partition(f"{MARKER}\n{FENCE}mermaid\n")
    return after.split(FENCE, 1)[0] if found else ""


def with_block(readme: str, block: str) -> str:
    """The README with the block below the marker replaced."""
    old = f"{MARKER}\n{FENCE}mermaid\n{readme_block(readme)}{FENCE}"
    if old not in readme:
        raise SystemExit(f"the README has no lineage marker: {MARKER}")
    return readme.replace(old, f"{MARKER}\n{FENCE}mermaid\n{block}{FENCE}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kpi_pipelines.lineage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", metavar="README", help="replace the block below the marker in this file")
    args = parser.parse_args(argv)
    from kpi_pipelines.definitions import defs

    block = mermaid(defs)
    if args.write:
        path = Path(args.write)
        path.write_text(with_block(path.read_text(), block))
    else:
        sys.stdout.write(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
