"""Writes what the model server captured (predictions, feedback answers) into the feedback store.

The model server's writer thread calls these with batches it built off the request path;
the tables and columns are the ones the serving app wrote by hand before (migration 1 and 2).
"""

from __future__ import annotations

import io
import numbers
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql
from psycopg2.extras import execute_values

from feedback_loop.feedback import queries
from feedback_loop.feedback.store import Tables, classify


@dataclass(frozen=True)
class PredictionRow:
    """One row of `predictions`; `features` are the summary features (never raw inputs)."""

    id: str
    created_at: datetime
    model_name: str
    model_version: str
    features: dict[str, Any]
    predicted_label: str | None
    predicted_value: float | None
    confidence: float | None
    latency_ms: float
    user_id: str | None
    consent: bool


@dataclass(frozen=True)
class FeedbackRow:
    """One row of `feedback`: the answer to one prediction."""

    prediction_id: str
    created_at: datetime
    is_correct: bool
    corrected_label: str | None = None
    comment: str | None = None


def connect(dsn: str) -> psycopg2.extensions.connection:
    """One attempt, a short timeout: the model server's writer retries on its own schedule. The
    driver's own text can echo the DSN (a password with a '/'): the error keeps its type, so the
    writer still knows what to retry, and carries the store's one line, DSN withheld."""
    try:
        return psycopg2.connect(dsn, connect_timeout=3, options="-c TimeZone=UTC")
    except psycopg2.Error as err:
        raise type(err)(str(classify(err, dsn))) from None


def transient(err: Exception) -> bool:
    """A lost or refused connection (worth retrying), not rows the database refuses (a data or
    schema error, rows that cannot be sent: retrying cannot help)."""
    return isinstance(err, (psycopg2.OperationalError, psycopg2.InterfaceError))


def json_text(value: Any) -> str:
    # NaN and infinities are not JSON: PostgreSQL's jsonb refuses them, and the batch with them.
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def csv_field(value: Any) -> str:
    """One CSV field for COPY: NULL is the unquoted empty field (CSV's default), every text is
    quoted, so that no text (not "", not "\\N") can read as NULL."""
    if value is None:
        return ""
    if type(value) is str:  # most fields: first
        return '"' + value.replace('"', '""') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return '"' + text.replace('"', '""') + '"'


@dataclass(frozen=True)
class CsvRows:
    """Rows of `predictions` already as COPY's CSV text, a line each (what the model server's
    writer builds: serving.records.prediction_csv)."""

    text: str
    count: int

    def __len__(self) -> int:
        return self.count


def predictions_csv(rows: Sequence[PredictionRow]) -> CsvRows:
    """`rows` as COPY's CSV text, in `copy_predictions`' column order."""
    text = "".join(
        ",".join(csv_field(v) for v in (r.id, r.created_at, r.model_name, r.model_version, json_text(r.features), r.predicted_label,
                                         r.predicted_value, r.confidence, r.latency_ms, r.user_id, r.consent)) + "\n"
        for r in rows
    )
    return CsvRows(text, len(rows))


def write_predictions(conn: psycopg2.extensions.connection, rows: Sequence[PredictionRow] | CsvRows, tables: Tables = Tables()) -> int:
    """Inserts `rows` in one transaction (ids already present are skipped); returns the rows given.

    A binary-safe CSV COPY: a few times cheaper per row than INSERT ... VALUES, which matters
    because the writer shares its machine with the requests. Straight into the table; only a
    batch that repeats an id (retried after a commit whose answer was lost) goes through a
    staging table that skips those ids: staging every batch took 1.6-1.7x PostgreSQL's CPU per
    row (`./build.sh bench capture_write`).
    """
    csv = rows if isinstance(rows, CsvRows) else predictions_csv(rows)
    table = sql.Identifier(tables.predictions)
    try:
        with conn, conn.cursor() as cur:
            cur.copy_expert(queries.compose("copy_predictions", table=table), io.StringIO(csv.text))
        return csv.count
    except psycopg2.errors.UniqueViolation:
        pass  # rolled back: the batch again, through the staging table
    with conn, conn.cursor() as cur:
        cur.execute(queries.compose("stage_predictions", predictions=table))
        cur.copy_expert(queries.compose("copy_predictions", table=sql.Identifier("capture_predictions")), io.StringIO(csv.text))
        cur.execute(queries.compose("move_predictions", predictions=table))
    return csv.count


def write_feedback(conn: psycopg2.extensions.connection, rows: Sequence[FeedbackRow], tables: Tables = Tables()) -> int:
    """Inserts the answers in one transaction; returns how many."""
    statement = queries.compose("insert_feedback", feedback=sql.Identifier(tables.feedback))
    values = [(r.prediction_id, r.created_at, r.is_correct, r.corrected_label, r.comment) for r in rows]
    with conn, conn.cursor() as cur:
        execute_values(cur, statement, values, page_size=max(1, len(values)))
    return len(values)
