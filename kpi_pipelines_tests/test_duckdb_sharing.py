"""The embedded DuckDB file shared by `make dev` and a person's commands (issue 12, items 1
and 2), with real parts: `dagster dev` (webserver, daemon, code server) on a temporary
DAGSTER_HOME and DuckDB file, a daemon run of `daily_assets_job` launched through Dagster's
GraphQL API, and `kpi ingest`, `kpi load-catalog`, `kpi materialize` and `kpi metrics`
started while another process holds the file: each waits, says so once, and succeeds once
the file is free, as does the daemon's run. The UI then lists the command's run among the
job's runs and gives it the origin the timeline needs. A file held past
KPI_WAREHOUSE_LOCK_TIMEOUT fails a command in one line naming the setting."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient

from kpi_pipelines.synthetic import generate
import kpi_pipelines.warehouse as warehouse_module
from kpi_pipelines.warehouse import Warehouse, wait_for_duckdb_file
from kpi_pipelines_tests.conftest import SALT
from kpi_pipelines_tests.test_deployment import HOST, Service, free_port, graphql, tail

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KPI = str(BIN / "kpi")
# workspace.yaml's code location, named by Dagster after its module and attribute
LOCATION = "kpi_pipelines.definitions:defs"
REPOSITORY = "__repository__"
JOB = "daily_assets_job"
WAITING = "kpi: waiting for the warehouse file"
# the job's runs as the job's page asks for them, and the fields the timeline needs
JOB_RUNS_QUERY = """query JobRuns($selector: PipelineSelector!) {
  pipelineOrError(params: $selector) {
    __typename
    ... on Pipeline { runs { runId } }
  }
}"""
TIMELINE_QUERY = """query Timeline($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    ... on Runs { results { id pipelineName repositoryOrigin { repositoryName repositoryLocationName } } }
  }
}"""


def kpi_env(home: Path, warehouse_url: str, schema: str = "", **extra: str) -> dict[str, str]:
    """This environment without any KPI_ or DAGSTER_ setting of the developer's, plus these."""
    base = {key: value for key, value in os.environ.items() if not key.startswith(("KPI_", "DAGSTER_"))}
    return {
        **base,
        "DAGSTER_HOME": str(home),
        "KPI_WAREHOUSE_URL": warehouse_url,
        "KPI_WAREHOUSE_SCHEMA": schema,
        "KPI_LANDING_DIR": str(home.parent / "landing"),
        "KPI_PII_SALT": SALT,
        **extra,
    }


def new_dagster_home(path: Path) -> Path:
    """A DAGSTER_HOME with the local instance configuration of `make dev`."""
    path.mkdir(parents=True)
    shutil.copy(REPO / "kpi_pipelines" / "defaults" / "dagster_home.yaml", path / "dagster.yaml")
    return path


