"""The `kpi` command as a user runs it: a real process, real files, a real warehouse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kpi_pipelines_tests.conftest import event

KPI = str(Path(sys.executable).with_name("kpi"))


def run_kpi(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([KPI, *args], env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def kpi_env(tmp_path: Path) -> dict[str, str]:
    return {
        "KPI_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'w.duckdb'}",
        "KPI_PII_SALT": "cli-salt",
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "KPI_LANDING_DIR": str(tmp_path / "landing"),
    }


@pytest.mark.parametrize(
    "args,env,message",
    [
        (["ingest", "absent.jsonl"], {}, "kpi: error: absent.jsonl: no such file"),
        (["materialize", "--start", "2026-13-01"], {}, "kpi: error: argument --start: '2026-13-01' is not a date (YYYY-MM-DD)"),
        (["materialize", "--start", "2026-03-02", "--end", "2026-03-01"], {}, "kpi: error: --end 2026-03-01 is before --start 2026-03-02"),
        (["metrics"], {"KPI_WAREHOUSE_URL": "mysql://db/x"}, "kpi: error: KPI_WAREHOUSE_URL: unsupported scheme 'mysql'"),
        (["metrics"], {"KPI_WAREHOUSE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/x"},
         "kpi: error: cannot open the warehouse postgresql+psycopg://nobody@127.0.0.1:1/x"),
        (["metrics", "--format", "xml"], {}, "kpi: error: argument --format: invalid choice: 'xml'"),
        (["load-catalog", "nope.csv"], {}, "kpi: error: nope.csv: no such file"),
        (["frobnicate"], {}, "kpi: error: argument command: invalid choice: 'frobnicate'"),
        (["generate", "--out", "x", "--days", "0"], {}, "kpi: error: argument --days: '0' is not a positive integer"),
    ],
)
def test_bad_input_is_one_clear_line_and_a_non_zero_exit(tmp_path, kpi_env, args, env, message):
    result = run_kpi(*args, env={**kpi_env, **env}, cwd=tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message), lines[0]
    assert "Traceback" not in result.stderr


def test_unreadable_file_is_named(tmp_path, kpi_env):
    path = tmp_path / "locked.jsonl"
    path.write_text("{}\n")
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: use a directory instead
        path = tmp_path / "adir.jsonl"
        path.mkdir()
    result = run_kpi("ingest", str(path), env=kpi_env, cwd=tmp_path)
    assert result.returncode == 1
    assert str(path) in result.stderr and "Traceback" not in result.stderr


def test_ingest_prints_counts_and_metrics_filters(tmp_path, kpi_env):
    events = tmp_path / "e.jsonl"
    events.write_text("\n".join([json.dumps(event("a")), json.dumps(event("a")), "oops"]) + "\n")
    result = run_kpi("ingest", str(events), env=kpi_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"warehouse: {tmp_path / 'w.duckdb'}", f"{events}: 1 accepted, 1 duplicates, 1 rejected"]
    empty = run_kpi("metrics", "--name", "retrieval.*", "--format", "json", env=kpi_env, cwd=tmp_path)
    assert empty.returncode == 0 and json.loads(empty.stdout) == []


def test_load_judgments_reports_bad_lines(tmp_path, kpi_env):
    path = tmp_path / "j.csv"
    path.write_text("query,product_id,relevance\nred shoes,P1,2\nred shoes,P2,high\n")
    result = run_kpi("load-judgments", str(path), env=kpi_env, cwd=tmp_path)
    assert result.returncode == 1
    assert f"{path}: line 3: relevance: expected an integer >= 0, got 'high'" in result.stderr
    ok = run_kpi("load-judgments", str(path), "--allow-rejects", env=kpi_env, cwd=tmp_path)
    assert ok.returncode == 0 and "loaded 1 relevance judgments" in ok.stdout
