"""The `kpi` command (README: "Command line"). Every error is one line on stderr and a
non-zero exit; set KPI_DEBUG=1 to see the traceback as well."""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

from kpi_pipelines.settings import Settings, setting


class UsageError(Exception):
    """Bad input on the command line: exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        raise UsageError(message)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _output_dir(name: str) -> Path:
    """--out DIR: a directory, created if missing; a UsageError if it names something else."""
    if Path(name).exists() and not Path(name).is_dir():
        raise UsageError(f"--out {name}: exists and is not a directory")
    return Path(name)


def cmd_generate(args: argparse.Namespace) -> int:
    from kpi_pipelines.synthetic import generate

    traffic = generate(_output_dir(args.out), days=args.days, sessions=args.sessions, seed=args.seed, start=args.start)
    print(
        f"wrote {traffic.events} events ({traffic.bad_lines} invalid and {traffic.duplicate_lines} repeated on purpose) "
        f"to {traffic.events_path}\nwrote {traffic.products} products to {traffic.catalog_path}\n"
        f"wrote {traffic.judgments} judgments to {traffic.judgments_path}"
    )
    return 0


def ingest_files(settings: Settings, files: Sequence[str]) -> tuple[int, int, int]:
    from kpi_pipelines.first_day import before_first_day, early_events_note
    from kpi_pipelines.ingestion.loader import EventLoader

    loader = EventLoader(settings.warehouse(), settings.pii_salt)
    totals = [0, 0, 0]
    for name in files:
        result = loader.load_file(name, require_json_lines=True)
        print(f"{name}: {result.accepted} accepted, {result.duplicates} duplicates, {result.rejected} rejected")
        early = before_first_day(result.events_by_date)
        if early:
            print(f"kpi: warning: {name}: {early_events_note(early)}", file=sys.stderr)
        totals = [totals[0] + result.accepted, totals[1] + result.duplicates, totals[2] + result.rejected]
    if len(files) > 1:
        print(f"total: {totals[0]} accepted, {totals[1]} duplicates, {totals[2]} rejected")
    return totals[0], totals[1], totals[2]


def event_files(names: Sequence[str]) -> list[str]:
    """The files to ingest: each name as given, a directory as its event files (the names the
    landing directory takes: *.jsonl, *.jsonl.gz, *.ndjson, *.ndjson.gz; not hidden, not in
    subdirectories) in name order."""
    from kpi_pipelines.ingestion.loader import EVENT_FILE_SUFFIXES, IngestError

    files: list[str] = []
    for name in names:
        if not Path(name).is_dir():
            files.append(name)
            continue
        found = sorted(
            str(path) for path in Path(name).iterdir()
            if path.is_file() and not path.name.startswith(".") and path.name.endswith(EVENT_FILE_SUFFIXES)
        )
        if not found:
            raise IngestError(f"{name}: a directory without event files ({', '.join('*' + s for s in EVENT_FILE_SUFFIXES)})")
        files += found
    return files


def cmd_ingest(args: argparse.Namespace) -> int:
    files = event_files(args.files)
    ingest_files(Settings.from_env(warn_salt=True), files)
    return 0


def _load_reference(args: argparse.Namespace, kind: str) -> int:
    from kpi_pipelines.ingestion.catalog import load_catalog, load_judgments

    loader = load_catalog if kind == "catalog" else load_judgments
    result = loader(Settings.from_env().warehouse(), args.file, allow_rejects=args.allow_rejects)
    for problem in result.problems[:50]:
        print(f"{args.file}: line {problem.line}: {problem.reason}", file=sys.stderr)
    if len(result.problems) > 50:
        print(f"{args.file}: ... and {len(result.problems) - 50} more bad rows", file=sys.stderr)
    if result.problems and not args.allow_rejects:
        print(
            f"kpi: error: {args.file}: {len(result.problems)} bad row(s); nothing loaded "
            "(fix them, or pass --allow-rejects to load the good rows)",
            file=sys.stderr,
        )
        return 1
    table = "products" if kind == "catalog" else "relevance judgments"
    print(f"{args.file}: loaded {result.loaded} {table}" + (f", skipped {len(result.problems)} bad rows" if result.problems else ""))
    return 0


# the Dagster workspace of `make dev` (the repository's root, beside this package)
WORKSPACE_FILE = Path(__file__).resolve().parent.parent / "workspace.yaml"


def dagster_home() -> Path:
    """The Dagster instance directory (DAGSTER_HOME), created with the local instance config."""
    home = Path(setting("DAGSTER_HOME")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text((Path(__file__).parent / "defaults" / "dagster_home.yaml").read_text())
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def materialize(start: dt.date, end: dt.date, definitions: Any = None) -> Any:
    """Run the whole asset graph for the days start..end (both included) as one run of
    `daily_assets_job` on the instance in DAGSTER_HOME, in this process. The days are checked
    against the job's partitions before any run exists. The run is recorded as a run of the
    workspace's code location (workspace.yaml), as a schedule's or sensor's run is, so `make
    dev` lists it on the job's page and draws it on the timeline (docs/decisions.md)."""
    if definitions is None:
        from kpi_pipelines.definitions import defs as definitions

    check_days(definitions, start, end)
    job = definitions.resolve_job_def("daily_assets_job")
    dagster_home()
    from dagster import DagsterInstance, in_process_executor
    from dagster._core.definitions.job_base import InMemoryJob  # private: see _workspace_job_origin
    from dagster._core.execution.api import execute_run

    # in this process on both backends, as execute_in_process ran it (a job built from a
    # Definitions object here cannot be reloaded by other processes)
    in_process_job = job.with_executor_def(in_process_executor)
    with DagsterInstance.get() as instance:
        run = instance.create_run_for_job(
            job_def=in_process_job,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            tags={
                **job.run_tags,
                "dagster/asset_partition_range_start": start.isoformat(),
                "dagster/asset_partition_range_end": end.isoformat(),
                "kpi/trigger": "cli",
            },
            remote_job_origin=_workspace_job_origin(definitions.get_repository_def().name, job.name),
        )
        result = execute_run(InMemoryJob(in_process_job), run, instance)
        if not result.success:
            failures = [event for event in result.all_events if event.is_step_failure]
            data = failures[0].event_specific_data if failures else None
            # a step's final failure (kpi_pipelines.retries) describes its cause itself
            described = data.user_failure_data.description if data and data.user_failure_data else None
            detail = described or (data.error.message.strip().splitlines()[0] if data else "see the run's logs")
            raise RuntimeError(f"run {result.run_id} failed: {detail}")
        return result


def check_days(definitions: Any, start: dt.date, end: dt.date) -> None:
    """A UsageError unless start..end is a range of `daily_assets_job`'s partitions (its first
    day .. today), read from the definitions being run."""
    if end < start:
        raise UsageError(f"--end {end} is before --start {start}")
    partitions_def = definitions.resolve_job_def("daily_assets_job").partitions_def
    first = dt.date.fromisoformat(partitions_def.get_first_partition_key())
    last = dt.date.fromisoformat(partitions_def.get_last_partition_key())
    if start < first:
        raise UsageError(f"--start {start} is before the first partition, {first}")
    if start > last:
        raise UsageError(f"--start {start} is after today's partition, {last}")
    if end > last:
        raise UsageError(f"--end {end} is after today's partition, {last}")


def _workspace_job_origin(repository_name: str, job_name: str) -> Any:
    """Where `make dev` finds `job_name`: workspace.yaml's code location, `repository_name`.
    The UI lists a job's runs by this origin (its `.dagster/repository` tag) and draws only
    runs that have one on the timeline. Dagster sets it only on runs it launches from a
    loaded workspace; no public API reads a workspace file or creates a run with an origin
    for an in-process execution, hence the private imports here and in `materialize`."""
    from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.workspace.load import location_origins_from_yaml_paths

    (location,) = location_origins_from_yaml_paths([str(WORKSPACE_FILE)])
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, repository_name), job_name)


def cmd_materialize(args: argparse.Namespace) -> int:
    from kpi_pipelines.definitions import defs

    end = args.end or args.start
    check_days(defs, args.start, end)  # before the warehouse is opened (and migrated)
    Settings.from_env().warehouse().engine  # an unreachable warehouse is one line, before any run
    result = materialize(args.start, end, defs)
    print(f"materialized {args.start}..{end} in run {result.run_id} (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
    return 0


def cmd_landing_list(args: argparse.Namespace) -> int:
    from kpi_pipelines.ingestion.quarantine import list_quarantined

    landing_dir = Settings.from_env().landing_dir
    files = list_quarantined(landing_dir)
    if not files:
        print(f"no quarantined files in {Path(landing_dir) / 'failed'}")
    for item in files:
        print(f"{item.name}\t{item.path.stat().st_size} bytes\t{item.reason}")
    return 0


def cmd_landing_retry(args: argparse.Namespace) -> int:
    from kpi_pipelines.ingestion.quarantine import retry

    target = retry(Settings.from_env().landing_dir, args.name)
    print(f"moved {args.name} back to {target}; the landing sensor or the next run loads it")
    return 0


def query_metrics(
    settings: Settings, pattern: str | None, start: dt.date | None, end: dt.date | None
) -> list[dict[str, Any]]:
    where, params = ["1 = 1"], {}
    if pattern:
        where.append("metric_name LIKE :pattern ESCAPE '\\'")
        params["pattern"] = glob_to_like(pattern)
    if start:
        where.append('"timestamp" >= :start')
        params["start"] = dt.datetime.combine(start, dt.time())
    if end:
        where.append('"timestamp" < :end')
        params["end"] = dt.datetime.combine(end + dt.timedelta(days=1), dt.time())
    rows = settings.warehouse(interactive=True).query(
        'SELECT metric_name, metric_value, dimensions, "timestamp", aggregation_level FROM kpi_metrics '
        f"WHERE {' AND '.join(where)} ORDER BY metric_name, aggregation_level, \"timestamp\", dimensions",
        params,
    )
    out = [
        {
            "metric_name": name,
            "metric_value": value,
            "dimensions": dims,
            "timestamp": ts.isoformat(sep=" "),
            "aggregation_level": level,
        }
        for name, value, dims, ts, level in rows
    ]
    return out


def glob_to_like(pattern: str) -> str:
    """A shell-style name pattern ('retrieval.*') as a SQL LIKE pattern with escape '\\'."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


# what a --name pattern may hold: the characters of metric names and the wildcards * and ?
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.*?-]+")


def cmd_metrics(args: argparse.Namespace) -> int:
    if args.start and args.end and args.end < args.start:
        raise UsageError(f"--end {args.end} is before --start {args.start}")
    if args.name is not None and not NAME_PATTERN.fullmatch(args.name):
        raise UsageError(
            f"--name {args.name!r} is not a metric name pattern (letters, digits, '_', '.', '-' and the wildcards * and ?)"
        )
    rows = query_metrics(Settings.from_env(), args.name, args.start, args.end)
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=["metric_name", "metric_value", "dimensions", "timestamp", "aggregation_level"])
        writer.writeheader()
        writer.writerows(rows)
    elif rows:
        print_table(rows)
    else:
        asked = [f"named {args.name!r}"] if args.name else []
        asked += [f"from {args.start}"] if args.start else []
        asked += [f"to {args.end}"] if args.end else []
        print(f"no metrics {' '.join(asked)}" if asked else "no metrics yet (kpi materialize computes them)")
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    from kpi_pipelines.display import readable_number

    shown = [{**row, "metric_value": readable_number(row["metric_value"], significant=6)} for row in rows]
    widths = {key: max(len(key), *(len(str(row[key])) for row in shown)) for key in shown[0]}
    print("  ".join(key.ljust(width) for key, width in widths.items()))
    for row in shown:
        print("  ".join(str(row[key]).ljust(width) for key, width in widths.items()))


@contextlib.contextmanager
def _into(log: Any):
    """Python's stdout and stderr into `log`: dbt's output (dagster-dbt re-emits it on
    sys.stdout), Dagster's logs and warnings, the log-only alert notifications."""
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield


def record_demo_first_day(start: dt.date, env_file: Path) -> str:
    """Unless KPI_FIRST_DAY is set (in the environment or `env_file`; kept as it is), record
    the demo's first day in `env_file`, the `.env` that `make dev`'s Dagster and later `kpi`
    commands read, so their partitions are the demo's days rather than a year of missing
    ones. Returns the line to print."""
    from dotenv import dotenv_values

    if os.environ.get("KPI_FIRST_DAY", "").strip() or (env_file.exists() and dotenv_values(env_file).get("KPI_FIRST_DAY")):
        from kpi_pipelines.first_day import first_day

        if first_day() > start:
            raise UsageError(f"KPI_FIRST_DAY={first_day()} is after the demo's first day {start}: set it to {start} or earlier")
        return f"daily partitions from KPI_FIRST_DAY={first_day()} (set already: kept)"
    text = env_file.read_text() if env_file.exists() else ""
    env_file.write_text(text + ("\n" if text and not text.endswith("\n") else "") + f"KPI_FIRST_DAY={start}\n")
    return f"daily partitions from KPI_FIRST_DAY={start}, recorded in {env_file.resolve()} for `make dev` and later kpi commands"


def cmd_demo(args: argparse.Namespace) -> int:
    """Prints what a person reads (the steps, the KPI tables, the alerts); everything else
    goes to DIR/demo.log, named in the output."""
    from kpi_pipelines.ingestion.catalog import load_catalog, load_judgments
    from kpi_pipelines.synthetic import generate

    settings = Settings.from_env()  # synthetic traffic: the development salt is no concern here
    out = _output_dir(args.out)
    log_path = out / "demo.log"
    os.environ.setdefault("DBT_USE_COLORS", "false")  # no ANSI colour codes in the log file
    end = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    start = end - dt.timedelta(days=args.days - 1)
    print(record_demo_first_day(start, Path(".env")))
    print(f"1/5 generating {args.days} days of traffic ({args.sessions} sessions a day) into {out}")
    traffic = generate(out, days=args.days, sessions=args.sessions, seed=args.seed, start=start)
    print(f"2/5 loading the catalog and judgments, ingesting {traffic.events:,} events")
    warehouse = settings.warehouse()
    load_catalog(warehouse, traffic.catalog_path)
    load_judgments(warehouse, traffic.judgments_path)
    ingest_files(settings, [str(traffic.events_path)])
    print(f"3/5 materializing {start}..{end} (dbt's and Dagster's logs: {log_path})")
    terminal = sys.stdout
    with open(log_path, "w", encoding="utf-8") as log:
        with _into(log):
            materialize(start, end)
        print("4/5 summary")
        print_summary(settings, start, end)
        print("\n5/5 evaluating the alert rules (the packaged daily rules judge yesterday, the last complete day)")
        from kpi_pipelines.alerts.cli import evaluate_and_print, list_alerts
        from kpi_pipelines.alerts.config import AlertSettings

        with _into(log):
            status = evaluate_and_print(trigger="demo", out=lambda line: print(line, file=terminal))
        if not AlertSettings.from_env().slack_token:
            print(f"  (the log the notifications went to: {log_path})")
    if status == 0:
        for line in list_alerts(warehouse):
            print(line)
    return status


DOMAINS = (
    ("data_quality.", "Data quality (the catalog)"),
    ("retrieval.", "Retrieval quality (judged queries)"),
    ("search.", "Search experience"),
    ("business.", "Business"),
    ("experiment.", "A/B experiments (cumulative)"),
    ("content.", "Content generation"),
    ("system.", "System performance"),
)


def print_summary(settings: Settings, start: dt.date, end: dt.date) -> None:
    """Per domain, each overall daily KPI: its last day's value and its mean over the range."""
    from kpi_pipelines.display import readable_number

    warehouse = settings.warehouse()
    events = warehouse.query(
        "SELECT event_type, count(*) FROM raw_events WHERE event_date BETWEEN :start AND :end GROUP BY 1 ORDER BY 1",
        {"start": start, "end": end},
    )
    print(f"events {start}..{end}: " + ", ".join(f"{kind} {count:,}" for kind, count in events))
    print(f"rejected lines kept in rejected_events: {warehouse.scalar('SELECT count(*) FROM rejected_events'):,}")
    rows = [row for row in query_metrics(settings, None, start, end) if row["aggregation_level"] == "day"]
    overall = [row for row in rows if row["dimensions"] == "{}"]
    for prefix, title in DOMAINS:
        series: dict[str, list[tuple[str, float]]] = {}
        for row in overall:
            if row["metric_name"].startswith(prefix):
                series.setdefault(row["metric_name"], []).append((row["timestamp"], row["metric_value"]))
        if not series:
            continue
        print(f"\n{title}")
        width = max(len(name) for name in series)
        print(f"  {'metric'.ljust(width)}  {'last day':>12}  {'mean':>12}")
        for name, points in sorted(series.items()):
            last = max(points)[1]
            mean = sum(value for _, value in points) / len(points)
            print(f"  {name.ljust(width)}  {readable_number(last):>12}  {readable_number(mean):>12}")
    dimensioned = len(rows) - len(overall)
    if dimensioned:
        print(f"\n(+ {dimensioned:,} values by dimension: kpi metrics --format table shows them all)")
    anomalies = warehouse.query(
        "SELECT metric_name, dimensions, CAST(\"timestamp\" AS DATE), direction, z_score FROM kpi_anomalies "
        "WHERE status = 'anomalous' AND \"timestamp\" BETWEEN :start AND :end ORDER BY 3, 1",
        {"start": dt.datetime.combine(start, dt.time()), "end": dt.datetime.combine(end, dt.time())},
    )
    print(f"\nanomalies flagged: {len(anomalies)}")
    for name, dims, day, direction, z in anomalies[:10]:
        print(f"  {day} {name} {dims} {direction} (z={'flat history' if z is None else f'{z:.1f}'})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kpi", description="KPI pipelines for AutoDescribe: ingest, materialize, inspect.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("generate", help="write realistic synthetic traffic, a catalog and judgments")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--days", type=_positive, default=7)
    p.add_argument("--sessions", type=_positive, default=2000, help="sessions per day")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--start", type=_date, default=None, help="first day (default: DAYS days before today)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("ingest", help="load JSONL event files (.jsonl, .jsonl.gz) into raw_events")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_ingest, opens_warehouse=True)

    for name, kind, text in (
        ("load-catalog", "catalog", "load a product catalog snapshot (CSV or JSONL) into products"),
        ("load-judgments", "judgments", "load relevance judgments (CSV: query,product_id,relevance)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("file")
        p.add_argument("--allow-rejects", action="store_true", help="load the good rows even if some are bad")
        p.set_defaults(func=lambda args, kind=kind: _load_reference(args, kind), opens_warehouse=True)

    p = sub.add_parser("materialize", help="materialize the asset graph for a range of UTC days")
    p.add_argument("--start", type=_date, required=True)
    p.add_argument("--end", type=_date, default=None, help="last day, included (default: --start)")
    p.set_defaults(func=cmd_materialize, opens_warehouse=True)

    landing = sub.add_parser("landing", help="landing files that could not be read (KPI_LANDING_DIR/failed)")
    actions = landing.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = actions.add_parser("list", help="the quarantined files with the reason each could not be read")
    p.set_defaults(func=cmd_landing_list)
    p = actions.add_parser("retry", help="move a quarantined file back into the landing directory to be loaded")
    p.add_argument("name", help="its file name under failed/, as `kpi landing list` prints it")
    p.set_defaults(func=cmd_landing_retry)

    p = sub.add_parser("metrics", help="print KPI values")
    p.add_argument("--name", default=None, help="metric name pattern, e.g. 'retrieval.*'")
    p.add_argument("--start", type=_date, default=None)
    p.add_argument("--end", type=_date, default=None)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=cmd_metrics, opens_warehouse=True)

    p = sub.add_parser("demo", help="generate traffic, ingest, materialize and summarize on the embedded default")
    p.add_argument("--out", default="data/demo")
    p.add_argument("--days", type=_positive, default=7)
    p.add_argument("--sessions", type=_positive, default=1500)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_demo, opens_warehouse=True)

    from kpi_pipelines.alerts.cli import add_alert_commands

    add_alert_commands(sub)
    sub.choices["alerts"].set_defaults(opens_warehouse=True)

    from kpi_pipelines.api import add_serve_command

    add_serve_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from kpi_pipelines.ingestion.catalog import CatalogError
    from kpi_pipelines.ingestion.loader import IngestError
    from kpi_pipelines.ingestion.quarantine import QuarantineError
    from kpi_pipelines.warehouse import WarehouseError

    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "opens_warehouse", False):
            # where the data goes, before anything is written; stderr when stdout is data
            from kpi_pipelines.display import announce_warehouse

            stream = sys.stderr if getattr(args, "format", "table") != "table" else sys.stdout
            announce_warehouse(Settings.from_env().warehouse(), stream)
        return args.func(args)
    except UsageError as error:
        print(f"kpi: error: {error}", file=sys.stderr)
        return 2
    # ValueError: a setting the command cannot use, named by kpi_pipelines.settings
    except (WarehouseError, IngestError, CatalogError, QuarantineError, OSError, ValueError) as error:
        print(f"kpi: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kpi: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # never a traceback for a user; KPI_DEBUG=1 shows it
        if os.environ.get("KPI_DEBUG"):
            traceback.print_exc()
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(f"kpi: error: {type(error).__name__}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
