"""The first daily partition, `KPI_FIRST_DAY` (issue 12, item 5): it moves every partitioned
asset of the real definitions; a bad value is one line naming the variable; events dated
before it are stored and reported, never dropped silently; `kpi demo` records its first day
in `.env`, where `make dev`'s Dagster (a real webserver here) and later `kpi` commands read
it, without ever overwriting a value the user set; the tests never read a developer's `.env`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from kpi_pipelines import cli
from kpi_pipelines.ingestion.assets import raw_events
from kpi_pipelines.ingestion.resources import EventIngestionResource
from kpi_pipelines.first_day import first_day
from kpi_pipelines.settings import DEFAULTS
from kpi_pipelines.warehouse import WarehouseResource
from kpi_pipelines_tests.conftest import SALT, event
from kpi_pipelines_tests.test_api_helpers import free_port

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]

FIRST_PARTITIONS = """
import json
from kpi_pipelines.definitions import defs
graph = defs.resolve_asset_graph()
keys = {}
for key in graph.get_all_asset_keys():
    partitions = graph.get(key).partitions_def
    if partitions is not None:
        names = partitions.get_partition_keys()
        keys[key.to_user_string()] = [names[0], names[-1]]
print(json.dumps(keys))
"""


def _env(**values: str) -> dict[str, str]:
    """The test process's environment without KPI_FIRST_DAY (conftest pins it), plus `values`."""
    env = {name: value for name, value in os.environ.items() if name != "KPI_FIRST_DAY"}
    return {**env, **values}


def _today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


