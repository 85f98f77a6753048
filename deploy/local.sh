#!/usr/bin/env bash
# `make deploy-local`: the deployed shape of docs/deployment.md on one machine, without
# containers. Three Dagster processes share one instance (a DAGSTER_HOME holding the
# repository's dagster.yaml, storage in PostgreSQL):
#
#   dagster code-server start   the kpi_pipelines code location, gRPC on 127.0.0.1
#   dagster-daemon run          sensors, schedules, the run queue, run retries
#   dagster-webserver           the UI and GraphQL on 127.0.0.1
#
# Ctrl-C (or SIGTERM) stops all three: each runs in its own process group, which gets
# SIGTERM, then SIGKILL after a grace period; the script waits for every one of them.
#
# Settings (environment):
#   KPI_TEST_POSTGRES_URL   PostgreSQL server to use (default postgresql+psycopg://$PGUSER@127.0.0.1:5432/postgres);
#                           the databases kpi_dagster_local (instance) and kpi_warehouse_local
#                           (warehouse) are created there when missing
#   DAGSTER_PG_URL          the instance database instead (postgresql+psycopg2://...)
#   KPI_WAREHOUSE_URL       the warehouse instead (postgresql+psycopg://...); DuckDB is refused:
#                           the deployed shape runs several runs at once, DuckDB takes one writer
#   KPI_WAREHOUSE_SCHEMA, KPI_PII_SALT, SLACK_BOT_TOKEN, KPI_LANDING_DIR   as in the README
#   KPI_DEPLOY_DIR          state directory (default data/deploy-local: dagster_home/, logs/)
#   KPI_CODE_SERVER_PORT    gRPC port of the code server (default 4000)
#   KPI_WEBSERVER_PORT      port of the UI (default 3000)
#   KPI_BIN                 directory of the dagster executables (default .venv/bin)
#   KPI_STOP_GRACE_SECONDS  how long a process may take to stop before SIGKILL (default 30)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

die() { echo "deploy-local: error: $*" >&2; exit 1; }

