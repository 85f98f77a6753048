"""A landing file that cannot be read is moved to failed/ and never stalls later runs (issue 11,
item 1): on both backends, with real Dagster runs and the `kpi` command."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import AssetCheckSeverity, AssetKey, DagsterEventType, instance_for_test

from kpi_pipelines import cli
from kpi_pipelines.ingestion.assets import LANDING_CHECK
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines_tests.conftest import definitions_for, event

DAY = "2026-03-10"
REPO = Path(__file__).resolve().parents[1]


def _lines(*events: dict) -> bytes:
    return "".join(json.dumps(e) + "\n" for e in events).encode()


def broken_files() -> dict[str, bytes]:
    """One member of each class of unreadable file, by name."""
    whole = gzip.compress(_lines(*(event(f"t{i}", timestamp=f"{DAY}T10:00:00Z") for i in range(500))))
    return {
        "events-truncated.jsonl.gz": whole[: len(whole) // 2],  # cut mid-stream
        "events-latin1.jsonl": _lines(event("l1")) + b'{"id": "caf\xe9"}\n',  # not UTF-8
        "events-binary.jsonl": bytes(range(256)) * 16,  # NULs and stray high bytes
        "events-notgzip.jsonl.gz": b"PK\x03\x04" + bytes(range(200)),  # a zip named .gz
    }


def _landing(tmp_path: Path) -> Path:
    landing = tmp_path / "landing"
    landing.mkdir()
    return landing


def _run_raw_events(warehouse: Warehouse, landing: Path, instance, files: list[Path] = ()):
    """One real run of `raw_events` (and its checks) alone, as the landing sensor's run starts."""
    job = definitions_for(warehouse, str(landing)).resolve_job_def("ingest_job")
    return job.execute_in_process(
        instance=instance,
        partition_key=DAY,
        run_config={"ops": {"raw_events": {"config": {"files": [str(path) for path in files]}}}},
        asset_selection=[AssetKey("raw_events")],
        raise_on_error=False,
    )


def _landing_check(result):
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == LANDING_CHECK]
    return evaluation


def _stored_ids(warehouse: Warehouse) -> set[str]:
    return {row[0] for row in warehouse.query("SELECT event_id FROM raw_events")}


@pytest.mark.slow
def test_kpi_materialize_succeeds_twice_with_broken_files_among_good_ones(warehouse, tmp_path, monkeypatch):
    """The issue's 'done when': good events stored, each broken file under failed/ byte for byte."""
    landing = _landing(tmp_path)
    (landing / "good.jsonl").write_bytes(_lines(event("a1", timestamp=f"{DAY}T08:00:00Z"), event("a2", timestamp=f"{DAY}T09:00:00Z")))
    (landing / "good.jsonl.gz").write_bytes(gzip.compress(_lines(event("b1", timestamp=f"{DAY}T10:00:00Z"))))
    broken = broken_files()
    for name, data in broken.items():
        (landing / name).write_bytes(data)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    definitions = definitions_for(warehouse, str(landing))

    first = cli.materialize(dt.date(2026, 3, 10), dt.date(2026, 3, 10), definitions=definitions)
    second = cli.materialize(dt.date(2026, 3, 10), dt.date(2026, 3, 10), definitions=definitions)

    assert first.success and second.success
    assert _stored_ids(warehouse) == {"a1", "a2", "b1"}
    failed = landing / "failed"
    assert sorted(path.name for path in failed.iterdir()) == sorted([*broken, *(f"{name}.error.txt" for name in broken)])
    for name, data in broken.items():
        assert (failed / name).read_bytes() == data
        reason = (failed / f"{name}.error.txt").read_text()
        assert name in reason and reason.count("\n") == 1  # one line naming the file
    assert not [path for path in landing.iterdir() if path.is_file()]  # good files loaded and deleted
    rows = warehouse.query("SELECT landing_path, failed_path, size_bytes, reason FROM quarantined_files ORDER BY 1")
    assert [(Path(a).name, Path(b).parent, size) for a, b, size, _ in rows] == [
        (name, failed, len(broken[name])) for name in sorted(broken)
    ]
    assert all(reason == (failed / f"{Path(path).name}.error.txt").read_text().strip() for path, _, _, reason in rows)

    check = _landing_check(first)
    assert not check.passed and check.severity == AssetCheckSeverity.WARN
    assert all(name in check.description for name in broken)
    assert _landing_check(second).passed  # the alert is raised once, by the run that moved them
    (materialization,) = first.asset_materializations_for_node("raw_events")
    assert sorted(Path(item["file"]).name for item in materialization.metadata["quarantined_files"].value) == sorted(broken)


