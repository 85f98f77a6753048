"""Warehouse tables, created or migrated idempotently on first use.

Each migration is applied once, in order, inside the transaction that first opens the
warehouse; PostgreSQL takes an advisory lock so two processes starting together do not
race. Types are written with placeholders filled per dialect.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

TYPES = {
    # DuckDB has one writer and the loader inserts only ids it has not stored (an anti-join),
    # so raw_events skips the unique index there: maintaining it doubles the insert time.
    # PostgreSQL takes concurrent writers (the collector API) and keeps the constraint.
    "duckdb": {"json": "JSON", "double": "DOUBLE", "event_key": ""},
    "postgresql": {"json": "JSONB", "double": "DOUBLE PRECISION", "event_key": ",\n                PRIMARY KEY (event_id)"},
}

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "foundation: events, rejects, catalog, judgments, KPI metrics, loaded files",
        [
            """CREATE TABLE IF NOT EXISTS raw_events (
                event_id VARCHAR NOT NULL,
                event_type VARCHAR NOT NULL,
                action VARCHAR,
                event_time TIMESTAMP NOT NULL,
                event_date DATE NOT NULL,
                session_id VARCHAR NOT NULL,
                user_key VARCHAR,
                source VARCHAR NOT NULL,
                metadata {json} NOT NULL,
                source_file VARCHAR NOT NULL,
                ingested_at TIMESTAMP NOT NULL{event_key}
            )""",
            """CREATE TABLE IF NOT EXISTS rejected_events (
                rejection_id VARCHAR NOT NULL PRIMARY KEY,
                source_file VARCHAR NOT NULL,
                line_no BIGINT NOT NULL,
                event_id VARCHAR,
                reason VARCHAR NOT NULL,
                raw_text VARCHAR NOT NULL,
                rejected_at TIMESTAMP NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS products (
                product_id VARCHAR NOT NULL PRIMARY KEY,
                title VARCHAR,
                description VARCHAR,
                brand VARCHAR,
                category VARCHAR,
                price {double},
                price_raw VARCHAR,
                currency VARCHAR,
                attributes {json},
                loaded_at TIMESTAMP NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS relevance_judgments (
                query VARCHAR NOT NULL,
                query_norm VARCHAR NOT NULL,
                product_id VARCHAR NOT NULL,
                relevance INTEGER NOT NULL,
                PRIMARY KEY (query_norm, product_id)
            )""",
            """CREATE TABLE IF NOT EXISTS kpi_metrics (
                metric_name VARCHAR NOT NULL,
                metric_value {double} NOT NULL,
                dimensions VARCHAR NOT NULL,
                "timestamp" TIMESTAMP NOT NULL,
                aggregation_level VARCHAR NOT NULL,
                created_at TIMESTAMP NOT NULL,
                source_asset VARCHAR NOT NULL
            )""",
            """CREATE INDEX IF NOT EXISTS kpi_metrics_by_bucket
                ON kpi_metrics (aggregation_level, "timestamp", metric_name)""",
            """CREATE TABLE IF NOT EXISTS ingested_files (
                file_key VARCHAR NOT NULL PRIMARY KEY,
                path VARCHAR NOT NULL,
                size_bytes BIGINT NOT NULL,
                accepted BIGINT NOT NULL,
                duplicates BIGINT NOT NULL,
                rejected BIGINT NOT NULL,
                loaded_at TIMESTAMP NOT NULL
            )""",
        ],
    ),
    (
        2,
        "anomalies: each daily KPI value against its trailing window",
        [
            """CREATE TABLE IF NOT EXISTS kpi_anomalies (
                metric_name VARCHAR NOT NULL,
                dimensions VARCHAR NOT NULL,
                "timestamp" TIMESTAMP NOT NULL,
                aggregation_level VARCHAR NOT NULL,
                metric_value {double} NOT NULL,
                training_points INTEGER NOT NULL,
                training_mean {double},
                training_stddev {double},
                z_score {double},
                lower_bound {double},
                upper_bound {double},
                sensitivity {double} NOT NULL,
                status VARCHAR NOT NULL,
                direction VARCHAR,
                detected_at TIMESTAMP NOT NULL
            )""",
        ],
    ),
    (
        3,
        "experiments: cumulative A/B results per day, experiment and variant",
        [
            """CREATE TABLE IF NOT EXISTS experiment_results (
                day DATE NOT NULL, experiment_id VARCHAR NOT NULL, variant VARCHAR NOT NULL,
                is_control BOOLEAN NOT NULL, sessions BIGINT NOT NULL, converting_sessions BIGINT NOT NULL,
                excluded_sessions BIGINT NOT NULL, conversion_rate {double} NOT NULL, revenue {double} NOT NULL,
                revenue_sum_squares {double} NOT NULL, revenue_per_session {double} NOT NULL,
                conversion_lift {double}, conversion_lift_ci_lower {double}, conversion_lift_ci_upper {double},
                conversion_z {double}, p_value_conversion {double},
                revenue_lift {double}, revenue_lift_ci_lower {double}, revenue_lift_ci_upper {double},
                revenue_t {double}, revenue_dof {double}, p_value_revenue {double},
                srm_chi_square {double}, srm_p_value {double}, srm_flag BOOLEAN NOT NULL,
                computed_at TIMESTAMP NOT NULL,
                PRIMARY KEY (day, experiment_id, variant)
            )""",
        ],
    ),
    (
        4,
        "alerts: instances, outbox, notification log, silences, evaluations",
        [
            # One row per episode of a rule's series: opened when it leaves Normal (pending or
            # firing), closed (status 'resolved') when it returns. The seed's AlertInstance.
            """CREATE TABLE IF NOT EXISTS alert_instances (
                id VARCHAR NOT NULL PRIMARY KEY,
                rule_name VARCHAR NOT NULL,
                fingerprint VARCHAR NOT NULL,
                metric_name VARCHAR NOT NULL,
                aggregation_level VARCHAR NOT NULL,
                dimensions VARCHAR NOT NULL,
                labels VARCHAR NOT NULL,
                state VARCHAR NOT NULL,
                status VARCHAR NOT NULL,
                severity VARCHAR,
                pending_since TIMESTAMP,
                triggered_at TIMESTAMP,
                recovering_since TIMESTAMP,
                critical_since TIMESTAMP,
                resolved_at TIMESTAMP,
                current_value {double},
                threshold_value {double},
                details VARCHAR NOT NULL,
                last_evaluated_at TIMESTAMP NOT NULL,
                last_notified_at TIMESTAMP,
                last_escalated_at TIMESTAMP,
                firing_notified BOOLEAN NOT NULL,
                escalation_notified BOOLEAN NOT NULL,
                notification_sent BOOLEAN NOT NULL
            )""",
            # Notifications waiting to be delivered (at least once): deleted only when the
            # notification log row is written, in the same transaction, after a successful send.
            """CREATE TABLE IF NOT EXISTS alert_outbox (
                id VARCHAR NOT NULL PRIMARY KEY,
                alert_id VARCHAR NOT NULL,
                rule_name VARCHAR NOT NULL,
                fingerprint VARCHAR NOT NULL,
                channel VARCHAR NOT NULL,
                kind VARCHAR NOT NULL,
                severity VARCHAR,
                payload VARCHAR NOT NULL,
                evaluation_id VARCHAR NOT NULL,
                created_at TIMESTAMP NOT NULL,
                attempts INTEGER NOT NULL,
                next_attempt_at TIMESTAMP NOT NULL,
                last_attempt_at TIMESTAMP,
                last_error VARCHAR
            )""",
            # What was delivered: one row per notification (id = its outbox id), written only after
            # the channel accepted the message. channel_type 'log' = written to the log instead
            # (no Slack token / no SMTP host).
            """CREATE TABLE IF NOT EXISTS alert_notification_log (
                id VARCHAR NOT NULL PRIMARY KEY,
                alert_id VARCHAR NOT NULL,
                rule_name VARCHAR NOT NULL,
                fingerprint VARCHAR NOT NULL,
                channel VARCHAR NOT NULL,
                channel_type VARCHAR NOT NULL,
                destination VARCHAR NOT NULL,
                kind VARCHAR NOT NULL,
                severity VARCHAR,
                message_id VARCHAR,
                group_size INTEGER NOT NULL,
                payload VARCHAR NOT NULL,
                queued_at TIMESTAMP NOT NULL,
                sent_at TIMESTAMP NOT NULL,
                attempts INTEGER NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS alert_silences (
                id VARCHAR NOT NULL PRIMARY KEY,
                rule_name VARCHAR NOT NULL,
                starts_at TIMESTAMP NOT NULL,
                ends_at TIMESTAMP NOT NULL,
                reason VARCHAR NOT NULL,
                created_by VARCHAR NOT NULL,
                created_at TIMESTAMP NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS alert_evaluations (
                id VARCHAR NOT NULL PRIMARY KEY,
                evaluated_at TIMESTAMP NOT NULL,
                started_at TIMESTAMP NOT NULL,
                finished_at TIMESTAMP NOT NULL,
                trigger VARCHAR NOT NULL,
                rules INTEGER NOT NULL,
                series INTEGER NOT NULL,
                pending INTEGER NOT NULL,
                firing INTEGER NOT NULL,
                resolved INTEGER NOT NULL,
                queued INTEGER NOT NULL
            )""",
            """CREATE INDEX IF NOT EXISTS alert_instances_by_rule ON alert_instances (rule_name, fingerprint)""",
            """CREATE INDEX IF NOT EXISTS alert_outbox_due ON alert_outbox (next_attempt_at)""",
        ],
    ),
    (
        5,
        "kpi_metrics_all: the daily KPIs until dbt first builds the view with every rollup",
        [
            # dbt's model kpi_metrics_all (dbt_project/models/marts) replaces this view with
            # the union of the daily KPIs and every rollup; same columns, so readers (the API,
            # the alerts) work before the first dbt build.
            """CREATE OR REPLACE VIEW kpi_metrics_all AS
            SELECT CAST(metric_name AS VARCHAR) AS metric_name,
                   CAST(metric_value AS DOUBLE PRECISION) AS metric_value,
                   CAST(dimensions AS VARCHAR) AS dimensions,
                   CAST("timestamp" AS TIMESTAMP) AS "timestamp",
                   CAST(aggregation_level AS VARCHAR) AS aggregation_level,
                   CAST(source_asset AS VARCHAR) AS source_asset
            FROM kpi_metrics""",
        ],
    ),
    (
        6,
        "quarantined_files: landing files that could not be read, moved to failed/",
        [
            # One row per quarantine (a file retried and broken again is quarantined again).
            # `reason` is the loader's one-line error, e-mails and phones masked.
            """CREATE TABLE IF NOT EXISTS quarantined_files (
                quarantine_id VARCHAR NOT NULL PRIMARY KEY,
                landing_path VARCHAR NOT NULL,
                failed_path VARCHAR NOT NULL,
                size_bytes BIGINT NOT NULL,
                reason VARCHAR NOT NULL,
                run_id VARCHAR,
                quarantined_at TIMESTAMP NOT NULL
            )""",
        ],
    ),
]


def migrate(connection: Connection, dialect: str) -> None:
    """Bring the schema up to the newest migration; a no-op when it already is."""
    if dialect == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('kpi_pipelines.migrate'))"))
    connection.execute(
        sa.text(
            "CREATE TABLE IF NOT EXISTS kpi_schema_migrations "
            "(version INTEGER PRIMARY KEY, description VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
        )
    )
    applied = {row[0] for row in connection.execute(sa.text("SELECT version FROM kpi_schema_migrations"))}
    for version, description, statements in MIGRATIONS:
        if version in applied:
            continue
        for statement in statements:
            connection.execute(sa.text(statement.format(**TYPES[dialect])))
        connection.execute(
            sa.text(
                "INSERT INTO kpi_schema_migrations VALUES (:version, :description, CURRENT_TIMESTAMP)"
            ),
            {"version": version, "description": description},
        )
