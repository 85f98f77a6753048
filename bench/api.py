"""Collector throughput: sustained POST /api/kpi/events over loopback.

  python bench/api.py [--seconds 20] [--batch 1000] [--clients 4] [--workers 1] [--postgres URL]

1. generates synthetic AutoDescribe traffic and builds request bodies of `--batch` events
   (JSON lists), every event id unique (so acknowledged == stored is checkable);
2. starts `kpi serve` (`python -m kpi_pipelines.api`) on a free loopback port against a new
   DuckDB warehouse and landing directory (or PostgreSQL with --postgres);
3. `--clients` threads post the bodies back to back on keep-alive connections for
   `--seconds`, recording each request's latency and the 202's counts;
4. DuckDB: stops the server and loads every landing file with the event loader (as the
   landing sensor's runs do), then counts `raw_events`; PostgreSQL: counts the schema's
   `raw_events`. Acknowledged (sum of `accepted`) must equal stored.

Targets (README): >= 20,000 events/s, p99 <= 250 ms on the 2-core reference machine.
Results go to stdout and bench/out/api.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_bodies(workdir: Path, batch: int, batches: int) -> tuple[list[bytes], int]:
    import orjson

    from kpi_pipelines.synthetic import generate

    traffic = generate(workdir / "traffic", days=2, sessions=4000, seed=7, start=dt.date(2026, 3, 1))
    templates = []
    with open(traffic.events_path, "rb") as handle:
        for line in handle:
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict):
                templates.append(value)
    bodies, n = [], 0
    for b in range(batches):
        events = []
        for _ in range(batch):
            event = dict(templates[n % len(templates)])
            event["id"] = f"bench-{n}"
            events.append(event)
            n += 1
        bodies.append(orjson.dumps(events))
    return bodies, len(templates)


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status in (200, 503):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def run_clients(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
    lock = threading.Lock()
    state = {"next": 0}
    latencies: list[float] = []
    timing: dict[str, list[float]] = {}  # the server's own Server-Timing, per phase
    totals = {"requests": 0, "accepted": 0, "duplicates": 0, "rejected": 0, "errors": 0, "events": 0}
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json", "X-API-Key": KEY}
        while time.perf_counter() < stop_at:
            with lock:
                index = state["next"]
                state["next"] += 1
            if index >= len(bodies):
                return
            started = time.perf_counter()
            conn.request("POST", "/api/kpi/events", body=bodies[index], headers=headers)
            response = conn.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                totals["requests"] += 1
                for part in (response.getheader("Server-Timing") or "").split(","):
                    name, _, duration = part.strip().partition(";dur=")
                    if duration:
                        timing.setdefault(name, []).append(float(duration))
                if response.status == 202:
                    counts = json.loads(payload)
                    totals["accepted"] += counts["accepted"]
                    totals["duplicates"] += counts["duplicates"]
                    totals["rejected"] += len(counts["rejected"])
                    totals["events"] += counts["accepted"] + counts["duplicates"] + len(counts["rejected"])
                else:
                    totals["errors"] += 1
                    print(f"HTTP {response.status}: {payload[:200]!r}", file=sys.stderr)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies.sort()
    q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000
    return {
        **totals,
        "seconds": round(wall, 2),
        "events_per_second": round(totals["events"] / wall),
        "latency_ms": {
            "p50": round(q(0.50), 1),
            "p95": round(q(0.95), 1),
            "p99": round(q(0.99), 1),
            "max": round(latencies[-1] * 1000, 1),
            "mean": round(statistics.mean(latencies) * 1000, 1),
        },
        "server_timing_mean_ms": {name: round(statistics.mean(values), 1) for name, values in timing.items()},
        "server_timing_p99_ms": {
            name: round(sorted(values)[min(len(values) - 1, int(0.99 * len(values)))], 1) for name, values in timing.items()
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--postgres", default=None, help="PostgreSQL URL (a fresh schema is used and dropped)")
    parser.add_argument("--max-events", type=int, default=1_200_000, help="bodies prepared (events)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="kpi-bench-api-"))
    batches = max(1, args.max_events // args.batch)
    print(f"preparing {batches} bodies of {args.batch} events in {workdir} ...", flush=True)
    bodies, _ = build_bodies(workdir, args.batch, batches)

    schema = None
    if args.postgres:
        schema = "bench_" + uuid.uuid4().hex[:10]
        url = args.postgres
    else:
        url = f"duckdb:///{workdir / 'warehouse.duckdb'}"
    landing = workdir / "landing"
    port = free_port()
    env = {
        **os.environ,
        "KPI_WAREHOUSE_URL": url,
        "KPI_WAREHOUSE_SCHEMA": schema or "",
        "KPI_LANDING_DIR": str(landing),
        "KPI_API_KEYS": KEY,
        "KPI_PII_SALT": "bench-salt",
        "KPI_API_RATE_PER_SECOND": "100000",
        "KPI_API_RATE_BURST": "100000",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "kpi_pipelines.api", "--port", str(port), "--workers", str(args.workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_ready(port, server)
        print(f"posting for {args.seconds:g} s with {args.clients} clients to {args.workers} worker(s) ...", flush=True)
        result = run_clients(port, bodies, args.clients, args.seconds)
    finally:
        server.terminate()
        server.wait(timeout=60)

    from kpi_pipelines.ingestion.loader import EventLoader
    from kpi_pipelines.warehouse import Warehouse

    warehouse = Warehouse(url, schema)
    if not args.postgres:
        files = sorted(p for p in landing.iterdir() if p.name.endswith(".ndjson") and not p.name.startswith("."))
        started = time.perf_counter()
        loader = EventLoader(warehouse, "bench-salt")
        for path in files:
            loader.load_file(path)
        result["landing_files"] = len(files)
        result["ingest_seconds"] = round(time.perf_counter() - started, 2)
    stored = warehouse.scalar("SELECT count(*) FROM raw_events")
    rejected_stored = warehouse.scalar("SELECT count(*) FROM rejected_events")
    warehouse.dispose()
    if schema:
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()
    result.update(
        backend="postgresql" if args.postgres else "duckdb",
        batch=args.batch,
        clients=args.clients,
        workers=args.workers,
        cpus=os.cpu_count(),
        stored=stored,
        rejected_stored=rejected_stored,
        acknowledged_equals_stored=stored == result["accepted"],
    )
    OUT.mkdir(exist_ok=True)
    (OUT / "api.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = result["acknowledged_equals_stored"] and result["errors"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
