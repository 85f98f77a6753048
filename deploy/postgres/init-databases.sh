#!/usr/bin/env bash
# Runs once, on the first start of the postgres container (an empty data volume): one role and
# one database for the Dagster instance, one for the KPI warehouse. Passwords come from the
# container's environment (deploy/.env), never from this file.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v dagster_password="$DAGSTER_PG_PASSWORD" \
  -v kpi_password="$KPI_WAREHOUSE_PASSWORD" <<'EOSQL'
CREATE ROLE dagster LOGIN PASSWORD :'dagster_password';
CREATE DATABASE dagster OWNER dagster;
CREATE ROLE kpi LOGIN PASSWORD :'kpi_password';
CREATE DATABASE kpi OWNER kpi;
EOSQL
