"""What the `kpi` commands show a person: numbers that read as numbers (never `2.456e+04`),
and where the warehouse they open is (a `duckdb:///` URL with three slashes is a path relative
to the working directory, which surprises people who meant an absolute one)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TextIO

# inside a git repository, the one directory where a relative DuckDB path is expected
# (the default warehouse, data/kpi.duckdb, and the demo's files)
REPOSITORY_DATA_DIR = "data"


def readable_number(value: float, significant: int = 4) -> str:
    """Fixed-point with thousands separators, rounded to `significant` significant digits
    but keeping the whole integer part, without trailing zeros: 22,820 / 56.98 / 0.0823."""
    if not math.isfinite(value):
        return str(value)
    if value == int(value):
        return f"{value:,.0f}"
    decimals = max(0, significant - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def announce_warehouse(warehouse, stream: TextIO) -> None:
    """Where `warehouse` is, one line on `stream`, and the relative-path warning, if any, on stderr
    (every command that opens the warehouse, `kpi serve` included)."""
    line, warning = warehouse_location(warehouse)
    print(line, file=stream, flush=True)
    if warning:
        print(warning, file=sys.stderr, flush=True)


def warehouse_location(warehouse) -> tuple[str, str | None]:
    """(the line naming where `warehouse` is, a warning line or None). A DuckDB file is shown
    as the absolute path it opens; a server URL without its password. The warning is for a
    relative DuckDB path that lands inside a git repository outside its data/ directory:
    most likely `duckdb:///tmp/x.duckdb` meant for /tmp/x.duckdb."""
    schema = f" (schema {warehouse.schema})" if warehouse.schema else ""
    path = warehouse.duckdb_path
    if warehouse.dialect != "duckdb":
        return f"warehouse: {warehouse.display_url}{schema}", None
    if path is None:
        return f"warehouse: DuckDB in memory{schema}", None
    absolute = path.expanduser().absolute()
    line = f"warehouse: {absolute}{schema}"
    if path.expanduser().is_absolute():
        return line, None
    repository = next((folder for folder in absolute.parents if (folder / ".git").exists()), None)
    if repository is None or absolute.is_relative_to(repository / REPOSITORY_DATA_DIR):
        return line, None
    return line, (
        f"kpi: warning: KPI_WAREHOUSE_URL {warehouse.display_url} is a path relative to the working directory: "
        f"the warehouse is {absolute}, inside the git repository {repository}; "
        f"for an absolute path write four slashes (duckdb:///{Path('/', path)})"
    )
