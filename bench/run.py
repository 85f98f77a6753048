"""`make bench`: ingest and materialize speed as ratios to a baseline measured in the same run.

  python bench/run.py [--sessions 10000] [--days 7] [--repeat 3] [--postgres URL]

1. generates a week of synthetic traffic (about 1,000,000 events with the defaults);
2. baseline: DuckDB's own `read_json` loading the file into a table of a new database file
   (with `ignore_errors`, since the file holds the generator's deliberately broken lines);
3. `kpi ingest` of the same file into a new DuckDB warehouse: time ÷ baseline, peak memory;
4. with --postgres (or KPI_TEST_POSTGRES_URL): the ingest into PostgreSQL ÷ a plain `COPY` of
   the same file into a one-column table;
5. `kpi materialize` of the week (every asset and check) ÷ the same baseline.

Each measured step runs in a fresh child process, timed around the work alone (imports and
start-up excluded) and reporting its own peak resident memory. Steps 2 and 3 run as
`--repeat` alternating pairs, each into a new database, and the ratio is the median ingest
time over the median baseline (a single pair varies by about 10% on a shared machine); the
peak memory is the largest seen. Results go to stdout and to bench/out/results.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_read_json(events: str, workdir: str) -> dict:
    import duckdb

    connection = duckdb.connect(str(Path(workdir) / "baseline.duckdb"))
    started = time.perf_counter()
    # ignore_errors: the file holds the generator's deliberately broken lines, which read_json
    # cannot load otherwise (it skips them; the loader keeps them as rejects)
    connection.execute(
        "CREATE TABLE events AS SELECT * FROM read_json(?, format = 'newline_delimited', ignore_errors = true)", [events]
    )
    seconds = time.perf_counter() - started
    rows = connection.execute("SELECT count(*) FROM events").fetchone()[0]
    connection.close()
    return {"seconds": seconds, "rows": rows, "peak_mib": _peak_mib()}


def step_ingest(events: str, url: str, schema: str) -> dict:
    from kpi_pipelines.ingestion.loader import EventLoader
    from kpi_pipelines.warehouse import Warehouse

    warehouse = Warehouse(url, schema or None)
    warehouse.scalar("SELECT 1")  # open and migrate before timing
    started = time.perf_counter()
    result = EventLoader(warehouse, "bench-salt").load_file(events)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "rejected": result.rejected,
        "peak_mib": _peak_mib(),
    }


def step_copy(events: str, url: str) -> dict:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        with connection.cursor() as cursor:
            cursor.execute("CREATE TEMP TABLE lines (line TEXT)")
            started = time.perf_counter()
            # one column, no quoting or escapes: the line as it is
            with cursor.copy("COPY lines FROM STDIN (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')") as copy:
                with open(events, "rb") as handle:
                    while chunk := handle.read(1 << 20):
                        copy.write(chunk)
            seconds = time.perf_counter() - started
            cursor.execute("SELECT count(*) FROM lines")
            rows = cursor.fetchone()[0]
    return {"seconds": seconds, "rows": rows, "peak_mib": _peak_mib()}


def step_materialize(url: str, start: str, end: str, home: str, catalog: str, judgments: str) -> dict:
    os.environ["DAGSTER_HOME"] = home
    os.environ["KPI_WAREHOUSE_URL"] = url
    from kpi_pipelines.cli import materialize
    from kpi_pipelines.ingestion.catalog import load_catalog, load_judgments
    from kpi_pipelines.warehouse import Warehouse

    warehouse = Warehouse(url)
    load_catalog(warehouse, catalog)
    load_judgments(warehouse, judgments)
    started = time.perf_counter()
    materialize(dt.date.fromisoformat(start), dt.date.fromisoformat(end))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_mib": _peak_mib()}


STEPS = {
    "read_json": step_read_json,
    "ingest": step_ingest,
    "copy": step_copy,
    "materialize": step_materialize,
}


def _median_run(runs: list[dict]) -> dict:
    """The run of median time, with the largest peak memory of all the runs."""
    ordered = sorted(runs, key=lambda run: run["seconds"])
    return {**ordered[len(ordered) // 2], "peak_mib": max(run["peak_mib"] for run in runs), "runs": len(runs)}


def run_step(name: str, *args: str) -> dict:
    """Run one step in a fresh interpreter; it prints its result as JSON on the last line."""
    output = subprocess.run(
        [sys.executable, __file__, "--step", name, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


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
            ingests.append(run_step("ingest", events, warehouse_url, ""))
        results["read_json"] = baseline = _median_run(baselines)
        results["ingest_duckdb"] = ingest = _median_run(ingests)
        ingest["ratio"] = ingest["seconds"] / baseline["seconds"]
        ingest["pair_ratios"] = [round(i["seconds"] / b["seconds"], 3) for b, i in zip(baselines, ingests)]
        print(f"baseline  DuckDB read_json into a table: {baseline['seconds']:.2f} s (median of {args.repeat})")
        print(f"kpi ingest (DuckDB): {ingest['seconds']:.2f} s = {ingest['ratio']:.2f} x read_json "
              f"(pairs: {', '.join(f'{r:.2f}' for r in ingest['pair_ratios'])}), "
              f"peak {ingest['peak_mib']:,.0f} MiB ({ingest['accepted']:,} accepted, "
              f"{ingest['duplicates']:,} duplicates, {ingest['rejected']:,} rejected)")

        if args.postgres:
            schema = f"bench_{os.getpid()}"
            results["copy_postgres"] = copy = run_step("copy", events, args.postgres)
            results["ingest_postgres"] = pg = run_step("ingest", events, args.postgres, schema)
            pg["ratio"] = pg["seconds"] / copy["seconds"]
            print(f"plain COPY into PostgreSQL: {copy['seconds']:.2f} s")
            print(f"kpi ingest (PostgreSQL): {pg['seconds']:.2f} s = {pg['ratio']:.2f} x COPY, peak {pg['peak_mib']:,.0f} MiB")
            import sqlalchemy as sa

            engine = sa.create_engine(args.postgres)
            with engine.begin() as connection:
                connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            engine.dispose()

        if not args.skip_materialize:
            results["materialize_duckdb"] = mat = run_step(
                "materialize", warehouse_url, start.isoformat(), end.isoformat(), str(Path(workdir) / "home"),
                str(traffic.catalog_path), str(traffic.judgments_path),
            )
            mat["ratio"] = mat["seconds"] / baseline["seconds"]
            print(f"kpi materialize {start}..{end} (DuckDB): {mat['seconds']:.2f} s = {mat['ratio']:.2f} x read_json, "
                  f"peak {mat['peak_mib']:,.0f} MiB")

    results["events"] = {"count": traffic.events, "days": args.days, "sessions_per_day": args.sessions}
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
