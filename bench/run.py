"""`make bench`: start-up, ingest and materialize speed as ratios to baselines measured in the same run.

  python bench/run.py [--sessions 10000] [--days 7] [--repeat 3] [--postgres URL]

1. start-up: `kpi --help`, and `kpi ingest` of a one-line file into a DuckDB warehouse, each ÷
   a process that only imports duckdb and sqlalchemy (medians of STARTUP_RUNS alternating runs);
2. generates a week of synthetic traffic (about 1,000,000 events with the defaults);
3. baseline: a process running DuckDB's own `read_json` of the file into a table of a new
   database file (with `ignore_errors`: the file holds the generator's deliberately broken lines);
4. `kpi ingest` of the same file into a new DuckDB warehouse: time ÷ baseline, peak memory;
   its counts are checked against what the generator wrote (broken and repeated lines);
5. with --postgres (or KPI_TEST_POSTGRES_URL): `kpi ingest` into PostgreSQL ÷ a process
   running a plain `COPY` of the same file into a one-column table;
6. `kpi materialize` of the week (every asset and check) ÷ the same baseline, then the
   profile of that run (each step's seconds, from the run's event log) and a check of its
   results: row counts and KPI values per day (events, queries, orders, revenue; stg_events'
   rows) equal to references computed from raw_events by independent queries; a mismatch
   fails the benchmark.

Every figure is a whole process, timed from its start to its exit as a person running the
command waits for it (start-up and imports included), with its own peak resident memory
(the kernel's accounting of that one child). Steps 3 and 4 run as `--repeat` alternating
pairs, each into a new database, and the ratio is the median ingest time over the median
baseline (a single pair varies by about 10% on a shared machine); the peak memory is the
largest seen. Results go to stdout and to bench/out/results.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
KPI = str(Path(sys.executable).with_name("kpi"))
STARTUP_RUNS = 5
# kpi ingest's line for a file: "<file>: N accepted, N duplicates, N rejected"
INGEST_COUNTS = re.compile(r": (\d+) accepted, (\d+) duplicates, (\d+) rejected$", re.MULTILINE)


def step_read_json(events: str, workdir: str) -> dict:
    import duckdb

    connection = duckdb.connect(str(Path(workdir) / "baseline.duckdb"))
    # ignore_errors: the file holds the generator's deliberately broken lines, which read_json
    # cannot load otherwise (it skips them; the loader keeps them as rejects)
    connection.execute(
        "CREATE TABLE events AS SELECT * FROM read_json(?, format = 'newline_delimited', ignore_errors = true)", [events]
    )
    rows = connection.execute("SELECT count(*) FROM events").fetchone()[0]
    connection.close()
    return {"rows": rows}


def step_copy(events: str, url: str) -> dict:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        with connection.cursor() as cursor:
            cursor.execute("CREATE TEMP TABLE lines (line TEXT)")
            # one column, no quoting or escapes: the line as it is
            with cursor.copy("COPY lines FROM STDIN (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')") as copy:
                with open(events, "rb") as handle:
                    while chunk := handle.read(1 << 20):
                        copy.write(chunk)
            cursor.execute("SELECT count(*) FROM lines")
            rows = cursor.fetchone()[0]
    return {"rows": rows}


def step_references(url: str, catalog: str, judgments: str) -> dict:
    """The catalog and judgments the KPI assets read, loaded before the measured run."""
    from kpi_pipelines.ingestion.catalog import load_catalog, load_judgments
    from kpi_pipelines.warehouse import Warehouse

    warehouse = Warehouse(url)
    load_catalog(warehouse, catalog)
    load_judgments(warehouse, judgments)
    return {}


def step_profile(home: str) -> dict:
    """Seconds of each step of the instance's latest run (its event log: step start to
    success or failure), in the order the steps started."""
    os.environ["DAGSTER_HOME"] = home
    from dagster import DagsterEventType, DagsterInstance

    with DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        started: dict[str, float] = {}
        ended: dict[str, float] = {}
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is None:
                continue
            if event.event_type == DagsterEventType.STEP_START:
                started[event.step_key] = record.timestamp
            elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                ended[event.step_key] = record.timestamp
        times = [record.timestamp for record in instance.all_logs(run.run_id)]
    steps = {key: round(ended.get(key, at) - at, 3) for key, at in sorted(started.items(), key=lambda item: item[1])}
    return {"run_id": run.run_id, "status": run.status.value, "run_seconds": round(times[-1] - times[0], 3), "steps": steps}


def step_verify(url: str, start: str, end: str) -> dict:
    """The run's results against references computed here from raw_events by independent
    queries (not by the dbt models or the KPI assets): row counts and a few KPI values per
    day. Returns each comparison and the mismatches."""
    import duckdb

    connection = duckdb.connect(url.removeprefix("duckdb:///"), read_only=True)
    window = [dt.date.fromisoformat(start), dt.date.fromisoformat(end) + dt.timedelta(days=1)]

    def rows(sql: str) -> dict:
        return {key: value for key, value in connection.execute(sql, window).fetchall()}

    def day_metric(relation: str, name: str) -> dict:
        return rows(
            f"SELECT CAST(\"timestamp\" AS DATE), metric_value FROM {relation} WHERE metric_name = '{name}' "
            "AND dimensions = '{}' AND aggregation_level = 'day' AND \"timestamp\" >= ? AND \"timestamp\" < ?"
        )

    events = "FROM raw_events WHERE event_date >= ? AND event_date < ?"
    orders = "event_type = 'business' AND action = 'order'"
    comparisons = {
        "stg_events rows": (
            rows("SELECT 'window', count(*) FROM stg_events WHERE event_time >= ? AND event_time < ?"),
            rows(f"SELECT 'window', count(DISTINCT event_id) {events}"),
        ),
        "rollup_events_day events.count": (
            day_metric("rollup_events_day", "events.count"), rows(f"SELECT event_date, count(*) {events} GROUP BY 1")
        ),
        "rollup_events_hour events.count, summed per day": (
            rows("SELECT CAST(\"timestamp\" AS DATE), sum(metric_value) FROM rollup_events_hour WHERE "
                 "metric_name = 'events.count' AND dimensions = '{}' AND \"timestamp\" >= ? AND \"timestamp\" < ? GROUP BY 1"),
            rows(f"SELECT event_date, count(*) {events} GROUP BY 1"),
        ),
        "kpi_metrics_all search.queries (Python asset)": (
            day_metric("kpi_metrics_all", "search.queries"),
            rows(f"SELECT event_date, count(*) {events} AND event_type = 'search' AND action = 'query' GROUP BY 1"),
        ),
        "kpi_metrics_all business.orders": (
            day_metric("kpi_metrics_all", "business.orders"), rows(f"SELECT event_date, count(*) {events} AND {orders} GROUP BY 1")
        ),
        "rollup_events_day business.revenue": (
            day_metric("rollup_events_day", "business.revenue"),
            rows(f"SELECT event_date, sum(CAST(metadata->>'revenue' AS DECIMAL(38, 9))) {events} AND {orders} GROUP BY 1"),
        ),
    }
    connection.close()
    results, mismatches = {}, []
    for name, (measured, reference) in comparisons.items():
        same = measured.keys() == reference.keys() and all(
            abs(float(measured[key]) - float(reference[key])) <= 1e-6 * max(1.0, abs(float(reference[key]))) for key in reference
        )
        results[name] = {"values": len(reference), "total": float(sum(map(float, reference.values()))), "equal": same}
        if not same or not reference:
            mismatches.append({"check": name, "measured": {str(k): float(v) for k, v in measured.items()},
                               "reference": {str(k): float(v) for k, v in reference.items()}})
    return {"comparisons": results, "mismatches": mismatches}


STEPS = {
    "read_json": step_read_json,
    "copy": step_copy,
    "references": step_references,
    "profile": step_profile,
    "verify": step_verify,
}


def _median_run(runs: list[dict]) -> dict:
    """The run of median time, with the largest peak memory of all the runs."""
    ordered = sorted(runs, key=lambda run: run["seconds"])
    return {**ordered[len(ordered) // 2], "peak_mib": max(run["peak_mib"] for run in runs), "runs": len(runs)}


def whole_process(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> dict:
    """Run a command to its exit: its wall time from start to exit, its CPU time (user + sys:
    the comparable figure on a shared machine) and its peak resident memory (wait4: that
    child's own, not the largest of all children so far), and its output."""
    with tempfile.TemporaryFile() as output:
        started = time.perf_counter()
        process = subprocess.Popen(argv, env={**os.environ, **(env or {})}, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read().decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} exited with {process.returncode}:\n{text[-3000:]}")
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024,
            "output": text}


