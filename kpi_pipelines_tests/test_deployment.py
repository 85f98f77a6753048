"""The deployed shape of docs/deployment.md, for real, on loopback.

The PostgreSQL tests start the processes a deployment runs, as subprocesses on free ports:
`dagster code-server start` serving the project's code location, dagster-webserver and
dagster-daemon loading it over gRPC, all sharing a DAGSTER_HOME that holds the repository's
dagster.yaml verbatim (runs, event logs, schedules and ticks in a fresh PostgreSQL database
created for the module, dropped at the end) and a warehouse on PostgreSQL (a fresh schema).

- An events file dropped into the landing directory is picked up by the daemon's landing
  sensor, the run it launches succeeds (asked of the webserver's GraphQL API) and today's KPIs
  are in the warehouse.
- A schedule started through the webserver's GraphQL API gets a tick from the daemon,
  recorded in PostgreSQL. The project's schedules fire at :15 and 02:00, too rarely for a
  bounded test, and a test must not add schedules to the project, so the workspace holds a
  second, test-only code location (written to a temporary file, served by `dagster api grpc`)
  with one every-minute schedule, STOPPED in code. The project's own schedules are checked
  to be RUNNING in the same deployment.
- `deploy/local.sh` (`make deploy-local`) starts the three processes and stops every one of
  them on SIGINT (Ctrl-C).

Every process runs in its own process group, stopped (SIGTERM, then SIGKILL) by finalizers
even when a test fails; their logs go to files whose last lines are printed on failure.
The file-level tests check that the Compose file, the Helm values and the image agree with
the repository's dagster.yaml and setup.py, and that the installed Dagster accepts the flags
the deployment files use.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from kpi_pipelines_tests.conftest import event, postgres_or_skip

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
LOCATION = "kpi_pipelines"
PROBE_LOCATION = "deployment_probe"
PROBE_SCHEDULE = "deployment_probe_every_minute"
REPOSITORY = "__repository__"  # the repository name of a `Definitions` object
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

# The test-only code location: one every-minute schedule, STOPPED until started over GraphQL.
PROBE_SOURCE = f'''
"""Test-only code location of kpi_pipelines_tests/test_deployment.py."""
from dagster import DefaultScheduleStatus, Definitions, RunRequest, in_process_executor, job, op, schedule


@op
def probe(context):
    context.log.info("deployment probe")


@job(executor_def=in_process_executor)
def deployment_probe_job():
    probe()


@schedule(
    job=deployment_probe_job,
    cron_schedule="* * * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
)
def {PROBE_SCHEDULE}(context):
    return RunRequest(run_key=f"probe-{{context.scheduled_execution_time:%Y-%m-%dT%H:%M}}")


defs = Definitions(jobs=[deployment_probe_job], schedules=[{PROBE_SCHEDULE}])
'''

WORKSPACE_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries { name locationOrLoadError { __typename ... on PythonError { message } } }
    }
    ... on PythonError { message }
  }
}"""
DAEMON_QUERY = "query { instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"
SENSOR_QUERY = """
query($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { name minIntervalSeconds sensorState { status } }
    ... on PythonError { message }
  }
}"""
START_SENSOR = """
mutation($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}"""
SCHEDULE_QUERY = """
query($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    __typename
    ... on Schedule { name cronSchedule scheduleState { status selectorId } }
    ... on PythonError { message }
  }
}"""
START_SCHEDULE = """
mutation($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename
    ... on ScheduleStateResult { scheduleState { name status selectorId } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""
RUNS_QUERY = """
query($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId jobName status tags { key value } } }
    ... on PythonError { message }
  }
}"""


# --- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def live_group_members(pgid: int) -> list[int]:
    """Processes of the group that are still running (zombies excluded); [] without /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"--- {path}: no log"
    return f"--- last {min(lines, len(text))} lines of {path}\n" + "\n".join(text[-lines:])


def graphql(web_url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """The data of one query to a Dagster webserver's GraphQL endpoint, asserting no errors."""
    request = urllib.request.Request(
        web_url + "/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.load(response)
    assert not payload.get("errors"), payload["errors"]
    return payload["data"]


@dataclass
class Service:
    """One process of the deployment, in its own session and process group, logging to a file."""

    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen | None = None

    def start(self, env: dict[str, str]) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 30) -> None:
        """SIGTERM to the group (Dagster maps it to a clean interrupt), then SIGKILL to whatever
        is left of it: a run worker, a step process, the code server's gRPC child."""
        if self.process is None:
            return
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)
        deadline = time.monotonic() + 5
        while live_group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


