"""Careless commands get one line and the right exit status, as a real `kpi` process on a
real warehouse (both backends where the command reads or writes it), and every command that
opens the warehouse says where it is."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines_tests.conftest import event

KPI = str(Path(sys.executable).with_name("kpi"))


def kpi(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items() if not key.startswith("KPI_")}
    return subprocess.run([KPI, *args], env={**base, **env}, cwd=cwd, capture_output=True, text=True, timeout=300)


def env_for(warehouse: Warehouse, tmp_path: Path) -> dict[str, str]:
    return {
        "KPI_WAREHOUSE_URL": warehouse.url.render_as_string(hide_password=False),
        "KPI_WAREHOUSE_SCHEMA": warehouse.schema or "",
        "KPI_PII_SALT": "cli-errors-salt",
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }


def one_error(result: subprocess.CompletedProcess) -> str:
    """The only line on stderr, which must be an error line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kpi: error: "), lines[0]
    return lines[0]


def counts(warehouse: Warehouse) -> tuple[int, int]:
    return warehouse.scalar("SELECT count(*) FROM raw_events"), warehouse.scalar("SELECT count(*) FROM rejected_events")


@pytest.mark.slow
def test_a_file_that_is_not_json_lines_is_refused_whole(warehouse, tmp_path):
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("product_id,title,brand\nP1,Red shoes,Acme\nP2,\"Blue, big\",Acme\n\nP3,Hat,{bad\n")
    result = kpi("ingest", str(catalog), env=env_for(warehouse, tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert one_error(result) == (
        f"kpi: error: {catalog}: not a JSON-lines event file: none of its first 4 non-empty lines is a JSON object; "
        "nothing loaded"
    )
    assert counts(warehouse) == (0, 0)
    # one JSON object among the first lines makes it an event file: its other lines are rejects, as before
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(["not json", json.dumps(event("m1")), "[1, 2]"]) + "\n")
    ok = kpi("ingest", str(mixed), env=env_for(warehouse, tmp_path), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert f"{mixed}: 1 accepted, 0 duplicates, 2 rejected" in ok.stdout
    assert counts(warehouse) == (1, 2)


def test_a_directory_is_ingested_as_its_event_files(warehouse, tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "b.jsonl").write_text(json.dumps(event("b1")) + "\n")
    (folder / "a.jsonl").write_text(json.dumps(event("a1")) + "\n" + json.dumps(event("a2")) + "\n")
    (folder / "notes.txt").write_text("not an event file\n")
    (folder / ".partial.jsonl").write_text(json.dumps(event("hidden")) + "\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "c.jsonl").write_text(json.dumps(event("c1")) + "\n")
    result = kpi("ingest", str(folder), env=env_for(warehouse, tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        f"{folder / 'a.jsonl'}: 2 accepted, 0 duplicates, 0 rejected",
        f"{folder / 'b.jsonl'}: 1 accepted, 0 duplicates, 0 rejected",
        "total: 3 accepted, 0 duplicates, 0 rejected",
    ]
    assert sorted(row[0] for row in warehouse.query("SELECT event_id FROM raw_events")) == ["a1", "a2", "b1"]
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = kpi("ingest", str(empty), env=env_for(warehouse, tmp_path), cwd=tmp_path)
    assert refused.returncode == 1
    assert one_error(refused) == f"kpi: error: {empty}: a directory without event files (*.jsonl, *.jsonl.gz, *.ndjson, *.ndjson.gz)"


@pytest.mark.slow
def test_metrics_refuses_a_backwards_range_and_a_pattern_no_name_can_match(warehouse, tmp_path):
    env = env_for(warehouse, tmp_path)
    backwards = kpi("metrics", "--start", "2026-03-02", "--end", "2026-03-01", env=env, cwd=tmp_path)
    assert backwards.returncode == 2
    assert one_error(backwards) == "kpi: error: --end 2026-03-01 is before --start 2026-03-02"
    for pattern in ("search click", "retrieval.[mn]*", "", "x%"):
        bad = kpi("metrics", "--name", pattern, env=env, cwd=tmp_path)
        assert bad.returncode == 2, pattern
        assert one_error(bad).startswith(f"kpi: error: --name {pattern!r} is not a metric name pattern"), pattern
    with warehouse.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO kpi_metrics (metric_name, metric_value, dimensions, \"timestamp\", aggregation_level, created_at, source_asset) "
            "VALUES ('search.queries', 24560.0, '{}', TIMESTAMP '2026-03-01', 'day', TIMESTAMP '2026-03-02', 'test')"
        ))
    nothing = kpi("metrics", "--name", "retrieval.*", "--start", "2026-03-01", "--end", "2026-03-07", env=env, cwd=tmp_path)
    assert nothing.returncode == 0 and nothing.stderr == ""
    assert nothing.stdout.splitlines()[1:] == ["no metrics named 'retrieval.*' from 2026-03-01 to 2026-03-07"]
    found = kpi("metrics", "--name", "search.quer?es", env=env, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert "24,560" in found.stdout and "e+" not in found.stdout  # not 2.456e+04


def test_generate_or_demo_into_an_existing_file_is_one_line(tmp_path):
    existing = tmp_path / "traffic"
    existing.write_text("a file\n")
    env = {"KPI_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'w.duckdb'}", "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    for command in (["generate", "--out", str(existing), "--days", "1", "--sessions", "1"], ["demo", "--out", str(existing)]):
        result = kpi(*command, env=env, cwd=tmp_path)
        assert result.returncode == 2, command
        assert one_error(result) == f"kpi: error: --out {existing}: exists and is not a directory"
    assert existing.read_text() == "a file\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["traffic"]  # nothing else written


def test_a_setting_the_command_cannot_use_is_one_line(tmp_path):
    env = {"KPI_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'w.duckdb'}", "KPI_WAREHOUSE_CONNECT_TIMEOUT": "abc"}
    result = kpi("metrics", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert one_error(result) == "kpi: error: KPI_WAREHOUSE_CONNECT_TIMEOUT='abc': expected a positive number of seconds"


def test_the_salt_warning_is_printed_once_per_process(tmp_path):
    files = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps(event(name)) + "\n")
        files.append(str(path))
    env = {"KPI_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'w.duckdb'}"}
    result = kpi("ingest", *files, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "kpi: warning: KPI_PII_SALT is not set; user ids are pseudonymized with the development salt (set a secret in production)"
    ]
    with_salt = kpi("ingest", *files, env={**env, "KPI_PII_SALT": "a-secret"}, cwd=tmp_path)
    assert with_salt.returncode == 0 and with_salt.stderr == ""


# --------------------------------------------------------------------------- where the warehouse is


@pytest.mark.slow
def test_every_command_that_opens_the_warehouse_names_it(warehouse, tmp_path):
    env = env_for(warehouse, tmp_path)
    events = tmp_path / "e.jsonl"
    events.write_text(json.dumps(event("x")) + "\n")
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("product_id,title,description,price,category,brand\nP1,Shoe,A shoe,10.5,shoes,Acme\n")
    judgments = tmp_path / "judgments.csv"
    judgments.write_text("query,product_id,relevance\nshoe,P1,2\n")
    if warehouse.dialect == "duckdb":
        expected = f"warehouse: {warehouse.duckdb_path}"
    else:
        expected = f"warehouse: {warehouse.display_url} (schema {warehouse.schema})"
    commands = [
        ["ingest", str(events)],
        ["load-catalog", str(catalog)],
        ["load-judgments", str(judgments)],
        ["metrics"],
        ["alerts", "list"],
        ["materialize", "--start", "2026-03-02", "--end", "2026-03-01"],  # refused after saying where
    ]
    for command in commands:
        result = kpi(*command, env=env, cwd=tmp_path)
        assert result.stdout.splitlines()[0] == expected, (command, result.stdout, result.stderr)
    as_json = kpi("metrics", "--format", "json", env=env, cwd=tmp_path)
    assert json.loads(as_json.stdout) == [] and as_json.stderr.splitlines() == [expected]  # stdout stays data


def test_a_postgresql_password_is_not_shown(postgres_warehouse, tmp_path):
    url = postgres_warehouse.url.set(password="s3cret-pass")  # trust authentication ignores it
    env = {**env_for(postgres_warehouse, tmp_path), "KPI_WAREHOUSE_URL": url.render_as_string(hide_password=False)}
    result = kpi("metrics", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "s3cret-pass" not in result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"warehouse: {url.render_as_string(hide_password=True)} (schema {postgres_warehouse.schema})"
    assert "***" in result.stdout.splitlines()[0]


@pytest.mark.slow
def test_a_relative_duckdb_path_inside_a_repository_is_resolved_and_warned_about(tmp_path):
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    three_slashes = kpi("metrics", env={"KPI_WAREHOUSE_URL": "duckdb:///tmp/x.duckdb"}, cwd=repo / "sub")
    assert three_slashes.returncode == 0, three_slashes.stderr
    assert three_slashes.stdout.splitlines()[0] == f"warehouse: {repo / 'sub' / 'tmp' / 'x.duckdb'}"
    assert three_slashes.stderr.splitlines() == [
        f"kpi: warning: KPI_WAREHOUSE_URL duckdb:///tmp/x.duckdb is a path relative to the working directory: "
        f"the warehouse is {repo / 'sub' / 'tmp' / 'x.duckdb'}, inside the git repository {repo}; "
        "for an absolute path write four slashes (duckdb:////tmp/x.duckdb)"
    ]
    assert (repo / "sub" / "tmp" / "x.duckdb").exists()
    # the default, data/kpi.duckdb from the repository's root: expected there, no warning
    default = kpi("metrics", env={}, cwd=repo)
    assert default.returncode == 0 and default.stderr == ""
    assert default.stdout.splitlines()[0] == f"warehouse: {repo / 'data' / 'kpi.duckdb'}"
    # outside any repository: resolved, no warning
    outside = tmp_path / "plain"
    outside.mkdir()
    elsewhere = kpi("metrics", env={"KPI_WAREHOUSE_URL": "duckdb:///w.duckdb"}, cwd=outside)
    assert elsewhere.returncode == 0 and elsewhere.stderr == ""
    assert elsewhere.stdout.splitlines()[0] == f"warehouse: {outside / 'w.duckdb'}"


# --------------------------------------------------------------------------- kpi serve


def test_serve_on_a_port_in_use_is_one_line_naming_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"KPI_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'w.duckdb'}", "KPI_API_KEYS": "k", "KPI_WEBHOOK_SECRET": "s"}
        result = kpi("serve", "--port", str(port), env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert one_error(result) == f"kpi: error: 127.0.0.1:{port} is already in use (another kpi serve?); choose another --port"


def test_serve_says_at_start_that_postgresql_does_not_answer_and_serves_503(tmp_path):
    from kpi_pipelines_tests.test_api_helpers import Server

    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    server = Server({"KPI_WAREHOUSE_URL": url, "KPI_LANDING_DIR": str(tmp_path)})
    try:
        with server.client() as client:
            response = client.get("/api/kpi/metrics")
            assert response.status_code == 503 and "Retry-After" in response.headers
    finally:
        log = server.stop()
    said = [line for line in log.splitlines() if line.startswith("kpi: ")]
    assert len(said) == 1 and said[0].startswith(f"kpi: warning: cannot open the warehouse {url}: ")
    assert "Connection refused" in said[0] and said[0].endswith("; serving anyway: the KPI API answers 503 until it answers")
    assert f"warehouse: {url}" in log.splitlines() and "Traceback" not in log
