"""The `kpi` program's entry: the working directory's `.env` first, as Dagster's own commands
(`dagster dev`, its webserver and daemon) read it, so that `kpi` and `make dev` see the same
settings (`kpi demo` records its first day there); then the command line.

Variables already in the environment win over `.env` here (python-dotenv's rule; Dagster's
commands let `.env` win, docs/decisions.md). Only the program reads `.env`: `cli.main()`
called from Python, as the tests do, never does.
"""

import sys
from pathlib import Path

from dotenv import load_dotenv


def run() -> None:
    load_dotenv(Path.cwd() / ".env", override=False)
    from kpi_pipelines.first_day import first_day
    from kpi_pipelines.settings import SettingError

    try:
        # read as the definitions load, before any command: a bad value is one line, not a traceback
        first_day()
    except SettingError as error:
        print(f"kpi: error: {error}", file=sys.stderr)
        sys.exit(1)
    from kpi_pipelines.cli import main

    sys.exit(main())