BIN=${KPI_BIN:-$REPO/.venv/bin}
case $BIN in /*) ;; *) BIN=$REPO/$BIN ;; esac
for exe in python dagster dagster-webserver dagster-daemon; do
  [[ -x $BIN/$exe ]] || die "$BIN/$exe not found: run 'make install' first (or set KPI_BIN)"
done
PY=$BIN/python

STATE=${KPI_DEPLOY_DIR:-$REPO/data/deploy-local}
case $STATE in /*) ;; *) STATE=$REPO/$STATE ;; esac
# Our own DAGSTER_HOME, never the one the Makefile exports (./.dagster_home is the local
# SQLite instance of `make dev` and `kpi materialize`; its dagster.yaml must stay as it is).
export DAGSTER_HOME=$STATE/dagster_home
LOGS=$STATE/logs
HOST=127.0.0.1
CODE_PORT=${KPI_CODE_SERVER_PORT:-4000}
WEB_PORT=${KPI_WEBSERVER_PORT:-3000}
GRACE=${KPI_STOP_GRACE_SECONDS:-30}
LOCATION=kpi_pipelines
mkdir -p "$DAGSTER_HOME" "$LOGS"

# --- PostgreSQL: the instance database and the warehouse ------------------------------------
export KPI_LOCAL_BASE_URL=${KPI_TEST_POSTGRES_URL:-postgresql+psycopg://${PGUSER:-$(id -un)}@127.0.0.1:5432/postgres}
exports=$("$PY" - <<'PY'
import os
import shlex
import sys

import sqlalchemy as sa
from sqlalchemy.engine import make_url

try:
    base = make_url(os.environ["KPI_LOCAL_BASE_URL"]).set(drivername="postgresql+psycopg")
except Exception:
    sys.exit("deploy-local: error: KPI_TEST_POSTGRES_URL is not a SQLAlchemy URL")


def ensure_database(name: str) -> None:
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            exists = connection.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).scalar()
            if not exists:
                connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
                print(f"deploy-local: created database {name}", file=sys.stderr)
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        sys.exit(f"deploy-local: error: PostgreSQL at {base.render_as_string(hide_password=True)}: {first}")
    finally:
        engine.dispose()


out = {}
if not os.environ.get("DAGSTER_PG_URL", "").strip():
    ensure_database("kpi_dagster_local")
    # dagster-postgres speaks psycopg2: the +psycopg2 driver is required (see dagster.yaml)
    out["DAGSTER_PG_URL"] = base.set(drivername="postgresql+psycopg2", database="kpi_dagster_local")
warehouse = os.environ.get("KPI_WAREHOUSE_URL", "").strip()
if not warehouse:
    ensure_database("kpi_warehouse_local")
    out["KPI_WAREHOUSE_URL"] = base.set(database="kpi_warehouse_local")
elif make_url(warehouse).get_backend_name() == "duckdb":
    sys.exit(
        "deploy-local: error: KPI_WAREHOUSE_URL is DuckDB; the deployed shape runs several runs "
        "at once and DuckDB takes one writer: use PostgreSQL here, or `make dev` for DuckDB"
    )
for name, url in out.items():
    print(f"export {name}={shlex.quote(url.render_as_string(hide_password=False))}")
PY
) || exit 1
eval "$exports"
case $DAGSTER_PG_URL in
  postgresql+psycopg2://*) ;;
  *) die "DAGSTER_PG_URL must start with postgresql+psycopg2:// (dagster-postgres speaks psycopg2; see dagster.yaml)" ;;
esac
export KPI_LANDING_DIR=${KPI_LANDING_DIR:-$REPO/data/landing}
mkdir -p "$KPI_LANDING_DIR"
[[ -n ${KPI_PII_SALT:-} ]] || echo "deploy-local: note: KPI_PII_SALT is not set; the development salt is used"

# --- the instance and the workspace ------------------------------------------------------
cp "$REPO/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"   # always the repository's current one
cat > "$DAGSTER_HOME/workspace.yaml" <<EOF
# Written by deploy/local.sh: the webserver and the daemon load code from the code server.
load_from:
  - grpc_server:
      host: $HOST
      port: $CODE_PORT
      location_name: $LOCATION
EOF

for port in "$CODE_PORT" "$WEB_PORT"; do
  "$PY" -c "import socket,sys; s=socket.socket(); s.bind(('$HOST', int(sys.argv[1]))); s.close()" "$port" 2>/dev/null \
    || die "port $port on $HOST is in use (set KPI_CODE_SERVER_PORT / KPI_WEBSERVER_PORT)"
done

# --- processes ---------------------------------------------------------------------------
pids=()
names=()

start() {
  local name=$1
  shift
  # Job control on while starting: the process gets its own process group (so stopping it
  # stops what it spawned: the code server's gRPC child, run workers, step processes) and
  # SIGINT is not ignored in it, as it would be for a background job of a script.
  # The exec wrapper restores SIGINT's default first: a script started in the background (by
  # a non-interactive shell) inherits SIGINT ignored, and `dagster code-server start` maps
  # SIGTERM onto SIGINT's handler, so it would ignore SIGTERM too.
  set -m
  "$PY" -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])' \
    "$@" >"$LOGS/$name.log" 2>&1 &
  local pid=$!
  set +m
  pids+=("$pid")
  names+=("$name")
  echo "deploy-local: started $name (pid $pid, log $LOGS/$name.log)"
}

alive() { kill -0 "$1" 2>/dev/null; }

stopping=0
stop_all() {
  ((stopping)) && return
  stopping=1
  local i pid deadline
  ((${#pids[@]})) || return 0
  echo "deploy-local: stopping ${names[*]}"
  # daemon first (no new runs), then the webserver, then the code server
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM -- "-${pids[i]}" 2>/dev/null || true
  done
  deadline=$((SECONDS + GRACE))
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if alive "$pid"; then
      echo "deploy-local: ${names[i]} did not stop within ${GRACE}s: SIGKILL"
    fi
    # whatever is left of the group (a run worker, a step process) goes too
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  echo "deploy-local: stopped"
}

trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

tail_log() { echo "--- last lines of $LOGS/$1.log"; tail -n 40 "$LOGS/$1.log" || true; }

start code-server "$BIN/dagster" code-server start -h "$HOST" -p "$CODE_PORT" \
  -m kpi_pipelines.definitions -a defs -d "$REPO" --location-name "$LOCATION"

deadline=$((SECONDS + ${KPI_STARTUP_TIMEOUT_SECONDS:-180}))
until "$BIN/dagster" api grpc-health-check -h "$HOST" -p "$CODE_PORT" >/dev/null 2>&1; do
  alive "${pids[0]}" || { tail_log code-server; die "the code server exited"; }
  ((SECONDS < deadline)) || { tail_log code-server; die "the code server did not answer on $HOST:$CODE_PORT"; }
  sleep 1
done

start webserver "$BIN/dagster-webserver" -h "$HOST" -p "$WEB_PORT" -w "$DAGSTER_HOME/workspace.yaml"
start daemon "$BIN/dagster-daemon" run -w "$DAGSTER_HOME/workspace.yaml"

until "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
  "http://$HOST:$WEB_PORT/server_info" >/dev/null 2>&1; do
  alive "${pids[1]}" || { tail_log webserver; die "the webserver exited"; }
  ((SECONDS < deadline)) || { tail_log webserver; die "the webserver did not answer on $HOST:$WEB_PORT"; }
  sleep 1
done

cat <<EOF
deploy-local: ready
  Dagster UI       http://$HOST:$WEB_PORT
  code server      grpc://$HOST:$CODE_PORT (location $LOCATION)
  DAGSTER_HOME     $DAGSTER_HOME
  landing dir      $KPI_LANDING_DIR   (drop *.jsonl files: the landing sensor loads them)
  logs             $LOGS
Ctrl-C stops everything.
EOF

# Wait until one of them exits (a crash) or a signal arrives (the traps above). A polling
# loop rather than `wait -n`, which older bash (macOS) lacks.
while :; do
  for i in "${!pids[@]}"; do
    if ! alive "${pids[i]}"; then
      status=0
      wait "${pids[i]}" || status=$?
      echo "deploy-local: ${names[i]} exited unexpectedly (status $status)"
      tail_log "${names[i]}"
      exit 1
    fi
  done
  sleep 1
done
