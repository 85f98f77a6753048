"""The one event loader, used by `kpi ingest`, the `raw_events` asset, the landing sensor's
runs and the collector API.

A file is read line by line by DuckDB (`read_csv` with one VARCHAR column, gzip by
extension; a line too long or holding a NUL byte is a rejected line, not a refused file),
validated against the contract in SQL, pseudonymized and masked, and staged;
then, in one warehouse transaction, the accepted events that are new are inserted and the
rejected lines recorded. DuckDB warehouses stage in their own connection; PostgreSQL
warehouses stage in an in-memory DuckDB and receive the rows with `COPY`. Nothing loops
over rows in Python.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import sqlalchemy as sa

from kpi_pipelines.ingestion.contract import LONG_LINE_KEPT_CHARS, MAX_LINE_BYTES, ValidationSQL, _sql_string
from kpi_pipelines.ingestion.pii import (
    LOOSE_USER_ID_KEY,
    hmac_sql,
    holds_personal_data_sql,
    holds_user_id_object_sql,
    mask_sql,
    may_hold_personal_data_sql,
    pseudonymize_members_sql,
    readable_line_sql,
)
from kpi_pipelines.warehouse import Warehouse

# The reader's own limit, far above MAX_LINE_BYTES: a line up to it is read (memory grows by
# about 2.3 times its size) and rejected; a longer one refuses the file, naming the line.
READ_LINE_BYTES = 64 * 1024 * 1024
# A delimiter no line of text holds (control bytes are not JSON), so each line is one value,
# a NUL byte included: with NUL as the delimiter, one NUL refused the file or was dropped.
LINE_DELIMITER = "chr(1) || chr(2) || chr(3) || chr(4)"
EVENT_COLUMNS = (
    "event_id, event_type, action, event_time, event_date, session_id, user_key, source, metadata, "
    "source_file, ingested_at"
)
REJECT_COLUMNS = "rejection_id, source_file, line_no, event_id, reason, raw_text, rejected_at"
COPY_CHUNK_BYTES = 1 << 20
PARTIAL_TOKEN = r'[^",:{}\[\]]*$'  # the end of a cut line after its last JSON separator
# A file handed over as events whose first lines hold no JSON object at all (a catalog CSV, a
# log) is refused whole: rejecting every line would fill rejected_events with another file.
SNIFF_LINES = 100
# the names of event files, in a directory given to `kpi ingest` and in the landing directory
EVENT_FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")


class IngestError(Exception):
    """A file that cannot be loaded at all (missing, unreadable, not text); nothing was written."""


@dataclass
class LoadResult:
    path: str
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    events_by_date: dict[str, int] = field(default_factory=dict)

    @property
    def lines(self) -> int:
        return self.accepted + self.duplicates + self.rejected


def file_key(path: Path) -> str:
    """Identity of one version of a file: path, size and modification time."""
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()


def lines_sql(path: str) -> str:
    """The file's lines, in file order. Materialized into a new table by a connection that
    preserves insertion order (every caller sets `preserve_insertion_order`), the rowids
    follow the file, so numbering costs no ordered pass of its own (`stage_sql`)."""
    return f"""
        SELECT line
        FROM read_csv({_sql_string(path)}, columns = {{'line': 'VARCHAR'}}, delim = {LINE_DELIMITER}, quote = '',
                      escape = '', header = false, auto_detect = false, compression = 'auto',
                      max_line_size = {READ_LINE_BYTES})"""


def stage_sql(lines: str, salt: str) -> str:
    """SELECT over the table `lines` producing one row per line: line_no, reason (NULL when
    valid), the event's columns (the user id still raw: `_accepted_events` replaces it by its
    keyed hash; the stage never leaves the loading connection), and the redacted raw text of
    rejected lines."""
    sql = ValidationSQL()
    metadata = sql.fragment("metadata")
    personal_data = ", ".join(
        [
            f"CASE WHEN {holds_personal_data_sql(sql.fragment(key))} THEN "
            f"'{key}: must not hold personal data (an e-mail address or a phone number)' END"
            for key in ("id", "session_id")
        ]
        + [
            f"CASE WHEN suspect THEN CASE WHEN {holds_user_id_object_sql(metadata)} THEN "
            "'metadata: a user_id member must be a string or a number (user ids are stored pseudonymized)' END END"
        ]
    )
    return f"""
    WITH
    parsed AS (
        SELECT line_no, line_bytes, root,
               -- a NUL byte is never valid JSON; PostgreSQL text cannot hold it in raw_text
               CASE WHEN root IS NULL THEN contains(line, chr(0)) ELSE false END AS nul_byte,
               -- a line too long is kept cut, unparsed (its reason needs only its length), back to
               -- the last JSON separator: a token cut in two (an e-mail address) would escape masking
               CASE WHEN root IS NOT NULL THEN line
                    ELSE replace(CASE WHEN line_bytes > {MAX_LINE_BYTES}
                                      THEN regexp_replace(left(line, {LONG_LINE_KEPT_CHARS}), {_sql_string(PARTIAL_TOKEN)}, '')
                                      ELSE line END,
                                 chr(0), chr(65533)) END AS line,
               CASE WHEN root = 'OBJECT' THEN from_json(line, {sql.envelope_struct}) END AS e
        -- a valid line starting with a brace is an object: json_type (another parse) only for the rest
        FROM (SELECT *, CASE WHEN line_bytes > {MAX_LINE_BYTES} THEN NULL WHEN NOT json_valid(line) THEN NULL
                             WHEN left(line, 1) = '{{' THEN 'OBJECT' ELSE json_type(line) END AS root
              -- rowids of rows not yet committed start at a large offset, not at 0
              FROM (SELECT rowid - (SELECT min(rowid) FROM {lines}) + 1 AS line_no, strlen(line) AS line_bytes, line
                    FROM {lines}))
    ),
    enveloped AS (
        SELECT *,
               CASE WHEN left(CAST(e.metadata AS VARCHAR), 1) = '{{'
                    THEN from_json(e.metadata, {sql.metadata_struct}) END AS m
        FROM parsed
    ),
    fragments AS (
        SELECT line_no, line_bytes, nul_byte, line, root, {sql.fragment_columns()} FROM enveloped
    ),
    checked AS (
        SELECT *, CASE WHEN coalesce({sql.valid()}, false) THEN NULL ELSE {sql.reason()} END AS reason
        FROM (SELECT *, {sql.event_time()} AS event_time FROM fragments)
    ),
    -- personal data in an id (stored as written: masking would merge distinct ids) or in a
    -- user_id member that cannot be pseudonymized rejects the line
    screened AS (
        SELECT * REPLACE (CASE WHEN personal = '' THEN reason ELSE concat_ws('; ', reason, personal) END AS reason)
        FROM (SELECT *, concat_ws('; ', {personal_data}) AS personal
              FROM (SELECT *, {may_hold_personal_data_sql(metadata)} AS suspect FROM checked))
    ),
    redacted AS (
        SELECT *, CASE WHEN suspect THEN {pseudonymize_members_sql(metadata, salt)} ELSE {metadata} END AS metadata_text,
               {pseudonymize_members_sql('line_text', salt, LOOSE_USER_ID_KEY)} AS line_redacted
        FROM (SELECT *, CASE WHEN reason IS NOT NULL THEN {readable_line_sql("coalesce(line, '')", "root IS NOT NULL")} END
                        AS line_text
              FROM screened)
    )
    SELECT line_no, {mask_sql('reason')} AS reason,
           -- a rejected line keeps its id only when written without escapes: an unescaped
           -- U+0000 or lone surrogate cannot be stored as text by PostgreSQL
           CASE WHEN reason IS NULL THEN {sql.value('id')}
                WHEN NOT contains({sql.fragment('id')}, chr(92)) THEN {mask_sql(sql.value('id'))} END AS event_id,
           {sql.value('type')} AS event_type,
           {mask_sql(sql.value('metadata.action'))} AS action,
           event_time,
           CAST(event_time AS DATE) AS event_date,
           {sql.value('session_id')} AS session_id,
           {sql.value('user_id')} AS user_id,
           {sql.value('source')} AS source,
           CASE WHEN suspect THEN {mask_sql('metadata_text')} ELSE metadata_text END AS metadata,
           {mask_sql('line_redacted')} AS raw_text
    FROM redacted
    """


class EventLoader:
    """Loads event files into one warehouse; safe to call again with the same file."""

    def __init__(self, warehouse: Warehouse, salt: str, memory_limit: str = "1500MB"):
        self.warehouse = warehouse
        self.salt = salt
        self.memory_limit = memory_limit

    def load_file(
        self, path: str | os.PathLike[str], source_name: str | None = None, require_json_lines: bool = False
    ) -> LoadResult:
        """`require_json_lines`: refuse the whole file (IngestError, nothing written) when none
        of its first SNIFF_LINES non-empty lines is a JSON object, so it is no event file at
        all; for files a person names (`kpi ingest`). Otherwise, and for a file that has such
        a line, each bad line is a rejected line."""
        file_path = Path(path)
        if not file_path.is_file():
            raise IngestError(f"{file_path}: no such file")
        source = source_name or str(file_path)
        try:
            if self.warehouse.dialect == "duckdb":
                return self._load_into_duckdb(file_path, source, require_json_lines)
            return self._load_into_postgres(file_path, source, require_json_lines)
        except duckdb.Error as error:
            raise IngestError(f"{file_path}: {_read_error(error)}") from None

    def _configure(self, db: Any) -> None:
        db.execute(f"SET memory_limit = '{self.memory_limit}'")
        db.execute("SET preserve_insertion_order = true")

    def _load_into_duckdb(self, path: Path, source: str, require_json_lines: bool) -> LoadResult:
        result = LoadResult(str(path))
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        # The stage is built before the write transaction, as committed temporary tables (they
        # never leave this connection, which stays checked out, so no other process takes the
        # file in between): rows a transaction wrote itself are read back uncompressed, and
        # staging inside it cost ~0.6 CPU-seconds more and twice the peak memory for 1M events.
        with self.warehouse.engine.connect() as connection:
            db = connection.connection.driver_connection
            try:
                self._configure(db)
                db.execute(f"CREATE OR REPLACE TEMP TABLE kpi_lines AS {lines_sql(str(path))}")
                if require_json_lines:
                    _refuse_unless_json_lines(db, "kpi_lines", path)
                db.execute(f"CREATE OR REPLACE TEMP TABLE kpi_stage AS {stage_sql('kpi_lines', self.salt)}")
                db.execute("DROP TABLE kpi_lines")
                with connection.begin():
                    self._insert_staged(db, connection, path, source, result, now)
            finally:
                db.execute("DROP TABLE IF EXISTS kpi_lines")
                db.execute("DROP TABLE IF EXISTS kpi_stage")
        return result

    def _insert_staged(
        self, db: Any, connection: sa.Connection, path: Path, source: str, result: LoadResult, now: dt.datetime
    ) -> None:
        """The new accepted events, the rejects and the file's record, from `kpi_stage`, in the
        caller's transaction."""
        result.accepted = db.execute(
            f"""INSERT INTO raw_events ({EVENT_COLUMNS})
            SELECT event_id, event_type, action, event_time, event_date, session_id, user_key,
                   source, metadata, ?, ?
            FROM ({_accepted_events('kpi_stage', self.salt)}) s
            WHERE NOT EXISTS (SELECT 1 FROM raw_events r WHERE r.event_id = s.event_id)""",
            [source, now],
        ).fetchone()[0]
        db.execute(
            f"""INSERT INTO rejected_events ({REJECT_COLUMNS})
            SELECT md5(? || ':' || line_no || ':' || raw_text), ?, line_no, event_id, reason, raw_text, ?
            FROM kpi_stage WHERE reason IS NOT NULL
            ON CONFLICT DO NOTHING""",
            [source, source, now],
        )
        self._count_staged(db, "kpi_stage", result)
        result.duplicates = sum(result.events_by_date.values()) - result.accepted
        self._record_file(connection, path, result, now)

    def _load_into_postgres(self, path: Path, source: str, require_json_lines: bool) -> LoadResult:
        result = LoadResult(str(path))
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        with tempfile.TemporaryDirectory(prefix="kpi-load-") as workdir:
            stage = duckdb.connect()
            try:
                self._configure(stage)
                stage.execute(f"SET temp_directory = '{workdir}'")
                stage.execute("SET TimeZone = 'UTC'")
                stage.execute(f"CREATE TABLE kpi_lines AS {lines_sql(str(path))}")
                if require_json_lines:
                    _refuse_unless_json_lines(stage, "kpi_lines", path)
                stage.execute(f"CREATE TABLE kpi_stage AS {stage_sql('kpi_lines', self.salt)}")
                stage.execute("DROP TABLE kpi_lines")
                self._count_staged(stage, "kpi_stage", result)
                events_csv = Path(workdir) / "events.csv"
                rejects_csv = Path(workdir) / "rejects.csv"
                stage.execute(
                    f"""COPY (SELECT event_id, event_type, action, event_time, event_date, session_id,
                                     user_key, source, metadata, {_sql_string(source)}, TIMESTAMP '{now}'
                              FROM ({_accepted_events('kpi_stage', self.salt)}) s)
                        TO '{events_csv}' (FORMAT csv, HEADER false)"""
                )
                stage.execute(
                    f"""COPY (SELECT md5({_sql_string(source)} || ':' || line_no || ':' || raw_text),
                                     {_sql_string(source)}, line_no, event_id, reason, raw_text, TIMESTAMP '{now}'
                              FROM kpi_stage WHERE reason IS NOT NULL)
                        TO '{rejects_csv}' (FORMAT csv, HEADER false)"""
                )
            finally:
                stage.close()
            with self.warehouse.begin() as connection:
                pg = connection.connection.driver_connection
                with pg.cursor() as cursor:
                    result.accepted = _copy_insert(cursor, "raw_events", EVENT_COLUMNS, events_csv, "event_id")
                    _copy_insert(cursor, "rejected_events", REJECT_COLUMNS, rejects_csv, "rejection_id")
                result.duplicates = sum(result.events_by_date.values()) - result.accepted
                self._record_file(connection, path, result, now)
        return result

    @staticmethod
    def _count_staged(db: Any, stage: str, result: LoadResult) -> None:
        """Rejected lines, and valid lines (duplicates included) by UTC day."""
        result.rejected = db.execute(f"SELECT count(*) FROM {stage} WHERE reason IS NOT NULL").fetchone()[0]
        result.events_by_date = dict(
            db.execute(
                f"SELECT CAST(event_date AS VARCHAR), count(*) FROM {stage} WHERE reason IS NULL GROUP BY 1 ORDER BY 1"
            ).fetchall()
        )

    @staticmethod
    def _record_file(connection: sa.Connection, path: Path, result: LoadResult, now: dt.datetime) -> None:
        connection.execute(
            sa.text(
                "INSERT INTO ingested_files VALUES (:key, :path, :size, :accepted, :duplicates, :rejected, :now) "
                "ON CONFLICT (file_key) DO NOTHING"
            ),
            {
                "key": file_key(path),
                "path": str(path),
                "size": path.stat().st_size,
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "rejected": result.rejected,
                "now": now,
            },
        )


