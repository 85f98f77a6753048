"""`python -m kpi_pipelines.rollups DBT_ARGS...`: run dbt by hand on the project's warehouse.

The DBT_* variables of dbt_project/profiles.yml are derived from KPI_WAREHOUSE_URL and
KPI_WAREHOUSE_SCHEMA as the Dagster resource derives them, and dbt runs in dbt_project/
with the dbt of this environment. `--print-env` prints them as shell `export` lines instead.

    python -m kpi_pipelines.rollups build --vars '{"min_date": "2026-03-09", "max_date": "2026-03-10"}'
    python -m kpi_pipelines.rollups build            # no window: every stored day
    eval "$(python -m kpi_pipelines.rollups --print-env)" && cd dbt_project && dbt build
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from kpi_pipelines.rollups.project import DBT_PROJECT_DIR, dbt_executable
from kpi_pipelines.rollups.resources import dbt_env
from kpi_pipelines.settings import setting


def main(argv: list[str]) -> int:
    try:
        env = dbt_env(setting("KPI_WAREHOUSE_URL"), setting("KPI_WAREHOUSE_SCHEMA") or None)
    except Exception as error:  # noqa: BLE001 - one clear line, as the kpi command does
        print(f"kpi: error: {error}", file=sys.stderr)
        return 1
    if argv[:1] == ["--print-env"]:
        for name, value in env.items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    process_env = {**os.environ, **env, "DBT_PROFILES_DIR": str(DBT_PROJECT_DIR)}
    return subprocess.call([dbt_executable(), *argv], cwd=DBT_PROJECT_DIR, env=process_env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