def kpi(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([KPI, *args], env=env, cwd=env["DAGSTER_HOME"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"kpi {' '.join(args)}: {result.stderr}"
    return result


@dataclass
class Dagster:
    """A Dagster process serving GraphQL (`dagster dev` or `dagster-webserver`)."""

    service: Service
    port: int

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return graphql(f"http://{HOST}:{self.port}", query, variables)

    def wait_for(self, probe, seconds: float, what: str) -> Any:
        deadline = time.monotonic() + seconds
        while True:
            assert self.service.alive(), f"{self.service.name} exited\n{tail(self.service.log)}"
            try:
                value = probe()
            except OSError:  # not listening yet
                value = None
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{tail(self.service.log)}"
            time.sleep(1)

    def location_loaded(self) -> bool:
        data = self.graphql(
            "{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError { __typename } } } } }"
        )
        entries = data["workspaceOrError"]["locationEntries"]
        return any(e["name"] == LOCATION and (e["locationOrLoadError"] or {}).get("__typename") == "RepositoryLocation" for e in entries)

    def job_run_ids(self) -> set[str]:
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "pipelineName": JOB}
        job = self.graphql(JOB_RUNS_QUERY, {"selector": selector})["pipelineOrError"]
        assert job["__typename"] == "Pipeline", job
        return {run["runId"] for run in job["runs"]}

    def run_origins(self, *run_ids: str) -> dict[str, dict[str, str] | None]:
        runs = self.graphql(TIMELINE_QUERY, {"filter": {"runIds": list(run_ids)}})["runsOrError"]["results"]
        return {run["id"]: run["repositoryOrigin"] for run in runs}


def start_dagster(argv: list[str], env: dict[str, str], log: Path) -> Iterator[Dagster]:
    port = free_port()
    service = Service(argv[0], [*argv, "-w", str(REPO / "workspace.yaml"), "-h", HOST, "-p", str(port)], log)
    service.start(env)
    dagster = Dagster(service, port)
    try:
        dagster.wait_for(dagster.location_loaded, 240, "the code location to load")
        yield dagster
    finally:
        service.stop()


def hold_duckdb_file(path: Path) -> subprocess.Popen:
    """Another process holding the DuckDB file (it takes its turn first) until told to stop."""
    code = (
        "import duckdb, sys; from kpi_pipelines.warehouse import wait_for_duckdb_file; "
        "c = wait_for_duckdb_file(lambda: duckdb.connect(sys.argv[1]), sys.argv[1], 300); "
        "print('held', flush=True); sys.stdin.readline()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def release(holder: subprocess.Popen) -> None:
    if holder.poll() is None:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=30)


def waiting_line(process: subprocess.Popen) -> str:
    """The waiting message among the first lines of a command's stderr (after the line naming
    the warehouse that some commands print there), or the last line read."""
    line = ""
    for _ in range(5):
        line = process.stderr.readline()
        if line.startswith(WAITING) or not line or "error" in line:
            break
    return line


def accepted(ingest_output: str) -> int:
    return int(re.search(r": (\d+) accepted", ingest_output).group(1))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """`dagster dev` on a new DAGSTER_HOME and DuckDB file holding two days of traffic; a
    second batch of traffic (other events) and the catalog are left for the commands."""
    root = tmp_path_factory.mktemp("embedded")
    first_day = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=2)
    loaded = generate(root / "loaded", days=2, sessions=15, seed=1, start=first_day)
    later = generate(root / "later", days=2, sessions=15, seed=2, start=first_day)
    warehouse_file = root / "kpi.duckdb"
    env = kpi_env(new_dagster_home(root / "home"), f"duckdb:///{warehouse_file}")
    before = accepted(kpi(env, "ingest", str(loaded.events_path)).stdout)
    kpi(env, "load-catalog", str(loaded.catalog_path))
    kpi(env, "load-judgments", str(loaded.judgments_path))
    for dagster in start_dagster([str(BIN / "dagster"), "dev"], env, root / "dagster-dev.log"):
        yield {"dagster": dagster, "env": env, "file": warehouse_file, "days": (first_day, first_day + dt.timedelta(days=1)),
               "later": later, "accepted_before": before}


@pytest.mark.deployment
def test_commands_and_a_daemon_run_wait_for_each_other_on_the_duckdb_file(embedded):
    dagster: Dagster = embedded["dagster"]
    env, path, (start, end), later = embedded["env"], embedded["file"], embedded["days"], embedded["later"]
    client = DagsterGraphQLClient(HOST, port_number=dagster.port)
    daemon_run = client.submit_job_execution(
        JOB,
        repository_location_name=LOCATION,
        repository_name=REPOSITORY,
        tags={"dagster/asset_partition_range_start": start.isoformat(), "dagster/asset_partition_range_end": end.isoformat()},
    )
    dagster.wait_for(lambda: client.get_run_status(daemon_run) != DagsterRunStatus.QUEUED, 180, "the daemon to start the run")
    assert client.get_run_status(daemon_run) in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED)

    commands = {
        "ingest": ["ingest", str(later.events_path)],
        "load-catalog": ["load-catalog", str(later.catalog_path)],
        "materialize": ["materialize", "--start", start.isoformat(), "--end", end.isoformat()],
        "metrics": ["metrics", "--format", "csv"],
    }
    holder = hold_duckdb_file(path)  # the file is busy while the commands start
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name, args in commands.items():
            out = open(path.parent / f"{name}.out", "w")
            processes[name] = subprocess.Popen([KPI, *args], env=env, cwd=path.parent, stdout=out, stderr=subprocess.PIPE, text=True)
            out.close()
        for name, process in processes.items():  # each says that it waits, naming the holder
            line = waiting_line(process)
            assert line.startswith(f"{WAITING} {path}, held by process {holder.pid} "), (name, line)
            assert "KPI_WAREHOUSE_LOCK_TIMEOUT" in line
    finally:
        release(holder)
    for name, process in processes.items():
        process.wait(timeout=900)
        rest = process.stderr.read()
        output = (path.parent / f"{name}.out").read_text()
        assert process.returncode == 0, (name, rest, output[-2000:])
        assert "kpi: error" not in rest, (name, rest)
    dagster.wait_for(
        lambda: client.get_run_status(daemon_run) in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE), 900, "the daemon's run"
    )
    assert client.get_run_status(daemon_run) == DagsterRunStatus.SUCCESS, tail(dagster.service.log)

    # nothing lost in the interleaving: both batches of events stored, KPIs for both days
    warehouse = Warehouse(f"duckdb:///{path}")  # (waits its turn too: the daemon may run an alert evaluation)
    ingested = accepted((path.parent / "ingest.out").read_text())
    assert warehouse.scalar("SELECT count(*) FROM raw_events") == embedded["accepted_before"] + ingested
    days = warehouse.query("SELECT DISTINCT CAST(\"timestamp\" AS DATE) FROM kpi_metrics WHERE aggregation_level = 'day'")
    assert {row[0] for row in days} == {start, end}

    # item 2: the command's run is one of the job's runs in the UI, with the daemon run's origin
    cli_run = re.search(r"in run ([0-9a-f-]{36})", (path.parent / "materialize.out").read_text()).group(1)
    assert {cli_run, daemon_run} <= dagster.job_run_ids()
    origins = dagster.run_origins(cli_run, daemon_run)
    assert origins[cli_run] == origins[daemon_run] == {"repositoryName": REPOSITORY, "repositoryLocationName": LOCATION}


