"""PostgreSQL access: connection with retries, the project's schema, run and deployment records.

The only module (with core.py beside it) that talks to the database; the SQL of both lies in
sql/ (see queries.py). The DSN is a secret: it is never logged nor put in an error message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from feedback_loop.errors import (
    DatabaseAuthFailed,
    DatabaseLost,
    DatabaseUnreachable,
    DatabaseUrlInvalid,
    FeedbackLoopError,
    FeedbackSchemaError,
)
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


# A statement the server runs longer than this is cancelled (a runaway query holds no task forever).
STATEMENT_TIMEOUT_S = 1800
# A server that sends nothing for this long is taken as frozen: the client stops waiting on it
# (the server's own timeout cannot fire in a server that does not run).
SILENCE_TIMEOUT_S = 300
CONNECT_ATTEMPTS = 4
# TCP keepalives: a peer gone without a word (a node lost, a cut network) is noticed in ~1 minute.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def _transient(err: BaseException) -> bool:
    # A refused login or a missing database stays so: only a connection that failed is tried again.
    return isinstance(err, psycopg2.OperationalError) and isinstance(classify(err, ""), DatabaseLost)


@retry(
    retry=retry_if_exception(_transient),
    stop=stop_after_attempt(CONNECT_ATTEMPTS),
    wait=wait_exponential(multiplier=0.5, max=4),
    reraise=True,
)
def _connect_with_retries(dsn: str) -> psycopg2.extensions.connection:
    options = f"-c TimeZone=UTC -c statement_timeout={STATEMENT_TIMEOUT_S * 1000}"
    return psycopg2.connect(dsn, connect_timeout=5, options=options, **KEEPALIVES)


def connect(dsn: str | None) -> psycopg2.extensions.connection:
    """Opens a connection, retrying with exponential backoff; fails with one line, DSN withheld."""
    if not dsn:
        raise DatabaseUnreachable(
            "DATABASE_URL is not set: point it at the feedback database (a Kubernetes Secret on a cluster)"
        )
    try:
        return _connect_with_retries(dsn)
    except psycopg2.ProgrammingError as err:  # libpq could not parse the DSN: its message echoes the DSN
        raise _malformed(err) from None
    except psycopg2.OperationalError as err:
        raised = classify(err, dsn)
        if isinstance(raised, DatabaseLost):
            # The driver's message can echo host and user; keep only its first line, never the DSN.
            raise DatabaseUnreachable(
                f"feedback database unreachable after {CONNECT_ATTEMPTS} attempts ({_first_line(err, dsn)}): "
                "check DATABASE_URL and that the server is up"
            ) from None
        raise raised from None


def _malformed(err: Exception) -> DatabaseUrlInvalid:
    """One line that names the bad part of the DSN by its option, never by its value."""
    option = re.search(r'(?:option|parameter) "(\w+)"', str(err))
    where = f" (its {option.group(1)} cannot be read)" if option else ""
    return DatabaseUrlInvalid(
        f"DATABASE_URL is not a valid PostgreSQL URL{where}: use postgresql://user:password@host:5432/dbname "
        "and percent-encode special characters in the password (/ as %2F, @ as %40)"
    )


# What libpq says of a DSN it cannot parse; the rest of its message quotes the DSN.
_MALFORMED = re.compile(r'connection option|missing "=" after|unterminated quoted string|invalid URI|invalid percent-encoded|invalid dsn', re.I)
# SQLSTATE classes and codes, as both drivers report them.
_AUTH = ("28P01", "28000")
_SCHEMA = ("42P01", "42703", "3F000", "3D000")  # table, column, schema, database missing
_CANCELLED = "57014"


def classify(err: BaseException, dsn: str, during: str = "") -> FeedbackLoopError:
    """The project's one-line error for a driver error (psycopg2 or ADBC), DSN withheld."""
    if isinstance(err, FeedbackLoopError):
        return err
    code = getattr(err, "pgcode", None) or getattr(err, "sqlstate", None) or ""
    if _MALFORMED.search(str(err)):
        return _malformed(err)
    line = _first_line(err, dsn)
    lowered = line.lower()
    at = f" {during}" if during else ""
    if code in _AUTH or "authentication failed" in lowered or "no password supplied" in lowered:
        return DatabaseAuthFailed(
            f"the feedback database refused the login ({line}): check the user and password in DATABASE_URL"
        )
    if code in _SCHEMA or re.search(r'(relation|column|database) "[^"]*" does not exist', lowered):
        return FeedbackSchemaError(
            f"the feedback database lacks the loop's schema ({line}): point DATABASE_URL at the feedback database, "
            "or create its tables with feedback_loop.feedback.store.migrate"
        )
    if code == _CANCELLED or "statement timeout" in lowered:
        return DatabaseLost(
            f"the feedback database cancelled a query{at} after its {STATEMENT_TIMEOUT_S} s statement timeout: "
            "shorten the window (days_back) or check the server's load"
        )
    return DatabaseLost(f"the feedback database stopped answering{at} ({line}): nothing was written; run again once it is back")


