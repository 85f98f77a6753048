"""`python -m kpi_pipelines.api [--host H] [--port P] [--workers N]`: the same as `kpi serve`."""

import argparse
import sys

from kpi_pipelines.api.command import add_serve_command

parser = argparse.ArgumentParser(prog="python -m kpi_pipelines.api")
add_serve_command(parser.add_subparsers(dest="command"))
args = parser.parse_args(["serve", *sys.argv[1:]])
sys.exit(args.func(args))