@pytest.mark.parametrize("first_day_value", ["2026-11-20", None], ids=["set", "default"])
@pytest.mark.slow
def test_the_first_day_is_every_partitioned_asset_s_first_partition(tmp_path, first_day_value):
    env = _env(DAGSTER_HOME=str(tmp_path), **({"KPI_FIRST_DAY": first_day_value} if first_day_value else {}))
    before = _today()
    result = subprocess.run(
        [sys.executable, "-c", FIRST_PARTITIONS], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ranges = json.loads(result.stdout.strip().splitlines()[-1])
    expected_first = first_day_value or "2026-01-01"
    # the KPI assets, the dbt models and raw_events alike; today's (filling) day is the last
    assert {"raw_events", "business_metrics", "experiment_results", "stg_events", "rollup_events_day"} <= set(ranges)
    assert {first for first, _ in ranges.values()} == {expected_first}
    assert {last for _, last in ranges.values()} <= {before.isoformat(), _today().isoformat()}


@pytest.mark.parametrize(
    "value,expected",
    [
        ("2026-13-01", "kpi: error: KPI_FIRST_DAY='2026-13-01': expected a day as YYYY-MM-DD"),
        ("20261120", "kpi: error: KPI_FIRST_DAY='20261120': expected a day as YYYY-MM-DD"),
        ("2019-12-31", "kpi: error: KPI_FIRST_DAY='2019-12-31': expected a day from 2020-01-01 to "),
        ("2999-01-01", "kpi: error: KPI_FIRST_DAY='2999-01-01': expected a day from 2020-01-01 to "),
    ],
)
def test_a_bad_first_day_is_one_line_naming_the_variable(tmp_path, value, expected):
    result = subprocess.run(
        [str(BIN / "kpi"), "landing", "list"],
        env=_env(KPI_FIRST_DAY=value, KPI_LANDING_DIR=str(tmp_path)),
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(expected), result.stderr


def test_dagster_refuses_a_bad_first_day_naming_it(tmp_path):
    result = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "kpi_pipelines.definitions"],
        env=_env(KPI_FIRST_DAY="2026-02-30", DAGSTER_HOME=str(tmp_path)),
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "KPI_FIRST_DAY='2026-02-30': expected a day as YYYY-MM-DD" in result.stdout + result.stderr


EARLY = ["2025-12-30T10:00:00Z", "2025-12-31T23:59:59+00:00", "2026-01-01T00:30:00+01:00"]  # the last: 12-31 in UTC


def test_events_before_the_first_day_are_stored_and_reported_by_kpi_ingest(warehouse, write_events, monkeypatch, capsys):
    assert first_day() == dt.date(2026, 1, 1)  # conftest's pin
    path = write_events([event(f"early-{n}", timestamp=ts) for n, ts in enumerate(EARLY)] + [event("in-range")])
    monkeypatch.setenv("KPI_WAREHOUSE_URL", warehouse.url.render_as_string(hide_password=False))
    monkeypatch.setenv("KPI_WAREHOUSE_SCHEMA", warehouse.schema or "")
    monkeypatch.setenv("KPI_PII_SALT", SALT)
    assert cli.main(["ingest", str(path)]) == 0
    out, err = capsys.readouterr()
    assert f"{path}: 4 accepted, 0 duplicates, 0 rejected" in out
    warnings = [line for line in err.splitlines() if "KPI_FIRST_DAY" in line]
    assert warnings == [
        f"kpi: warning: {path}: 3 valid line(s) dated 2025-12-30..2025-12-31, before KPI_FIRST_DAY=2026-01-01: "
        "stored in raw_events but in no KPI until KPI_FIRST_DAY is 2025-12-30 or earlier"
    ]
    stored = dict(warehouse.query("SELECT CAST(event_date AS VARCHAR), count(*) FROM raw_events GROUP BY 1"))
    assert stored == {"2025-12-30": 1, "2025-12-31": 2, "2026-03-10": 1}


def test_the_raw_events_run_reports_events_before_the_first_day(warehouse, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    lines = [event("early", timestamp="2025-06-01T12:00:00Z"), event("in-range")]
    (landing / "events.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [raw_events],
            partition_key="2026-03-10",
            instance=instance,
            resources={
                "warehouse": WarehouseResource(
                    url=warehouse.url.render_as_string(hide_password=False), schema_name=warehouse.schema or ""
                ),
                "ingestion": EventIngestionResource(pii_salt=SALT, landing_dir=str(landing), after_load="keep"),
            },
        )
        assert result.success
        (materialization,) = result.asset_materializations_for_node("raw_events")
        assert materialization.metadata["loaded_before_first_day"].value == 1
        assert materialization.metadata["loaded_accepted"].value == 2
        warnings = [entry.user_message for entry in instance.all_logs(result.run_id) if "KPI_FIRST_DAY" in entry.user_message]
    assert warnings == [
        f"{landing / 'events.jsonl'}: 1 valid line(s) dated 2025-06-01..2025-06-01, before KPI_FIRST_DAY=2026-01-01: "
        "stored in raw_events but in no KPI until KPI_FIRST_DAY is 2025-06-01 or earlier"
    ]
    assert warehouse.scalar("SELECT count(*) FROM raw_events WHERE event_date = DATE '2025-06-01'") == 1


def test_the_demo_records_its_first_day_unless_one_is_set(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    start = dt.date(2026, 11, 20)
    monkeypatch.delenv("KPI_FIRST_DAY")
    env_file.write_text("OTHER=1")  # no final newline
    line = cli.record_demo_first_day(start, env_file)
    assert env_file.read_text() == "OTHER=1\nKPI_FIRST_DAY=2026-11-20\n"
    assert line == f"daily partitions from KPI_FIRST_DAY=2026-11-20, recorded in {env_file} for `make dev` and later kpi commands"
    # set in .env (by an earlier demo, or by hand): kept
    env_file.write_text(f"KPI_FIRST_DAY={DEFAULTS['KPI_FIRST_DAY']}\n")
    assert "set already: kept" in cli.record_demo_first_day(start, env_file)
    assert env_file.read_text() == f"KPI_FIRST_DAY={DEFAULTS['KPI_FIRST_DAY']}\n"
    # set in the environment: .env is left alone
    env_file.unlink()
    monkeypatch.setenv("KPI_FIRST_DAY", DEFAULTS["KPI_FIRST_DAY"])
    assert "set already: kept" in cli.record_demo_first_day(start, env_file)
    assert not env_file.exists()
    # set to a day after the demo's first day: refused before anything is generated
    with pytest.raises(cli.UsageError, match=r"^KPI_FIRST_DAY=2026-01-01 is after the demo's first day 2025-12-01: set it to 2025-12-01 or earlier$"):
        cli.record_demo_first_day(dt.date(2025, 12, 1), env_file)
    assert not env_file.exists()


def test_a_developer_s_env_file_never_reaches_the_tests(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("KPI_FIRST_DAY=2026-11-20\nKPI_LANDING_DIR=/from/the/env/file\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KPI_LANDING_DIR", str(tmp_path / "landing"))
    assert cli.main(["landing", "list"]) == 0  # cli.main, as tests call it, reads no .env
    assert os.environ["KPI_FIRST_DAY"] == DEFAULTS["KPI_FIRST_DAY"] == first_day().isoformat()
    assert os.environ["KPI_LANDING_DIR"] == str(tmp_path / "landing")


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


RAW_EVENTS_PARTITIONS = """{ assetNodeOrError(assetKey: {path: ["raw_events"]}) { ... on AssetNode {
  partitionKeysByDimension { partitionKeys } partitionStats { numMaterialized numPartitions } } } }"""


@pytest.mark.deployment
def test_the_demo_s_first_day_is_used_by_dagster_and_later_kpi_commands(tmp_path):
    """`kpi demo`, then a Dagster webserver started where `make dev` starts it (the directory
    holding `.env`) and a later `kpi ingest`: both read the demo's first day."""
    home = tmp_path / "dagster_home"
    env = _env(
        DAGSTER_HOME=str(home),
        KPI_WAREHOUSE_URL=f"duckdb:///{tmp_path / 'w.duckdb'}",
        KPI_LANDING_DIR=str(tmp_path / "landing"),
    )
    demo = subprocess.run(
        [str(BIN / "kpi"), "demo", "--days", "1", "--sessions", "20", "--out", str(tmp_path / "demo")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    recorded = (tmp_path / ".env").read_text()
    assert recorded.startswith("KPI_FIRST_DAY=") and recorded.count("\n") == 1
    first = dt.date.fromisoformat(recorded.strip().split("=", 1)[1])
    assert first in {_today() - dt.timedelta(days=1), _today() - dt.timedelta(days=2)}  # yesterday, around midnight
    assert f"daily partitions from KPI_FIRST_DAY={first}, recorded in {tmp_path / '.env'}" in demo.stdout

    port = free_port()
    log = open(tmp_path / "webserver.log", "wb")
    webserver = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-m", "kpi_pipelines.definitions"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                node = _graphql(port, RAW_EVENTS_PARTITIONS)["assetNodeOrError"]
                break
            except (OSError, KeyError, TypeError):
                assert webserver.poll() is None and time.monotonic() < deadline, (tmp_path / "webserver.log").read_text()[-2000:]
                time.sleep(1)
    finally:
        webserver.terminate()
        webserver.wait(timeout=60)
        log.close()
    keys = node["partitionKeysByDimension"][0]["partitionKeys"]
    assert keys[0] == first.isoformat() and len(keys) == (_today() - first).days + 1
    # the demo's day is materialized: 1 of 2 (today's still filling), not 1 of 300-odd
    assert node["partitionStats"]["numMaterialized"] == 1
    assert node["partitionStats"]["numPartitions"] == len(keys) <= 3

    early = tmp_path / "early.jsonl"
    early.write_text(json.dumps(event("early", timestamp=f"{first - dt.timedelta(days=3)}T12:00:00Z")) + "\n")
    ingest = subprocess.run([str(BIN / "kpi"), "ingest", str(early)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ingest.returncode == 0, ingest.stderr
    assert f"before KPI_FIRST_DAY={first}: stored in raw_events" in ingest.stderr
    # the environment wins over .env for `kpi`
    early.write_text(json.dumps(event("early-2", timestamp=f"{first - dt.timedelta(days=3)}T13:00:00Z")) + "\n")
    pinned = {**env, "KPI_FIRST_DAY": "2026-01-01"}
    ingest = subprocess.run([str(BIN / "kpi"), "ingest", str(early)], env=pinned, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ingest.returncode == 0 and "KPI_FIRST_DAY" not in ingest.stderr, ingest.stderr