def _refuse_unless_json_lines(db: Any, lines: str, path: Path) -> None:
    """IngestError when none of the first SNIFF_LINES non-empty lines of the table `lines` is
    a JSON object (the caller's transaction then writes nothing)."""
    checked, objects = db.execute(
        f"""SELECT count(*), count(*) FILTER (WHERE json_valid(line) AND starts_with(ltrim(line), '{{'))
            FROM (SELECT line FROM {lines} WHERE trim(line) <> '' ORDER BY rowid LIMIT {SNIFF_LINES})"""
    ).fetchone()
    if checked and not objects:
        raise IngestError(
            f"{path}: not a JSON-lines event file: none of its first {checked} non-empty lines is a JSON object; "
            "nothing loaded"
        )


def _accepted_events(stage: str, salt: str) -> str:
    """Valid staged events, the first line of each id only (dedup inside one file), with the
    user id replaced by its keyed hash, computed once per distinct user."""
    return f"""
        WITH firsts AS (
            SELECT * FROM {stage} WHERE reason IS NULL
            QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY line_no) = 1
        ),
        users AS (
            SELECT user_id, {hmac_sql('user_id', salt)} AS user_key
            FROM (SELECT DISTINCT user_id FROM {stage} WHERE reason IS NULL AND user_id IS NOT NULL)
        )
        SELECT firsts.* EXCLUDE (user_id), users.user_key
        FROM firsts LEFT JOIN users USING (user_id)"""