def test_a_command_gives_up_in_one_line_past_the_lock_timeout(tmp_path):
    path = tmp_path / "held.duckdb"
    traffic = generate(tmp_path / "traffic", days=1, sessions=2, seed=3, start=dt.date(2026, 3, 10))
    env = kpi_env(tmp_path / "home", f"duckdb:///{path}", KPI_WAREHOUSE_LOCK_TIMEOUT="0.5")
    (tmp_path / "home").mkdir()
    holder = hold_duckdb_file(path)
    try:
        result = subprocess.run([KPI, "ingest", str(traffic.events_path)], env=env, capture_output=True, text=True, timeout=120)
    finally:
        release(holder)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr  # a wait under a second prints no message
    assert lines[0].startswith(f"kpi: error: the warehouse file {path} was still held by process {holder.pid} ("), lines[0]
    assert lines[0].endswith(") after 0.5 s (KPI_WAREHOUSE_LOCK_TIMEOUT)"), lines[0]
    warehouse = Warehouse(f"duckdb:///{path}")
    assert warehouse.scalar("SELECT count(*) FROM raw_events") == 0  # the refused command stored nothing
    again = kpi(env, "ingest", str(traffic.events_path))  # the file free again, the same command passes
    assert warehouse.scalar("SELECT count(*) FROM raw_events") == accepted(again.stdout) > 0


HOLDER_LOOP = """
import sys, time
from pathlib import Path
import kpi_pipelines.warehouse as warehouse_module
from kpi_pipelines.warehouse import Warehouse, wait_for_duckdb_file
warehouse, stop = Warehouse("duckdb:///" + sys.argv[1]), Path(sys.argv[2])
queries = 0
while not stop.exists():  # busy: one short transaction after another, no pause
    queries += warehouse.scalar("SELECT count(*) FROM raw_events") + 1
print(queries, flush=True)
time.sleep(300)  # idle, the process alive
"""


@pytest.mark.slow
def test_a_busy_process_hands_the_file_over_and_an_idle_one_lets_it_go(tmp_path):
    """A process keeps the file while it works, gives it up at the end of a transaction
    when another waits, and after a second unused; it goes on working in between."""
    path, stop = tmp_path / "busy.duckdb", tmp_path / "stop"
    Warehouse(f"duckdb:///{path}").scalar("SELECT 1")  # created and migrated
    warehouse_module.release_duckdb_file(f"duckdb:///{path}")
    busy = subprocess.Popen([sys.executable, "-c", HOLDER_LOOP, str(path), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        env = kpi_env(tmp_path / "home", f"duckdb:///{path}", KPI_WAREHOUSE_LOCK_TIMEOUT="120")
        (tmp_path / "home").mkdir()
        for _ in range(3):  # turns come again and again while the busy process keeps working
            result = subprocess.run([KPI, "metrics"], env=env, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, result.stderr
            assert busy.poll() is None
        stop.touch()
        assert int(busy.stdout.readline()) > 0  # it kept querying between the turns
        # idle now: it lets the file go without anyone asking (a plain DuckDB open waits for that)
        opened = wait_for_duckdb_file(lambda: duckdb.connect(str(path)), path, 60)
        opened.close()
        assert busy.poll() is None
    finally:
        busy.kill()
        busy.wait()