def run_step(name: str, *args: str) -> dict:
    """One step of this file as a whole process; the step prints its result as JSON on its last line."""
    run = whole_process([sys.executable, __file__, "--step", name, *args])
    reported = json.loads(run["output"].strip().splitlines()[-1])
    work = {"work_seconds": reported.pop("seconds")} if "seconds" in reported else {}  # a step timing its own work
    return {**reported, **work, "seconds": run["seconds"], "cpu_seconds": run["cpu_seconds"], "peak_mib": run["peak_mib"]}


def kpi_ingest(events: str, url: str, schema: str, workdir: str) -> dict:
    """`kpi ingest` of one file as a whole process, with the counts it printed. Run in `workdir`
    so that no `.env` of the repository changes its settings."""
    env = {"KPI_WAREHOUSE_URL": url, "KPI_WAREHOUSE_SCHEMA": schema, "KPI_PII_SALT": "bench-salt"}
    run = whole_process([KPI, "ingest", events], env, cwd=workdir)
    accepted, duplicates, rejected = map(int, INGEST_COUNTS.findall(run["output"])[-1])
    return {"seconds": run["seconds"], "cpu_seconds": run["cpu_seconds"], "peak_mib": run["peak_mib"],
            "accepted": accepted, "duplicates": duplicates, "rejected": rejected}


