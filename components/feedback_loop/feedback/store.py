"""PostgreSQL access: connection with retries, the project's schema, run and deployment records.

The only module (with core.py beside it) that talks to the database; the SQL of both lies in
sql/ (see queries.py). The DSN is a secret: it is never logged nor put in an error message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from feedback_loop.errors import DatabaseUnreachable
from feedback_loop.feedback import queries

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tables:
    """Where the serving app writes; names are quoted as identifiers, never formatted into SQL."""

    predictions: str = "predictions"
    feedback: str = "feedback"


# Each migration runs once, in order, inside one transaction with its version row.
MIGRATIONS: tuple[str, ...] = queries.migrations()

# Arrow batches of ~4 MB: small enough that those in flight keep the extraction's memory flat.
BATCH_BYTES = 4 << 20
# Settings of the extraction's read-only sessions: its hash join holds a window's answers.
EXTRACT_SESSION = ("SET work_mem = '256MB'",)


@retry(
    retry=retry_if_exception_type(psycopg2.OperationalError),
    stop=stop_after_attempt(4),
    wait=wait_exponential(multiplier=0.5, max=4),
    reraise=True,
)
def _connect_with_retries(dsn: str) -> psycopg2.extensions.connection:
    return psycopg2.connect(dsn, connect_timeout=5, options="-c TimeZone=UTC")


def connect(dsn: str | None) -> psycopg2.extensions.connection:
    """Opens a connection, retrying with exponential backoff; fails with one line, DSN withheld."""
    if not dsn:
        raise DatabaseUnreachable(
            "DATABASE_URL is not set: point it at the feedback database (a Kubernetes Secret on a cluster)"
        )
    try:
        return _connect_with_retries(dsn)
    except psycopg2.OperationalError as err:
        # The driver's message can echo host and user; keep only its first line, never the DSN.
        raise DatabaseUnreachable(
            f"feedback database unreachable after 4 attempts ({_first_line(err, dsn)}): check DATABASE_URL and that the server is up"
        ) from None


@contextlib.contextmanager
def arrow_batches(dsn: str, queries: Sequence[str], snapshot: str, depth: int = 2) -> Iterator[Iterator["pa.RecordBatch"]]:
    """The rows of `queries` as Arrow record batches, yielded as they arrive.

    Each query runs on a connection and a thread of its own, all in the exported `snapshot`,
    as a binary COPY that ADBC's PostgreSQL driver reads straight into Arrow: no text to
    format on the server nor to parse here. A bounded queue keeps memory flat (a reader
    that falls behind holds the server back); leaving the block stops every query.
    """
    import adbc_driver_postgresql.dbapi as adbc
    from adbc_driver_postgresql import StatementOptions

    if not re.fullmatch(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?", snapshot):
        raise ValueError(f"not a snapshot id: {snapshot!r}")
    arrived: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> None:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                arrived.put(item, timeout=0.1)
                return

    def run(query: str) -> None:
        try:
            try:
                conn = adbc.connect(dsn, autocommit=True)
            except adbc.Error as err:
                raise DatabaseUnreachable(f"feedback database unreachable ({_first_line(err, dsn)}): check DATABASE_URL") from None
            with conn, conn.cursor() as cur:
                cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cur.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                for setting in EXTRACT_SESSION:
                    cur.execute(setting)
                cur.adbc_statement.set_options(**{StatementOptions.BATCH_SIZE_HINT_BYTES.value: str(BATCH_BYTES)})
                cur.execute(query)
                reader = cur.fetch_record_batch()
                try:
                    for batch in reader:
                        if stop.is_set():
                            break
                        put(batch)
                finally:
                    reader.close()
        except BaseException as err:  # handed to the reader of the batches
            put(err)
        finally:
            put(done)

    threads = [threading.Thread(target=run, args=(q,), name=f"stream-{i}", daemon=True) for i, q in enumerate(queries)]
    for thread in threads:
        thread.start()

    def batches() -> Iterator["pa.RecordBatch"]:
        running = len(threads)
        while running:
            item = arrived.get()
            if item is done:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    try:
        yield batches()
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def _first_line(err: Exception, dsn: str) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    return _redact(first.replace(dsn, "<DATABASE_URL>"))


def _redact(text: str) -> str:
    # Passwords never appear in libpq errors, but a "password=..." fragment might in odd setups.
    return re.sub(r"password=\S+", "password=***", text)


def migrate(conn: psycopg2.extensions.connection) -> int:
    """Brings the schema up to date; safe to run any number of times. Returns the version."""
    with conn, conn.cursor() as cur:
        cur.execute(queries.text("schema_version"))
        current = cur.fetchone()[0]
        for version, migration in enumerate(MIGRATIONS[current:], start=current + 1):
            log.info("applying schema migration %d", version)
            cur.execute(migration)
            cur.execute(queries.text("schema_version_applied"), {"version": version})
    return len(MIGRATIONS)


def record_run(
    conn, *, model_name: str, run_name: str, retrain: bool, reasons: list[str], stats: dict[str, Any], at: datetime | None = None
) -> None:
    """One decision; `at` (default now, by this process's clock: the one the lineage's times use)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            queries.text("record_run"),
            {"model_name": model_name, "run_name": run_name, "retrain": retrain, "reasons": json.dumps(reasons),
             "stats": json.dumps(stats), "started_at": at or datetime.now(timezone.utc)},
        )


def record_deployment(
    conn, *, model_name: str, version: str, action: str, traffic_percent: int, reason: str, details: dict[str, Any]
) -> None:
    with conn, conn.cursor() as cur:
        cur.execute(
            queries.text("record_deployment"),
            {
                "model_name": model_name, "version": version, "action": action, "traffic_percent": traffic_percent,
                "reason": reason, "details": json.dumps(details, default=str),
            },
        )


def history(conn, model_name: str, limit: int = 20) -> list[dict[str, Any]]:
    with conn.cursor() as cur:
        cur.execute(queries.text("run_history"), {"model_name": model_name, "limit": limit})
        names = [c.name for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def last_attempt(conn, model_name: str, after: datetime | None) -> dict[str, Any] | None:
    """The newest retrain decision after `after` (None: ever): started_at, run_name, stats."""
    with conn.cursor() as cur:
        cur.execute(queries.text("last_attempt"), {"model_name": model_name, "after": after})
        row = cur.fetchone()
        return dict(zip([c.name for c in cur.description], row)) if row else None


def purge(
    conn, retention_days: int, *, now: datetime | None = None, dry_run: bool = False, tables: Tables = Tables()
) -> dict[str, int]:
    """Deletes predictions and feedback older than `retention_days` (personal data); returns the counts.

    A prediction's feedback goes with it, whatever its age. Run history and deployments hold
    no personal data and are kept. With `dry_run`, counts what would go and deletes nothing.
    """
    if retention_days < 1:
        raise ValueError("retention_days must be at least 1")
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=retention_days)
    names = {"predictions": sql.Identifier(tables.predictions), "feedback": sql.Identifier(tables.feedback)}
    # The feedback first: it goes with its expiring prediction.
    statements = {table: queries.compose(f"purge_{table}", **names) for table in ("feedback", "predictions")}
    counts: dict[str, int] = {}
    with conn, conn.cursor() as cur:
        for table, statement in statements.items():
            cur.execute(statement, {"cutoff": cutoff})
            counts[table] = cur.rowcount
        if dry_run:
            conn.rollback()
    log.info("%s rows older than %s: %s", "would purge" if dry_run else "purged", cutoff.date(), counts)
    return counts