@dataclass
class Deployment:
    home: Path
    landing: Path
    web_url: str
    instance_url: str  # the instance's database, postgresql+psycopg2://
    warehouse_url: str
    warehouse_schema: str
    services: list[Service] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(tail(service.log) for service in self.services)

    @contextlib.contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            print(self.logs())
            raise

    def check_alive(self) -> None:
        dead = [service.name for service in self.services if not service.alive()]
        if dead:
            raise AssertionError(f"{', '.join(dead)} exited\n{self.logs()}")

    def wait_for(self, probe: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.logs()}")
            time.sleep(interval)

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return graphql(self.web_url, query, variables)

    def runs(self, **run_filter: Any) -> list[dict[str, Any]]:
        result = self.graphql(RUNS_QUERY, {"filter": run_filter})["runsOrError"]
        assert result["__typename"] == "Runs", result
        return result["results"]

    def wait_for_finished_run(self, run_filter: dict[str, Any], timeout: float, what: str) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            done = [run for run in self.runs(**run_filter) if run["status"] in FINISHED]
            return done[0] if done else None

        return self.wait_for(finished, timeout, what, interval=2)

    @contextlib.contextmanager
    def instance(self) -> Iterator[Any]:
        """The Dagster instance of the deployment, read in this process through the same
        dagster.yaml (DAGSTER_PG_URL set while it is built)."""
        from dagster import DagsterInstance

        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DAGSTER_PG_URL", self.instance_url)
            instance = DagsterInstance.from_config(str(self.home))
        try:
            yield instance
        finally:
            instance.dispose()


def _psycopg(url: str) -> sa.engine.URL:
    return make_url(url).set(drivername="postgresql+psycopg")