def one_line_file(path: Path, number: int) -> str:
    """A file of one valid event, its id new with each `number` (each ingest inserts a row)."""
    path.write_text(json.dumps({
        "id": f"startup-{number}", "type": "search", "timestamp": "2026-03-02T12:00:00Z", "session_id": "s-1",
        "user_id": "u-1", "source": "api",
        "metadata": {"action": "query", "query_id": f"q-{number}", "query": "red shoes", "result_ids": ["P1"],
                     "response_time_ms": 120},
    }) + "\n")
    return str(path)


def measure_startup(workdir: Path) -> dict[str, dict]:
    """`kpi --help` and a one-line `kpi ingest` (into a migrated warehouse) ÷ a process that
    imports duckdb and sqlalchemy: medians of STARTUP_RUNS runs, alternating."""
    workdir.mkdir()
    url = f"duckdb:///{workdir / 'warehouse.duckdb'}"
    kpi_ingest(one_line_file(workdir / "first.jsonl", 0), url, "", str(workdir))  # creates and migrates
    runs: dict[str, list[float]] = {"imports": [], "help": [], "ingest_one_line": []}
    for number in range(1, STARTUP_RUNS + 1):
        runs["imports"].append(whole_process([sys.executable, "-c", "import duckdb, sqlalchemy"])["seconds"])
        runs["help"].append(whole_process([KPI, "--help"], cwd=str(workdir))["seconds"])
        ingest = kpi_ingest(one_line_file(workdir / f"line-{number}.jsonl", number), url, "", str(workdir))
        assert ingest["accepted"] == 1, ingest
        runs["ingest_one_line"].append(ingest["seconds"])
    base = statistics.median(runs["imports"])
    results = {"imports": {"seconds": base, "runs": runs["imports"]}}
    for name in ("help", "ingest_one_line"):
        seconds = statistics.median(runs[name])
        results[name] = {"seconds": seconds, "ratio": seconds / base, "runs": runs[name]}
    return results


