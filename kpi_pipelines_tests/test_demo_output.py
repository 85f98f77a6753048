"""`make demo` prints what a person reads (the steps, the KPI tables, the alerts) and nothing
else: no warning, no dbt log line, no colour codes, no e-notation; dbt's and Dagster's output
goes to the log file the demo names. And installing the package prints no setuptools warning.

The demo runs on the embedded default (DuckDB) by design, so this test has no PostgreSQL twin."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
REPO = Path(__file__).resolve().parents[1]
KPI = str(Path(sys.executable).with_name("kpi"))
DBT_LOG_LINE = re.compile(r"^\s*(\d+ of \d+ (START|OK|PASS|ERROR|WARN|SKIP)\b|Running with dbt=|Registered adapter:|Done\. PASS=|Completed successfully|Finished running)", re.M)
E_NOTATION = re.compile(r"\d[eE][+-]?\d")


@pytest.mark.slow
def test_the_demo_prints_steps_tables_and_alerts_and_logs_the_rest(tmp_path):
    base = {key: value for key, value in os.environ.items() if not key.startswith(("KPI_", "DBT_", "SLACK_"))}
    env = {  # a fresh clone: no KPI_PII_SALT, no Slack; the warehouse and instance in this test's directory
        **base,
        "KPI_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'demo.duckdb'}",
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "KPI_LANDING_DIR": str(tmp_path / "landing"),
    }
    out = tmp_path / "demo"
    result = subprocess.run([KPI, "demo", "--days", "2", "--sessions", "50", "--out", str(out)],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed[-3000:]
    assert result.stderr == ""
    # Python's warnings (BetaWarning, ...) and the project's "kpi: warning:" lines; an alert's
    # severity "warning" in the alerts table is what the demo shows
    assert not re.search(r"Warning|warning:", printed), re.search(r".*(Warning|warning:).*", printed).group(0)
    assert "\x1b" not in printed
    assert not DBT_LOG_LINE.search(printed), DBT_LOG_LINE.search(printed).group(0)
    assert not E_NOTATION.search(printed), E_NOTATION.search(printed).group(0)
    lines = result.stdout.splitlines()
    assert lines[0] == f"warehouse: {tmp_path / 'demo.duckdb'}"
    for step in ("1/5 generating", "2/5 loading", "3/5 materializing", "4/5 summary", "5/5 evaluating"):
        assert any(line.startswith(step) for line in lines), step
    assert "Search experience" in lines and "open alerts: " in result.stdout
    # big values read as numbers: time to first click is tens of thousands of milliseconds
    click = next(line for line in lines if line.strip().startswith("search.time_to_first_click_ms.p50"))
    assert all(re.fullmatch(r"\d{1,3}(,\d{3})+", value) for value in click.split()[1:]), click

    log = out / "demo.log"
    assert f"(dbt's and Dagster's logs: {log})" in result.stdout
    logged = log.read_text()
    assert "Running with dbt=" in logged and "Completed successfully" in logged
    assert len(DBT_LOG_LINE.findall(logged)) > 50  # every model and test of both dbt invocations
    assert "\x1b" not in logged
    assert "alert notification for kpi-alerts" in logged  # no Slack token: the notifications' text


def test_installing_the_package_prints_no_setuptools_warning(tmp_path):
    """setup.py's build of the package's files, as `pip install` runs it (the editable install
    included), in a copy so the working tree's egg-info stays as it is. Before the data
    directories were listed as packages, setuptools warned three times here."""
    shutil.copy(REPO / "setup.py", tmp_path)
    shutil.copytree(REPO / "kpi_pipelines", tmp_path / "kpi_pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    build = tmp_path / "build"
    result = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(build)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stderr
    package = build / "kpi_pipelines"
    for data in ("defaults/dagster_home.yaml", "alerts/default_rules.yaml", "api/pages/executive.html",
                 "api/pages/layout.html", "api/static/dashboard.js", "api/static/dashboard.css"):
        assert (package / data).is_file(), data
    assert not list(build.rglob("__pycache__")) and not (build / "kpi_pipelines_tests").exists()
