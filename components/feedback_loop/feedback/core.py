"""Extract a window of predictions with their latest feedback from PostgreSQL into Parquet.

Streams: the query (sql/extract.sql) runs as a binary COPY read straight into Arrow record
batches (ADBC's PostgreSQL driver), on threads of their own while the batches before are
converted, so the server and the conversion work at once and memory stays bounded whatever
the window holds. The JSONB features become typed columns in Arrow (`features`); the
statistics the retrain decision needs are accumulated batch by batch (`stats`); user ids leave
the database only as an HMAC under a key the caller passes in (`pseudonyms`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from psycopg2 import sql

from feedback_loop.errors import SettingsError
from feedback_loop.feedback import queries, store
from feedback_loop.feedback.features import BASE_COLUMNS, DEFAULT_MAX_COLUMNS, FeatureColumns, WiderFeatures
from feedback_loop.feedback.pseudonyms import HMAC_KEY_ENV, Pseudonymizer
from feedback_loop.feedback.stats import Accumulator, FeedbackStats, Options
from feedback_loop.feedback.store import Tables

log = logging.getLogger(__name__)

# Time slices read at once, each on its own connection: PostgreSQL runs one query on one core,
# and the conversion here needs a core too. Two measured best on two cores.
PARALLEL_SLICES = 2
# A row stamped later than the window's end by more than this is "in the future" (clock skew).
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Window:
    model_name: str
    start: datetime
    end: datetime
    trained_through: datetime | None = None  # newest row the production model was trained on

    @classmethod
    def of(cls, model_name: str, days_back: int, since: str = "", now: datetime | None = None) -> "Window":
        """The last `days_back` days, starting no earlier than `since` (data the model already saw)."""
        end = now or datetime.now(timezone.utc)
        start = end - timedelta(days=days_back)
        trained = None
        if since:
            try:
                trained = datetime.fromisoformat(since)
            except ValueError:
                raise SettingsError(f"since={since!r} is not an ISO 8601 timestamp: pass e.g. 2026-11-01T00:00:00+00:00") from None
            if trained.tzinfo is None:
                trained = trained.replace(tzinfo=timezone.utc)
            start = max(start, trained)
        return cls(model_name, start, end, trained)

    @property
    def horizon(self) -> datetime:
        return self.end + CLOCK_SKEW


def extract_query(
    window: Window,
    options: Options = Options(),
    tables: Tables = Tables(),
    bounds: tuple[datetime, datetime] | None = None,
) -> sql.Composed:
    """One row per consenting prediction of the window (or of `bounds` within it), with its
    latest feedback, audit columns and JSONB features, in no particular order."""
    start, end = bounds or (window.start, window.end)
    known = list(options.known_labels)
    # Values as quoted literals, not parameters: the query runs inside a COPY, which takes none.
    return queries.compose(
        "extract",
        predictions=sql.Identifier(tables.predictions),
        feedback=sql.Identifier(tables.feedback),
        answer_unknown=_unknown(known, sql.SQL("p.answer")),
        label_unknown=_unknown(known, sql.SQL("p.label")),
        model=sql.Literal(window.model_name),
        start=sql.Literal(start),
        end=sql.Literal(end),
        answers_from=sql.Literal(start - CLOCK_SKEW),
        horizon=sql.Literal(window.horizon),
    )


def _unknown(known: list[str], value: sql.Composable) -> sql.Composable:
    """SQL that is true when `value` is outside the known labels (never, when none are configured)."""
    if not known:
        return sql.SQL("false")
    return sql.SQL("{value} <> ALL({labels}::text[])").format(value=value, labels=sql.Literal(known))


def exclusion_counts_query(window: Window, tables: Tables) -> sql.Composed:
    """Exclusions that are no row of the extract: non-consenting, future-dated and orphan rows."""
    return queries.compose(
        "exclusion_counts",
        predictions=sql.Identifier(tables.predictions),
        feedback=sql.Identifier(tables.feedback),
        model=sql.Literal(window.model_name),
        start=sql.Literal(window.start),
        end=sql.Literal(window.end),
        horizon=sql.Literal(window.horizon),
    )


def extract(
    dsn: str,
    window: Window,
    out_path: Path,
    options: Options = Options(),
    tables: Tables = Tables(),
    pseudonymizer: Pseudonymizer | None = None,
    parallel: int = PARALLEL_SLICES,
    max_feature_columns: int = DEFAULT_MAX_COLUMNS,
) -> FeedbackStats:
    """Writes the window to `out_path` (Parquet, whole or not at all) and returns its statistics.

    The counts and the rows come from one snapshot (a read-only repeatable-read transaction
    whose snapshot the streams share), so the excluded rows and the extract always add up.
    `parallel` consecutive time slices are read at once. User ids are hashed by `pseudonymizer`
    (its key comes from the caller); without one, or without a key, they are left out.
    """
    started = time.monotonic()
    pseudonymizer = pseudonymizer if pseudonymizer is not None else Pseudonymizer(None)
    if not pseudonymizer.has_key:
        log.warning("no HMAC key (%s): user ids are left out of the extract", HMAC_KEY_ENV)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    features = FeatureColumns(max_feature_columns)
    conn = store.connect(dsn)
    # No `with conn`: its rollback on the way out would wait forever on a frozen server. Every
    # statement here has a deadline, and on any failure the connection is cut, not rolled back.
    silence = store.SILENCE_TIMEOUT_S
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with store.classified(dsn, "during the extraction"), conn.cursor() as cur, \
                tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as scratch:
            with store.deadline(conn, silence, "to the extraction's first statement"):
                cur.execute("SELECT pg_export_snapshot()")
                snapshot = cur.fetchone()[0]
            slice_queries = [extract_query(window, options, tables, b).as_string(conn) for b in _slices(window, max(1, parallel))]
            staged = Path(scratch) / "extract.parquet"
            while True:  # once, or again with the wider feature columns a later batch revealed
                accumulator = Accumulator(options, window.start, window.end, window.trained_through)
                try:
                    with store.arrow_batches(dsn, slice_queries, snapshot, silence=silence) as batches:
                        _write_parquet(batches, staged, accumulator, pseudonymizer, features)
                    break
                except WiderFeatures as wider:
                    log.info("%s: reading the window again with %d feature columns", wider, len(features.types))
            with store.deadline(conn, silence, "to the exclusion counts"):
                cur.execute(exclusion_counts_query(window, tables))
                no_consent, future, orphans = cur.fetchone()
                conn.rollback()  # a read-only snapshot: nothing to commit
            os.replace(staged, out_path)
    except BaseException:
        store.abandon(conn)
        raise
    finally:
        conn.close()
    accumulator.excluded["no_consent"] += no_consent
    accumulator.excluded["future_timestamp"] += future
    accumulator.excluded["unknown_prediction"] += orphans
    stats = dataclasses.replace(accumulator.stats(), dropped_feature_keys=len(features.dropped))
    elapsed = time.monotonic() - started
    dropped = ", ".join(f"{n} {reason}" for reason, n in stats.excluded.items() if n) or "none"
    log.info(
        "extracted %d rows (%d with feedback, %d feature columns) in %.1f s (%.0f rows/s); excluded: %s",
        stats.rows, stats.feedback_count, len(features.types), elapsed, stats.rows / max(elapsed, 1e-9), dropped,
    )
    return stats


def _slices(window: Window, n: int) -> list[tuple[datetime, datetime]]:
    """`n` consecutive, equally long time slices covering the window."""
    step = (window.end - window.start) / n
    bounds = [window.start + i * step for i in range(n)] + [window.end]
    return list(zip(bounds[:-1], bounds[1:]))


def _write_parquet(
    batches: Iterable[pa.RecordBatch],
    path: Path,
    accumulator: Accumulator,
    pseudonymizer: Pseudonymizer,
    features: FeatureColumns,
) -> None:
    """Tallies every batch and writes its usable rows, user ids hashed and features typed.
    (Converting on more threads was measured no faster: the server and this keep both cores busy.)"""
    writer: pq.ParquetWriter | None = None
    try:
        for batch in batches:
            kept = accumulator.add(batch)
            if kept.num_rows == 0:
                continue
            columns = [pseudonymizer.apply(kept.column(n)) if n == "user_id" else kept.column(n) for n, _ in BASE_COLUMNS]
            table = pa.Table.from_arrays(columns + features.parse(kept.column("features")), schema=features.schema())
            if writer is None:
                writer = _parquet_writer(path, table.schema)
            writer.write_table(table)
        if writer is None:  # an empty window is a valid, empty dataset
            writer = _parquet_writer(path, features.schema())
    finally:
        if writer is not None:
            writer.close()


def _parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    # Dictionary encoding only pays on repeated values: not on ids, digests and numbers.
    dictionary = [f.name for f in schema if pa.types.is_string(f.type) and f.name not in {"id", "user_id", "input_uri"}]
    return pq.ParquetWriter(path, schema, use_dictionary=dictionary)


def training_rows(reference_data_uri: str) -> int:
    """Rows of the production model's training data (from its Parquet footer); 0 when unknown."""
    if not reference_data_uri:
        return 0
    from feedback_loop import storage

    try:
        if reference_data_uri.startswith("gs://"):
            return pq.read_metadata(pa.BufferReader(storage.read_bytes(reference_data_uri))).num_rows
        path = storage.local_path(reference_data_uri)
        if path.is_dir():
            return sum(pq.read_metadata(part).num_rows for part in sorted(path.glob("*.parquet")))
        return pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowInvalid) as err:
        log.warning("cannot count the training rows (%s): the new-data share is taken as whole", type(err).__name__)
        return 0