def measure_materialize(url: str, start: dt.date, end: dt.date, workdir: Path, catalog: str, judgments: str) -> dict:
    """`kpi materialize` of start..end as a whole process (run in `workdir`, away from the
    repository's .env), then the profile of its run and the check of its results."""
    run_step("references", url, catalog, judgments)
    home = workdir / "home"
    home.mkdir()
    env = {"DAGSTER_HOME": str(home), "KPI_WAREHOUSE_URL": url, "KPI_WAREHOUSE_SCHEMA": "", "KPI_PII_SALT": "bench-salt"}
    run = whole_process([KPI, "materialize", "--start", start.isoformat(), "--end", end.isoformat()], env, cwd=str(workdir))
    profile = run_step("profile", str(home))
    verify = run_step("verify", url, start.isoformat(), end.isoformat())
    return {"seconds": run["seconds"], "cpu_seconds": run["cpu_seconds"], "peak_mib": run["peak_mib"],
            "profile": {key: profile[key] for key in ("run_id", "status", "run_seconds", "steps")},
            "verify": {key: verify[key] for key in ("comparisons", "mismatches")}}


def print_profile(materialized: dict) -> None:
    """The run's steps, longest first, with their share of the process's time."""
    profile, total = materialized["profile"], materialized["seconds"]
    steps = profile["steps"]
    print(f"  profile of run {profile['run_id']} ({profile['status']}): {profile['run_seconds']:.2f} s from its first "
          f"to its last event, {total - profile['run_seconds']:.2f} s before and after (start-up, loading the definitions)")
    for key, seconds in sorted(steps.items(), key=lambda item: -item[1]):
        print(f"    {key:<32} {seconds:7.2f} s  {100 * seconds / total:5.1f} %")
    for name, comparison in materialized["verify"]["comparisons"].items():
        print(f"  check: {name}: {'equal' if comparison['equal'] else 'DIFFERENT'} to the reference "
              f"({comparison['values']} value(s), total {comparison['total']:,.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10000, help="sessions per day")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--postgres", default=os.environ.get("KPI_TEST_POSTGRES_URL", ""))
    parser.add_argument("--repeat", type=int, default=3, help="baseline/ingest pairs (the median is reported)")
    parser.add_argument("--skip-materialize", action="store_true")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.step:
        print(json.dumps(STEPS[args.step](*rest)))
        return 0

    from kpi_pipelines.synthetic import generate

    OUT.mkdir(exist_ok=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="kpi-bench-") as workdir:
        results["startup"] = startup = measure_startup(Path(workdir) / "startup")
        print(f"python -c 'import duckdb, sqlalchemy': {startup['imports']['seconds']:.2f} s (median of {STARTUP_RUNS})")
        for name, label in (("help", "kpi --help"), ("ingest_one_line", "kpi ingest of a one-line file")):
            print(f"{label}: {startup[name]['seconds']:.2f} s = {startup[name]['ratio']:.2f} x the imports")

        start = dt.date(2026, 3, 2)
        end = start + dt.timedelta(days=args.days - 1)
        began = time.perf_counter()
        traffic = generate(Path(workdir) / "traffic", days=args.days, sessions=args.sessions, seed=7, start=start)
        events = str(traffic.events_path)
        print(f"generated {traffic.events:,} events ({Path(events).stat().st_size / 2**20:,.0f} MiB) "
              f"in {time.perf_counter() - began:.1f} s")

        baselines, ingests = [], []
        for attempt in range(args.repeat):
            attempt_dir = Path(workdir) / f"attempt-{attempt}"
            attempt_dir.mkdir()
            baselines.append(run_step("read_json", events, str(attempt_dir)))
            warehouse_url = f"duckdb:///{attempt_dir}/warehouse.duckdb"
            ingests.append(kpi_ingest(events, warehouse_url, "", str(attempt_dir)))
        results["read_json"] = baseline = _median_run(baselines)
        results["ingest_duckdb"] = ingest = _median_run(ingests)
        ingest["ratio"] = ingest["seconds"] / baseline["seconds"]
        ingest["pair_ratios"] = [round(i["seconds"] / b["seconds"], 3) for b, i in zip(baselines, ingests)]
        ingest["cpu_ratio"] = statistics.median(i["cpu_seconds"] for i in ingests) / statistics.median(
            b["cpu_seconds"] for b in baselines)
        # the loader's counts are the generator's: every broken line rejected, every repeat a duplicate
        expected = (traffic.events - traffic.bad_lines - traffic.duplicate_lines, traffic.duplicate_lines, traffic.bad_lines)
        for run in ingests:
            assert (run["accepted"], run["duplicates"], run["rejected"]) == expected, (run, expected)
        print(f"baseline: a process running DuckDB read_json into a table: {baseline['seconds']:.2f} s "
              f"(median of {args.repeat}), peak {baseline['peak_mib']:,.0f} MiB")
        print(f"kpi ingest (DuckDB): {ingest['seconds']:.2f} s = {ingest['ratio']:.2f} x read_json "
              f"(pairs: {', '.join(f'{r:.2f}' for r in ingest['pair_ratios'])}), "
              f"peak {ingest['peak_mib']:,.0f} MiB ({ingest['accepted']:,} accepted, "
              f"{ingest['duplicates']:,} duplicates, {ingest['rejected']:,} rejected); "
              f"CPU time {ingest['cpu_ratio']:.2f} x read_json's")

        if args.postgres:
            schema = f"bench_{os.getpid()}"
            results["copy_postgres"] = copy = run_step("copy", events, args.postgres)
            results["ingest_postgres"] = pg = kpi_ingest(events, args.postgres, schema, workdir)
            assert (pg["accepted"], pg["duplicates"], pg["rejected"]) == expected, (pg, expected)
            pg["ratio"] = pg["seconds"] / copy["seconds"]
            print(f"plain COPY into PostgreSQL: {copy['seconds']:.2f} s")
            print(f"kpi ingest (PostgreSQL): {pg['seconds']:.2f} s = {pg['ratio']:.2f} x COPY, peak {pg['peak_mib']:,.0f} MiB")
            import sqlalchemy as sa

            engine = sa.create_engine(args.postgres)
            with engine.begin() as connection:
                connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            engine.dispose()

        if not args.skip_materialize:
            results["materialize_duckdb"] = mat = measure_materialize(
                warehouse_url, start, end, Path(workdir), str(traffic.catalog_path), str(traffic.judgments_path)
            )
            mat["ratio"] = mat["seconds"] / baseline["seconds"]
            mat["cpu_ratio"] = mat["cpu_seconds"] / statistics.median(b["cpu_seconds"] for b in baselines)
            print(f"kpi materialize {start}..{end} (DuckDB): {mat['seconds']:.2f} s = {mat['ratio']:.2f} x read_json "
                  f"(CPU {mat['cpu_ratio']:.2f} x), peak {mat['peak_mib']:,.0f} MiB")
            print_profile(mat)
            if mat["verify"]["mismatches"]:
                (OUT / "results.json").write_text(json.dumps(results, indent=2, default=str))
                raise SystemExit(f"bench: the measured run's results differ from the references: {mat['verify']['mismatches']}")

    results["events"] = {"count": traffic.events, "days": args.days, "sessions_per_day": args.sessions}
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