@contextlib.contextmanager
def fresh_database(base_url: str, prefix: str) -> Iterator[str]:
    """A new database on the server of `base_url` (its name), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(_psycopg(base_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    schema = "deploy_" + uuid.uuid4().hex[:12]
    try:
        yield schema
    finally:
        engine = sa.create_engine(_psycopg(url))
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


def base_env() -> dict[str, str]:
    """The test's environment without any setting of ours or of Dagster (the Makefile exports
    DAGSTER_HOME; a developer may have KPI_WAREHOUSE_URL or SLACK_BOT_TOKEN set)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("KPI_", "DAGSTER_", "SLACK_", "PYTEST_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    url = postgres_or_skip()
    root = tmp_path_factory.mktemp("deployment")
    home, landing, logs = root / "dagster_home", root / "landing", root / "logs"
    for directory in (home, landing, logs):
        directory.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())  # verbatim
    probe_file = root / "deployment_probe_location.py"
    probe_file.write_text(PROBE_SOURCE)
    code_port, probe_port, web_port = free_port(), free_port(), free_port()
    workspace = home / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {"grpc_server": {"host": HOST, "port": code_port, "location_name": LOCATION}},
                    {"grpc_server": {"host": HOST, "port": probe_port, "location_name": PROBE_LOCATION}},
                ]
            }
        )
    )

    with contextlib.ExitStack() as stack:
        instance_db = stack.enter_context(fresh_database(url, "kpi_deploy"))
        schema = stack.enter_context(fresh_schema(url))
        instance_url = make_url(url).set(drivername="postgresql+psycopg2", database=instance_db)
        warehouse_url = _psycopg(url).render_as_string(hide_password=False)
        env = base_env() | {
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_URL": instance_url.render_as_string(hide_password=False),
            "KPI_WAREHOUSE_URL": warehouse_url,
            "KPI_WAREHOUSE_SCHEMA": schema,
            "KPI_LANDING_DIR": str(landing),
            "KPI_PII_SALT": "deployment-test-salt",
        }
        deployment = Deployment(
            home=home,
            landing=landing,
            web_url=f"http://{HOST}:{web_port}",
            instance_url=env["DAGSTER_PG_URL"],
            warehouse_url=warehouse_url,
            warehouse_schema=schema,
        )
        dagster = str(BIN / "dagster")
        code = Service(
            "code-server",
            [dagster, "code-server", "start", "-h", HOST, "-p", str(code_port),
             "-m", "kpi_pipelines.definitions", "-a", "defs", "-d", str(REPO), "--location-name", LOCATION],
            logs / "code-server.log",
        )  # fmt: skip
        probe = Service(
            "probe-code-server",
            [dagster, "api", "grpc", "-h", HOST, "-p", str(probe_port),
             "-f", str(probe_file), "-a", "defs", "--location-name", PROBE_LOCATION],
            logs / "probe-code-server.log",
        )  # fmt: skip
        webserver = Service(
            "webserver",
            [str(BIN / "dagster-webserver"), "-h", HOST, "-p", str(web_port), "-w", str(workspace)],
            logs / "webserver.log",
        )
        daemon = Service("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], logs / "daemon.log")

        def stop_all() -> None:
            for service in reversed(deployment.services):  # daemon, webserver, code servers
                service.stop()

        stack.callback(stop_all)  # runs before the database and the schema are dropped
        stack.enter_context(deployment.logs_on_failure())  # a failed start prints the logs
        for service in (code, probe):
            deployment.services.append(service)
            service.start(env)
        for port, name in ((code_port, "the code server"), (probe_port, "the probe code server")):
            deployment.wait_for(
                lambda port=port: subprocess.run(
                    [dagster, "api", "grpc-health-check", "-h", HOST, "-p", str(port)],
                    capture_output=True,
                    check=False,
                ).returncode
                == 0,
                timeout=180,
                what=f"{name} to answer on {HOST}:{port}",
            )
        for service in (webserver, daemon):
            deployment.services.append(service)
            service.start(env)

        def webserver_up() -> bool:
            try:
                with urllib.request.urlopen(deployment.web_url + "/server_info", timeout=5) as response:
                    return response.status == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        deployment.wait_for(webserver_up, timeout=120, what="the webserver")
        entries = deployment.graphql(WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
        loaded = {entry["name"]: entry["locationOrLoadError"]["__typename"] for entry in entries}
        assert loaded == {LOCATION: "RepositoryLocation", PROBE_LOCATION: "RepositoryLocation"}, entries

        def daemons_healthy() -> bool:
            statuses = deployment.graphql(DAEMON_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
            healthy = {status["daemonType"] for status in statuses if status["healthy"]}
            return {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR"} <= healthy

        deployment.wait_for(daemons_healthy, timeout=120, what="the daemon's heartbeats", interval=2)
        yield deployment


def warehouse_rows(deployment: Deployment, sql: str, params: dict[str, Any]) -> list[sa.Row]:
    engine = sa.create_engine(deployment.warehouse_url)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(f"SET search_path TO {deployment.warehouse_schema}"))
            return list(connection.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def day_events(day: dt.date, tag: str) -> list[dict[str, Any]]:
    """Two searches in two sessions on `day`: one clicked, one without results."""
    at = dt.datetime.combine(day, dt.time(0, 0, 30), dt.timezone.utc)
    now = dt.datetime.now(dt.timezone.utc)
    if day == now.date():
        at = max(at, now - dt.timedelta(minutes=5))

    def stamp(offset: int) -> str:
        return (at + dt.timedelta(seconds=offset)).isoformat().replace("+00:00", "Z")

    return [
        event(f"{tag}-q1", timestamp=stamp(0), session_id=f"{tag}-s1"),
        event(
            f"{tag}-c1", timestamp=stamp(5), session_id=f"{tag}-s1",
            action="click", query_id=f"q-{tag}-q1", product_id="P1", position=1,
        ),
        event(
            f"{tag}-q2", timestamp=stamp(10), session_id=f"{tag}-s2", user_id="user-2",
            action="query", query_id=f"q-{tag}-q2", query="blue hat", result_ids=[], response_time_ms=80,
        ),
    ]  # fmt: skip


# --- the deployment files ----------------------------------------------------------------


def test_helm_values_mirror_the_repository_instance_config():
    instance = yaml.safe_load((REPO / "dagster.yaml").read_text())
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert instance["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}

    coordinator = instance["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    daemon = values["dagsterDaemon"]
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued["maxConcurrentRuns"] == coordinator["config"]["max_concurrent_runs"]
    assert queued["tagConcurrencyLimits"] == coordinator["config"]["tag_concurrency_limits"]
    assert daemon["runRetries"] == {
        "enabled": instance["run_retries"]["enabled"],
        "maxRetries": instance["run_retries"]["max_retries"],
        "retryOnAssetOrOpFailure": instance["run_retries"]["retry_on_asset_or_op_failure"],
    }
    retention = values["retention"]
    assert retention["enabled"] is True
    assert retention["schedule"]["purgeAfterDays"] == instance["retention"]["schedule"]["purge_after_days"]
    sensor_days = dict(retention["sensor"]["purgeAfterDays"])
    assert sensor_days.pop("started") == -1  # the chart requires it; dagster.yaml leaves it unset
    assert sensor_days == instance["retention"]["sensor"]["purge_after_days"]
    assert values["telemetry"]["enabled"] == instance["telemetry"]["enabled"]

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["codeServerArgs"][:4] == ["--module-name", "kpi_pipelines.definitions", "--attribute", "defs"]
    assert {"name": "kpi-pipelines-secrets"} in deployment["envSecrets"]
    assert values["postgresql"]["enabled"] is False
    assert values["generatePostgresqlPasswordSecret"] is False


def test_compose_wires_webserver_and_daemon_to_the_code_server():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "code", "webserver", "daemon"}
    workspace = yaml.safe_load((DEPLOY / "workspace.docker.yaml").read_text())
    (entry,) = workspace["load_from"]
    code_command = services["code"]["command"]
    assert code_command[:3] == ["dagster", "code-server", "start"]
    assert entry["grpc_server"] == {
        "host": "code",
        "port": int(code_command[code_command.index("-p") + 1]),
        "location_name": code_command[code_command.index("--location-name") + 1],
    }
    for name in ("code", "webserver", "daemon"):
        environment = services[name]["environment"]
        assert environment["DAGSTER_PG_URL"].startswith("postgresql+psycopg2://"), name
        assert environment["DAGSTER_HOME"] == "/opt/dagster/dagster_home", name
    for name in ("webserver", "daemon"):
        assert "./workspace.docker.yaml:/opt/dagster/workspace.yaml:ro" in services[name]["volumes"]
        assert services[name]["depends_on"]["code"] == {"condition": "service_healthy"}
        assert not any(key.startswith(("KPI_", "SLACK_")) for key in services[name]["environment"]), name
    code_env = services["code"]["environment"]
    assert code_env["KPI_WAREHOUSE_URL"].startswith("postgresql+psycopg://")
    # secrets come from deploy/.env, never from the file itself
    for name in ("KPI_PII_SALT", "SLACK_BOT_TOKEN"):
        assert code_env[name].startswith("${" + name), name
    assert re.search(r":\$\{DAGSTER_PG_PASSWORD:\?", services["code"]["environment"]["DAGSTER_PG_URL"])


def test_image_pins_match_setup_py():
    setup = (REPO / "setup.py").read_text()
    dagster = re.search(r'"dagster==([0-9.]+)"', setup).group(1)
    integrations = re.search(r'"dagster-postgres==([0-9.]+)"', setup).group(1)
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f'"dagster-k8s=={integrations}"' in dockerfile
    assert re.search(r"^FROM python:3\.11", dockerfile, re.MULTILINE)
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert values["dagsterWebserver"]["image"]["tag"] == dagster
    assert values["dagsterDaemon"]["image"]["tag"] == dagster


def _flags(argv: list[str]) -> list[str]:
    return [arg for arg in argv if arg.startswith("-")]


@pytest.mark.slow
def test_installed_dagster_accepts_the_flags_the_deployment_files_use():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    local = (DEPLOY / "local.sh").read_text()
    code_server_flags = set(_flags(compose["code"]["command"]))
    code_server_flags |= set(_flags(values["dagster-user-deployments"]["deployments"][0]["codeServerArgs"]))
    code_server_flags |= {"-h", "-p", "-m", "-a", "-d", "--location-name"}  # deploy/local.sh and this module
    assert "code-server start -h" in local
    commands = {
        ("dagster", "code-server", "start"): code_server_flags,
        ("dagster-webserver",): set(_flags(compose["webserver"]["command"])),
        ("dagster-daemon", "run"): set(_flags(compose["daemon"]["command"])),
        ("dagster", "api", "grpc"): {"-h", "-p", "-f", "-a", "--location-name"},
        ("dagster", "api", "grpc-health-check"): {"-h", "-p"},
    }
    for (exe, *subcommand), flags in commands.items():
        result = subprocess.run([str(BIN / exe), *subcommand, "--help"], capture_output=True, text=True, check=True)
        accepted = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", result.stdout))
        assert flags <= accepted, (exe, subcommand, flags - accepted)


# --- make deploy-local -------------------------------------------------------------------


@pytest.mark.deployment
def test_deploy_local_script_starts_the_three_processes_and_stops_them_on_ctrl_c(tmp_path):
    url = postgres_or_skip()
    with fresh_database(url, "kpi_local_instance") as instance_db, fresh_schema(url) as schema:
        code_port, web_port = free_port(), free_port()
        env = base_env() | {
            "KPI_TEST_POSTGRES_URL": url,
            "DAGSTER_PG_URL": make_url(url)
            .set(drivername="postgresql+psycopg2", database=instance_db)
            .render_as_string(hide_password=False),
            "KPI_WAREHOUSE_URL": url,
            "KPI_WAREHOUSE_SCHEMA": schema,
            "KPI_LANDING_DIR": str(tmp_path / "landing"),
            "KPI_DEPLOY_DIR": str(tmp_path / "state"),
            "KPI_CODE_SERVER_PORT": str(code_port),
            "KPI_WEBSERVER_PORT": str(web_port),
            "KPI_BIN": str(BIN),
            "DAGSTER_HOME": str(REPO / ".dagster_home"),  # as `make` exports it: must be left alone
        }
        local_home_config = REPO / ".dagster_home" / "dagster.yaml"
        local_home_before = local_home_config.read_text() if local_home_config.exists() else None
        output = tmp_path / "deploy-local.out"
        with open(output, "wb") as out:
            script = subprocess.Popen(
                ["bash", str(DEPLOY / "local.sh")],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pids: list[int] = []
        try:
            deadline = time.monotonic() + 180
            while "deploy-local: ready" not in output.read_text():
                assert script.poll() is None, tail(output)
                assert time.monotonic() < deadline, tail(output)
                time.sleep(1)
            text = output.read_text()
            pids = [int(pid) for pid in re.findall(r"started \S+ \(pid (\d+),", text)]
            assert len(pids) == 3, text
            home = tmp_path / "state" / "dagster_home"
            assert (home / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()
            workspace = yaml.safe_load((home / "workspace.yaml").read_text())
            assert workspace["load_from"][0]["grpc_server"] == {
                "host": HOST, "port": code_port, "location_name": LOCATION,
            }  # fmt: skip
            with urllib.request.urlopen(f"http://{HOST}:{web_port}/server_info", timeout=10) as response:
                assert response.status == 200

            started_at = time.monotonic()
            script.send_signal(signal.SIGINT)  # what Ctrl-C delivers to the script
            status = script.wait(timeout=90)
            print(f"deploy-local stopped {time.monotonic() - started_at:.1f}s after SIGINT")
            assert status == 130, tail(output)
            assert "deploy-local: stopped" in output.read_text()
            assert "SIGKILL" not in output.read_text(), tail(output)  # each stopped on SIGTERM
            assert {pid: live_group_members(pid) for pid in pids} == {pid: [] for pid in pids}
            # `make dev`'s local instance (the DAGSTER_HOME make exports) is left as it was
            assert (local_home_config.read_text() if local_home_config.exists() else None) == local_home_before
        finally:
            if script.poll() is None:
                script.kill()
                script.wait()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        print(tail(output, 20))


# --- end to end --------------------------------------------------------------------------


@pytest.mark.deployment
def test_landing_file_becomes_kpis_through_the_deployed_daemon(deployment: Deployment):
    with deployment.logs_on_failure():
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": "landing_sensor"}
        sensor = deployment.graphql(SENSOR_QUERY, {"selector": selector})["sensorOrError"]
        assert sensor["__typename"] == "Sensor", sensor
        if sensor["sensorState"]["status"] != "RUNNING":  # declared RUNNING in code; make sure
            started = deployment.graphql(START_SENSOR, {"selector": selector})["startSensor"]
            assert started["__typename"] == "Sensor", started

        today = dt.datetime.now(dt.timezone.utc).date()
        events = day_events(today, "today")
        if dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10) >= dt.datetime.combine(
            today + dt.timedelta(days=1), dt.time(), dt.timezone.utc
        ):
            # the sensor may ask for tomorrow's partition: give that day the same traffic
            events += day_events(today + dt.timedelta(days=1), "tomorrow")
        partial = deployment.landing / ".events.jsonl.tmp"  # writers rename complete files
        partial.write_text("".join(json.dumps(item) + "\n" for item in events))
        partial.rename(deployment.landing / "events-deployment-test.jsonl")

        started_at = time.monotonic()
        run = deployment.wait_for_finished_run(
            {"pipelineName": "ingest_job", "tags": [{"key": "dagster/sensor_name", "value": "landing_sensor"}]},
            timeout=240,
            what="the landing sensor's run to finish",
        )
        print(f"landing file -> finished run in {time.monotonic() - started_at:.0f}s")
        # the webserver reports the run's success
        succeeded = deployment.runs(runIds=[run["runId"]], statuses=["SUCCESS"])
        assert [item["runId"] for item in succeeded] == [run["runId"]], run
        tags = {tag["key"]: tag["value"] for tag in run["tags"]}
        assert tags["kpi/trigger"] == "landing"
        partition = dt.date.fromisoformat(tags["dagster/partition"])
        assert partition in (today, today + dt.timedelta(days=1))

        stored = warehouse_rows(deployment, "SELECT count(*) FROM raw_events", {})[0][0]
        assert stored == len(events)
        rows = warehouse_rows(
            deployment,
            "SELECT metric_name, metric_value FROM kpi_metrics "
            "WHERE aggregation_level = 'day' AND dimensions = '{}' "
            "AND \"timestamp\" = CAST(:day AS TIMESTAMP)",
            {"day": partition.isoformat()},
        )
        metrics = {name: float(value) for name, value in rows}
        assert metrics["search.queries"] == 2, metrics
        assert metrics["search.click_through_rate"] == pytest.approx(0.5)
        assert metrics["search.no_results_rate"] == pytest.approx(0.5)


@pytest.mark.deployment
def test_schedule_started_through_graphql_ticks_into_postgresql(deployment: Deployment):
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import InstigatorStatus, TickStatus

    with deployment.logs_on_failure():
        # the project's schedules are live in the deployment, as declared in code
        for name in ("hourly_today", "nightly_backfill"):
            selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "scheduleName": name}
            schedule = deployment.graphql(SCHEDULE_QUERY, {"selector": selector})["scheduleOrError"]
            assert schedule["__typename"] == "Schedule", schedule
            assert schedule["scheduleState"]["status"] == "RUNNING", schedule

        selector = {"repositoryLocationName": PROBE_LOCATION, "repositoryName": REPOSITORY, "scheduleName": PROBE_SCHEDULE}
        before = deployment.graphql(SCHEDULE_QUERY, {"selector": selector})["scheduleOrError"]
        assert before["scheduleState"]["status"] == "STOPPED", before
        started = deployment.graphql(START_SCHEDULE, {"selector": selector})["startSchedule"]
        assert started["__typename"] == "ScheduleStateResult", started
        assert started["scheduleState"]["status"] == "RUNNING"
        selector_id = started["scheduleState"]["selectorId"]

        with deployment.instance() as instance:
            # the state the webserver wrote is in the instance's PostgreSQL schedule storage
            assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
            states = [
                state
                for state in instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE)
                if state.selector_id == selector_id
            ]
            assert [(state.name, state.status) for state in states] == [(PROBE_SCHEDULE, InstigatorStatus.RUNNING)]
            state = states[0]

            # the daemon's scheduler ticks at the next minute boundary
            started_at = time.monotonic()
            ticks = deployment.wait_for(
                lambda: [
                    tick
                    for tick in instance.get_ticks(state.instigator_origin_id, selector_id, limit=5)
                    if tick.status in (TickStatus.SUCCESS, TickStatus.FAILURE)
                ],
                timeout=100,
                what=f"a tick of {PROBE_SCHEDULE}",
                interval=2,
            )
            print(f"schedule started -> tick in {time.monotonic() - started_at:.0f}s")
            tick = ticks[-1]
            assert tick.status == TickStatus.SUCCESS, tick.error
            assert len(tick.run_ids) == 1

        # the same tick, as a row of PostgreSQL's job_ticks table
        engine = sa.create_engine(_psycopg(deployment.instance_url))
        try:
            with engine.connect() as connection:
                statuses = connection.execute(
                    sa.text("SELECT status FROM job_ticks WHERE selector_id = :selector_id"),
                    {"selector_id": selector_id},
                ).scalars().all()
        finally:
            engine.dispose()
        assert "SUCCESS" in statuses

        # the tick's run went through the run queue to the probe's code server and succeeded
        run = deployment.wait_for_finished_run(
            {"runIds": list(tick.run_ids)}, timeout=120, what="the scheduled run to finish"
        )
        assert run["status"] == "SUCCESS", run
        assert {"key": "dagster/schedule_name", "value": PROBE_SCHEDULE} in run["tags"]