@contextlib.contextmanager
def classified(dsn: str, during: str = "") -> Iterator[None]:
    """Turns any driver error raised inside into the project's one-line error."""
    try:
        yield
    except (psycopg2.Error, *_adbc_errors()) as err:
        raise classify(err, dsn, during) from None


def _adbc_errors() -> tuple[type[BaseException], ...]:
    try:
        import adbc_driver_manager
    except ImportError:  # pragma: no cover - the extraction's dependency
        return ()
    return (adbc_driver_manager.Error,)


def abandon(conn: psycopg2.extensions.connection) -> None:
    """Cuts the connection's socket: a call blocked on a server that no longer runs returns at once
    (with an error), and closing it sends nothing the server must answer."""
    with contextlib.suppress(OSError, psycopg2.Error):
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


@contextlib.contextmanager
def deadline(conn: psycopg2.extensions.connection, seconds: float, during: str) -> Iterator[None]:
    """Gives up on a statement the server does not answer within `seconds` (a frozen server
    never cancels its own statement): the connection is cut and DatabaseLost raised."""
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        abandon(conn)

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield
    except psycopg2.Error:
        if fired.is_set():
            raise DatabaseLost(
                f"the feedback database did not answer {during} within {seconds:g} s: nothing was written; "
                "run again once it answers"
            ) from None
        raise
    finally:
        timer.cancel()


