"""The `kpi` commands that do not run Dagster do not import it, nor Great Expectations, nor
pandas (issue 13: importing them cost about a second before any work, on every command).

A test of what a real `kpi` process imports (Python's `-X importtime` list), not of time:
the times themselves are measured by `make bench`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kpi_pipelines_tests.conftest import event

KPI = str(Path(sys.executable).with_name("kpi"))
HEAVY = {"dagster", "great_expectations", "pandas"}


def imported_packages(*args: str, env: dict[str, str], cwd: Path) -> set[str]:
    """The top-level packages a `kpi` process imported, after checking that it succeeded."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", KPI, *args],
        env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    modules = [line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "kpi_pipelines.cli" in modules, "no import list: -X importtime printed nothing"
    return {name.split(".")[0] for name in modules}


@pytest.mark.parametrize("command", ["--help", "ingest", "metrics", "alerts"])
def test_commands_without_dagster_do_not_import_it(warehouse, tmp_path, write_events, command):
    env = {
        "KPI_WAREHOUSE_URL": warehouse.url.render_as_string(hide_password=False),
        "KPI_WAREHOUSE_SCHEMA": warehouse.schema or "",
        "KPI_PII_SALT": "import-salt",
    }
    args = {
        "--help": ["--help"],
        "ingest": ["ingest", str(write_events([event("e-1")]))],
        "metrics": ["metrics"],
        "alerts": ["alerts", "list"],
    }[command]
    packages = imported_packages(*args, env=env, cwd=tmp_path)
    assert "duckdb" in packages and "sqlalchemy" in packages  # the warehouse's own, for contrast
    assert not packages & HEAVY, sorted(packages & HEAVY)
    if command == "ingest":
        assert warehouse.scalar("SELECT count(*) FROM raw_events") == 1