def test_a_broken_file_given_outside_the_landing_directory_fails_the_run_once(warehouse, tmp_path):
    landing, elsewhere = _landing(tmp_path), tmp_path / "elsewhere"
    elsewhere.mkdir()
    given = elsewhere / "events-truncated.jsonl.gz"
    data = broken_files()["events-truncated.jsonl.gz"]
    given.write_bytes(data)
    with instance_for_test() as instance:
        result = _run_raw_events(warehouse, landing, instance, files=[given])
        assert not result.success
        assert len(instance.get_runs()) == 1
    failures = result.get_step_failure_events()
    assert len(failures) == 1 and "events-truncated.jsonl.gz" in failures[0].event_specific_data.error.to_string()
    # a deterministic error: the step's retry policy does not retry it
    assert not [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    assert given.read_bytes() == data and not (landing / "failed").exists()
    assert warehouse.scalar("SELECT count(*) FROM quarantined_files") == 0


def test_a_requested_file_that_vanished_is_reported_and_the_rest_loads(warehouse, tmp_path):
    landing = _landing(tmp_path)
    (landing / "good.jsonl").write_bytes(_lines(event("g1", timestamp=f"{DAY}T08:00:00Z")))
    gone = landing / "gone.jsonl"  # requested by the sensor, deleted before the run read it
    with instance_for_test() as instance:
        result = _run_raw_events(warehouse, landing, instance, files=[gone])
    assert result.success
    check = _landing_check(result)
    assert not check.passed and f"{gone} vanished before it was loaded" in check.description
    assert check.metadata["vanished_files"].value == [str(gone)]
    assert _stored_ids(warehouse) == {"g1"}
    assert warehouse.scalar("SELECT count(*) FROM quarantined_files") == 0


@pytest.mark.slow
def test_a_requested_file_an_earlier_run_quarantined_is_not_reported_again(warehouse, tmp_path):
    landing = _landing(tmp_path)
    bad = landing / "events-binary.jsonl"
    bad.write_bytes(broken_files()["events-binary.jsonl"])
    with instance_for_test() as instance:
        hourly = _run_raw_events(warehouse, landing, instance)  # the directory scan takes it first
        requested = _run_raw_events(warehouse, landing, instance, files=[bad])  # then the sensor's run
    assert hourly.success and not _landing_check(hourly).passed
    assert requested.success and _landing_check(requested).passed
    assert warehouse.scalar("SELECT count(*) FROM quarantined_files") == 1


@pytest.mark.slow
def test_a_second_broken_file_of_a_quarantined_name_keeps_both(warehouse, tmp_path):
    landing = _landing(tmp_path)
    first, second = b"\xff\xfe first\n", b"\xff\xfe second, longer\n"
    with instance_for_test() as instance:
        for data in (first, second):
            (landing / "events.jsonl").write_bytes(data)
            assert _run_raw_events(warehouse, landing, instance).success
    failed = sorted((landing / "failed").iterdir())
    kept = {path.read_bytes() for path in failed if not path.name.endswith(".error.txt")}
    assert kept == {first, second}
    assert len(failed) == 4  # each with its reason
    assert warehouse.scalar("SELECT count(DISTINCT failed_path) FROM quarantined_files") == 2


@pytest.mark.slow
def test_kpi_landing_lists_and_retries_a_fixed_file(warehouse, tmp_path, monkeypatch, capsys):
    landing = _landing(tmp_path)
    monkeypatch.setenv("KPI_LANDING_DIR", str(landing))
    assert cli.main(["landing", "list"]) == 0
    assert "no quarantined files" in capsys.readouterr().out
    broken = broken_files()["events-latin1.jsonl"]
    (landing / "events-latin1.jsonl").write_bytes(broken)
    with instance_for_test() as instance:
        assert _run_raw_events(warehouse, landing, instance).success
        capsys.readouterr()

        assert cli.main(["landing", "list"]) == 0
        (line,) = capsys.readouterr().out.splitlines()
        name, size, reason = line.split("\t")
        assert (name, size) == ("events-latin1.jsonl", f"{len(broken)} bytes")
        assert reason == (landing / "failed" / "events-latin1.jsonl.error.txt").read_text().strip()

        for unknown in ("nope.jsonl", "events-latin1.jsonl.error.txt", "../landing", ""):
            assert cli.main(["landing", "retry", unknown]) == 1
            err = capsys.readouterr().err
            assert err.startswith(f"kpi: error: no quarantined file {unknown!r}") and err.count("\n") == 1
        (landing / "events-latin1.jsonl").write_bytes(b"a newer file of the same name\n")
        assert cli.main(["landing", "retry", "events-latin1.jsonl"]) == 1
        err = capsys.readouterr().err
        assert "already exists" in err and err.count("\n") == 1
        assert (landing / "failed" / "events-latin1.jsonl").read_bytes() == broken  # nothing moved
        (landing / "events-latin1.jsonl").unlink()

        fixed = _lines(event("fixed-1", timestamp=f"{DAY}T12:00:00Z"))
        (landing / "failed" / "events-latin1.jsonl").write_bytes(fixed)  # repaired in place
        before = time.time_ns()
        assert cli.main(["landing", "retry", "events-latin1.jsonl"]) == 0
        assert "moved events-latin1.jsonl back" in capsys.readouterr().out
        back = landing / "events-latin1.jsonl"
        assert back.read_bytes() == fixed and back.stat().st_mtime_ns >= before - 1_000_000_000  # new to the sensor
        assert list((landing / "failed").iterdir()) == []  # its reason went with it

        result = _run_raw_events(warehouse, landing, instance)
    assert result.success and _landing_check(result).passed
    assert _stored_ids(warehouse) == {"fixed-1"}
    assert warehouse.scalar("SELECT count(*) FROM quarantined_files") == 1  # the history stays


# Runs the landing run in a process of its own and prints what it saw (see below).
_CHILD_RUN = """
import json, sys
from pathlib import Path
from dagster import instance_for_test
from kpi_pipelines.warehouse import Warehouse
from kpi_pipelines_tests.test_landing_quarantine import _landing_check, _run_raw_events
url, schema, landing = sys.argv[1:4]
with instance_for_test() as instance:
    result = _run_raw_events(Warehouse(url, schema or None), Path(landing), instance)
check = _landing_check(result)
print(json.dumps({"success": result.success, "passed": check.passed, "description": check.description}))
"""


@pytest.mark.slow
def test_a_landing_file_that_cannot_be_opened_is_quarantined(warehouse, tmp_path):
    landing = _landing(tmp_path)
    locked = landing / "events-locked.jsonl"
    locked.write_bytes(_lines(event("x1")))
    locked.chmod(0)
    (landing / "good.jsonl").write_bytes(_lines(event("g1", timestamp=f"{DAY}T08:00:00Z")))
    # root reads any file: as root, the run goes to a process without the capabilities that
    # let it ignore file permissions
    drop = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}"] if os.geteuid() == 0 else []
    url = warehouse.url.render_as_string(hide_password=False)
    child = subprocess.run(
        [*prefix, sys.executable, "-c", _CHILD_RUN, url, warehouse.schema or "", str(landing)],
        capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["success"] and not report["passed"] and "events-locked.jsonl" in report["description"]
    moved = landing / "failed" / "events-locked.jsonl"
    moved.chmod(0o600)
    assert moved.read_bytes() == _lines(event("x1"))
    assert "ermission denied" in (landing / "failed" / "events-locked.jsonl.error.txt").read_text()
    assert _stored_ids(warehouse) == {"g1"}