@contextlib.contextmanager
def arrow_batches(
    dsn: str, queries: Sequence[str], snapshot: str, depth: int = 2, silence: float | None = None
) -> Iterator[Iterator["pa.RecordBatch"]]:
    """The rows of `queries` as Arrow record batches, yielded as they arrive.

    Each query runs on a connection and a thread of its own, all in the exported `snapshot`,
    as a binary COPY that ADBC's PostgreSQL driver reads straight into Arrow: no text to
    format on the server nor to parse here. A bounded queue keeps memory flat (a reader
    that falls behind holds the server back); leaving the block stops every query.
    Any failure is the project's one-line error; `silence` seconds (default SILENCE_TIMEOUT_S)
    without a batch is DatabaseLost: the streams of a frozen server are left behind.
    """
    import adbc_driver_postgresql.dbapi as adbc
    from adbc_driver_postgresql import StatementOptions

    if not re.fullmatch(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?", snapshot):
        raise ValueError(f"not a snapshot id: {snapshot!r}")
    silence = SILENCE_TIMEOUT_S if silence is None else silence
    # Keepalives and a connect timeout on the streams' connections too (libpq reads them from the DSN).
    stream_dsn = psycopg2.extensions.make_dsn(dsn, connect_timeout=5, **KEEPALIVES)
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
                conn = adbc.connect(stream_dsn, autocommit=True)
            except adbc.Error as err:
                raise DatabaseUnreachable(f"feedback database unreachable ({_first_line(err, dsn)}): check DATABASE_URL") from None
            with classified(dsn, "during the extraction"), conn, conn.cursor() as cur:
                cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cur.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                for setting in (*EXTRACT_SESSION, f"SET statement_timeout = {STATEMENT_TIMEOUT_S * 1000}"):
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
        except BaseException as err:  # handed to the reader of the batches, as one line
            put(classify(err, dsn, "during the extraction") if isinstance(err, Exception) else err)
        finally:
            put(done)

    threads = [threading.Thread(target=run, args=(q,), name=f"stream-{i}", daemon=True) for i, q in enumerate(queries)]
    for thread in threads:
        thread.start()

    def batches() -> Iterator["pa.RecordBatch"]:
        running = len(threads)
        while running:
            try:
                item = arrived.get(timeout=silence)
            except queue.Empty:
                raise DatabaseLost(
                    f"the feedback database sent nothing for {silence:g} s during the extraction (frozen or cut off): "
                    "nothing was written; run again once it answers"
                ) from None
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
            # A stream blocked on a frozen server cannot be woken: it is a daemon, left behind.
            thread.join(timeout=5)


def _first_line(err: Exception, dsn: str) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    return _redact(first.replace(dsn, "<DATABASE_URL>") if dsn else first)


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
    conn, retention_days: int, *, now: datetime | None = None, dry_run: bool = False, tables: Tables = Tables(),
    inputs_uri: str = "",
) -> dict[str, int]:
    """Deletes predictions and feedback older than `retention_days` (personal data); returns the counts.

    A prediction's feedback goes with it, whatever its age. Run history and deployments hold
    no personal data and are kept. With `inputs_uri`, the raw inputs of expiring predictions
    stored under it go too (first: should that fail, the rows stay and the next purge tries
    again); an input_uri elsewhere is never touched. With `dry_run`, counts what would go
    and deletes nothing.
    """
    if retention_days < 1:
        raise ValueError("retention_days must be at least 1")
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=retention_days)
    names = {"predictions": sql.Identifier(tables.predictions), "feedback": sql.Identifier(tables.feedback)}
    # The feedback first: it goes with its expiring prediction.
    statements = {table: queries.compose(f"purge_{table}", **names) for table in ("feedback", "predictions")}
    counts: dict[str, int] = {}
    with conn, conn.cursor() as cur:
        if inputs_uri:
            counts["inputs"] = _purge_inputs(conn, queries.compose("purge_inputs", **names), cutoff, inputs_uri, dry_run)
        for table, statement in statements.items():
            cur.execute(statement, {"cutoff": cutoff})
            counts[table] = cur.rowcount
        if dry_run:
            conn.rollback()
    log.info("%s rows older than %s: %s", "would purge" if dry_run else "purged", cutoff.date(), counts)
    return counts


def _purge_inputs(conn, statement: sql.Composed, cutoff: datetime, inputs_uri: str, dry_run: bool) -> int:
    """Deletes the expiring inputs under `inputs_uri`; returns how many (would) go."""
    from feedback_loop import storage

    root = storage.normalize(inputs_uri).rstrip("/") + "/"
    gone = skipped = 0
    with conn.cursor(name="expired_inputs") as cur:  # server-side: millions of rows stream
        cur.itersize = 10_000
        cur.execute(statement, {"cutoff": cutoff})
        for (uri,) in cur:
            # Only under the inputs root, and no "..": a row's input_uri is data, not an order to delete.
            if not uri.startswith(root) or ".." in uri[len(root):].split("/"):
                skipped += 1
                continue
            if dry_run or storage.delete(uri):
                gone += 1
    if skipped:
        log.warning("%d expired input_uri values lie outside %s and were left alone", skipped, root)
    return gone