def _copy_insert(cursor: Any, table: str, columns: str, csv_path: Path, key: str) -> int:
    """COPY a CSV into a temporary twin of `table`, then insert the rows whose key is new."""
    cursor.execute(f"CREATE TEMP TABLE kpi_copy_{table} (LIKE {table}) ON COMMIT DROP")
    with cursor.copy(f"COPY kpi_copy_{table} ({columns}) FROM STDIN (FORMAT csv)") as copy:
        with open(csv_path, "rb") as handle:
            while chunk := handle.read(COPY_CHUNK_BYTES):
                copy.write(chunk)
    cursor.execute(
        f"INSERT INTO {table} ({columns}) SELECT {columns} FROM kpi_copy_{table} "
        f"ON CONFLICT ({key}) DO NOTHING"
    )
    return cursor.rowcount


# DuckDB's reader causes, as a person reading about an event file would put them.
READ_CAUSES = {
    "Invalid unicode": "not UTF-8 text",
    "Maximum line size": f"longer than {READ_LINE_BYTES} bytes, more than the reader holds",
    "Expected Number of Columns": "holds the control bytes 01 02 03 04: not a text file",
}


def _read_error(error: BaseException) -> str:
    """One line: the line number and the cause of a reader error, else the error's first line.
    DuckDB's message quotes the line itself (which may hold personal data): left out."""
    lines = [line.strip() for line in str(error).strip().split("\n")]
    at = re.search(r"CSV Error on Line: (\d+)", lines[0])
    if at is None:
        # "IO Error: Unexpected end of GZIP stream: /path" -> "Unexpected end of GZIP stream"
        first = re.sub(r"^IO Error: (.*?)(: /\S*)?$", r"\1", lines[0]) if lines[0] else type(error).__name__
        return f"cannot be read: {first}"
    cause = next((line for line in lines[1:] if line and not line.startswith("Original Line:")), "unknown cause")
    cause = next((text for prefix, text in READ_CAUSES.items() if cause.startswith(prefix)), cause)
    return f"line {at.group(1)}: cannot be read: {cause}"
