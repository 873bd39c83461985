"""Extract a window of predictions with their latest feedback from PostgreSQL into Parquet.

Streams: the query runs as a binary COPY read straight into Arrow record batches (ADBC's
PostgreSQL driver), on threads of their own while the batches before are converted, so the
server and the conversion work at once and memory stays bounded whatever the window holds.
The JSONB features are parsed into typed columns in Arrow (`pyarrow.json`), not in SQL:
nothing has to scan the window for its keys first.

Rows that cannot be used are classified in SQL and counted by reason (`EXCLUSION_REASONS`);
the statistics the retrain decision needs are accumulated batch by batch, so they too
need no more memory for ten million rows than for ten. User ids leave the database only
as an HMAC-SHA256 of themselves under a key from the environment (`FEEDBACK_HMAC_KEY`).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq
from psycopg2 import sql

from feedback_loop.errors import SettingsError
from feedback_loop.feedback import store
from feedback_loop.feedback.store import Tables

log = logging.getLogger(__name__)

HMAC_KEY_ENV = "FEEDBACK_HMAC_KEY"
DEFAULT_KEYWORDS = ("flou", "mauvais", "incorrect", "wrong", "blurry")
# Time slices read at once, each on its own connection: PostgreSQL runs one query on one core,
# and the conversion here needs a core too. Two measured best on two cores.
PARALLEL_SLICES = 2
# A row stamped later than the window's end by more than this is "in the future" (clock skew).
CLOCK_SKEW = timedelta(minutes=5)

# Why a row was left out. Prediction rows: no_consent, future_timestamp, confidence_out_of_range,
# null_label, unknown_label. Feedback rows: unknown_prediction, duplicate_feedback (an older
# answer the latest replaced), future_timestamp, null_label / unknown_label (a "wrong" without
# a usable correction: the prediction stays, unlabelled).
EXCLUSION_REASONS = (
    "no_consent",
    "future_timestamp",
    "confidence_out_of_range",
    "null_label",
    "unknown_label",
    "unknown_prediction",
    "duplicate_feedback",
)

# Base columns of the extract, in order, with their Arrow types.
BASE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("id", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
    ("model_version", pa.string()),
    ("predicted_label", pa.string()),
    ("confidence", pa.float64()),
    ("latency_ms", pa.float64()),
    ("input_uri", pa.string()),
    ("user_id", pa.string()),  # HMAC of the stored id, never the id itself
    ("is_correct", pa.bool_()),
    ("corrected_label", pa.string()),
    ("comment", pa.string()),
    ("feedback_at", pa.timestamp("us", tz="UTC")),
    ("label", pa.string()),
]
# The query also returns bookkeeping columns (excluded, feedback_excluded, answers), tallied and
# dropped, and the JSONB `features`, parsed into the columns that follow the base ones.


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


@dataclass(frozen=True)
class Options:
    """How the statistics are computed (the retrain policy's thresholds live in `decide`)."""

    keywords: Sequence[str] = DEFAULT_KEYWORDS
    known_labels: Sequence[str] = ()  # empty: any non-blank label is known
    error_rate_days: float = 7.0
    recent_feedback: int = 100  # satisfaction over the last N predictions with feedback
    recent_latency: int = 50  # mean latency over the last N predictions ...
    latency_baseline_ms: float = 0.0  # ... against this, or (0) the mean of the window's earlier rows
    training_rows: int = 0  # rows the production model was trained on (for the new-data share)


@dataclass(frozen=True)
class FeedbackStats:
    rows: int
    feedback_count: int
    negative_count: int
    labelled_count: int
    satisfaction_rate: float  # share of positive feedback; 0.0 when there is none
    mean_confidence: float
    recent_feedback_count: int = 0
    recent_satisfaction_rate: float = 0.0  # over the last `recent_feedback` predictions with feedback
    error_rate_feedback: int = 0
    error_rate: float = 0.0  # negative share of the feedback over the last `error_rate_days`
    recent_latency_ms: float = 0.0
    baseline_latency_ms: float = 0.0
    latency_ratio: float = 0.0  # recent / baseline; 0.0 when either is unknown
    keyword_hits: int = 0  # negative feedback whose comment names a keyword
    new_rows: int = 0  # labelled rows since the last training
    training_rows: int = 0
    new_data_share: float = 0.0  # new_rows / training_rows (1.0 when nothing was trained on yet)
    days_since_training: float = -1.0  # -1 when no model was trained yet
    excluded: dict[str, int] = field(default_factory=dict)
    window_start: str = ""
    window_end: str = ""

    def metrics(self) -> dict[str, float]:
        """Every figure as a named float (KFP metrics), exclusions as `excluded_<reason>`."""
        out = {k: float(v) for k, v in asdict(self).items() if not k.startswith("window_") and k != "excluded"}
        out.update({f"excluded_{reason}": float(self.excluded.get(reason, 0)) for reason in EXCLUSION_REASONS})
        return out

    @classmethod
    def from_metrics(cls, metrics: dict[str, float]) -> "FeedbackStats":
        """Reads back what `metrics()` wrote (e.g. from an Input[Metrics]'s metadata)."""
        kinds = {f.name: f.type for f in cls.__dataclass_fields__.values()}
        values = {}
        for name, kind in kinds.items():
            if name in metrics:
                values[name] = int(metrics[name]) if kind == "int" else float(metrics[name])
        excluded = {r: int(metrics.get(f"excluded_{r}", 0)) for r in EXCLUSION_REASONS}
        return cls(**{"rows": 0, "feedback_count": 0, "negative_count": 0, "labelled_count": 0,
                      "satisfaction_rate": 0.0, "mean_confidence": 0.0, **values, "excluded": excluded})


class Pseudonymizer:
    """HMAC-SHA256 of user ids; with no key, ids are dropped rather than exported."""

    def __init__(self, key: str | bytes | None, cache_size: int = 500_000) -> None:
        self._key = key.encode() if isinstance(key, str) else key
        self._cache_size = cache_size
        self._known = pa.array([], pa.string())  # ids hashed so far, and their digests
        self._digests = pa.array([], pa.string())

    @classmethod
    def from_env(cls) -> "Pseudonymizer":
        key = os.environ.get(HMAC_KEY_ENV) or None
        if key is None:
            log.warning("%s is not set: user ids are left out of the extract", HMAC_KEY_ENV)
        return cls(key)

    def digest(self, user_id: str) -> str:
        return hmac.digest(self._key, user_id.encode(), "sha256").hex()

    def apply(self, column: pa.ChunkedArray | pa.Array) -> pa.Array:
        if self._key is None:
            return pa.nulls(len(column), pa.string())
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        # Hash each distinct id once: users are far fewer than predictions. The lookup runs in
        # Arrow; only ids not seen before reach Python.
        encoded = pc.dictionary_encode(column)
        distinct = encoded.dictionary
        position = pc.index_in(distinct, value_set=self._known)
        missing = distinct.filter(pc.is_null(position))
        if len(missing):
            fresh = pa.array([self.digest(v) for v in missing.to_pylist()], pa.string())
            if len(self._known) + len(missing) > self._cache_size:
                # Bounded, whatever the number of users: keep only this batch's ids.
                digests = pc.replace_with_mask(pc.take(self._digests, position), pc.is_null(position), fresh)
                self._known, self._digests = distinct, digests
                return pc.take(digests, encoded.indices)
            self._known = pa.concat_arrays([self._known, missing])
            self._digests = pa.concat_arrays([self._digests, fresh])
            position = pc.index_in(distinct, value_set=self._known)
        return pc.take(pc.take(self._digests, position), encoded.indices)


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
    # Each prediction is joined to its latest answer up to the horizon (ties broken by id), read
    # in index order with how many answers it got (the older ones are duplicates). Answers are
    # read from the slice's start on: an answer never precedes its prediction (clock skew aside).
    # A "wrong" without a usable correction keeps its prediction, unlabelled. OFFSET 0 keeps each
    # level a level: flattened, every use of `reason` would compute `label` and `answer` again.
    return sql.SQL(
        """
        SELECT p.id, p.created_at, p.model_version, p.answer AS predicted_label, p.confidence, p.latency_ms,
               p.input_uri, p.user_id,
               CASE WHEN p.reason IS NULL THEN p.is_correct END AS is_correct,
               CASE WHEN p.reason IS NULL THEN p.corrected_label END AS corrected_label,
               CASE WHEN p.reason IS NULL THEN p.comment END AS comment,
               CASE WHEN p.reason IS NULL THEN p.feedback_at END AS feedback_at,
               CASE WHEN p.reason IS NULL THEN p.label END AS label,
               CASE
                   WHEN p.confidence IS NOT NULL AND NOT (p.confidence BETWEEN 0 AND 1) THEN 'confidence_out_of_range'
                   WHEN p.answer IS NULL THEN 'null_label'
                   WHEN {answer_unknown} THEN 'unknown_label'
               END AS excluded,
               p.reason AS feedback_excluded,
               p.answers,
               p.features
        FROM (
            SELECT p.*,
                   CASE
                       WHEN p.is_correct IS NULL THEN NULL
                       WHEN p.label IS NULL THEN 'null_label'
                       WHEN {label_unknown} THEN 'unknown_label'
                   END AS reason
            FROM (
                SELECT p.*, CASE WHEN p.is_correct THEN p.answer ELSE nullif(btrim(p.corrected_label), '') END AS label
                FROM (
                    SELECT p.id, p.created_at, p.model_version, p.confidence, p.latency_ms, p.input_uri, p.user_id,
                           p.features, coalesce(nullif(btrim(p.predicted_label), ''), p.predicted_value::text) AS answer,
                           f.is_correct, f.corrected_label, f.comment, f.created_at AS feedback_at, f.answers
                    FROM {predictions} p
                    LEFT JOIN (
                        SELECT DISTINCT ON (prediction_id)
                               prediction_id, is_correct, corrected_label, comment, created_at,
                               count(*) OVER (PARTITION BY prediction_id ORDER BY created_at DESC, id DESC
                                             ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS answers
                        FROM {feedback}
                        WHERE created_at > {answers_from} AND created_at <= {horizon}
                        ORDER BY prediction_id, created_at DESC, id DESC
                    ) f ON f.prediction_id = p.id
                    WHERE p.model_name = {model} AND p.consent
                      AND p.created_at > {start} AND p.created_at <= {end}
                    OFFSET 0
                ) p
                OFFSET 0
            ) p
            OFFSET 0
        ) p
        """
    ).format(
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


def _counts_query(window: Window, tables: Tables) -> sql.Composed:
    """Exclusions that are no row of the extract: non-consenting, future-dated and orphan rows."""
    return sql.SQL(
        """
        SELECT
            (SELECT count(*) FROM {predictions}
              WHERE model_name = {model} AND NOT consent AND created_at > {start} AND created_at <= {end}),
            (SELECT count(*) FROM {predictions} WHERE model_name = {model} AND created_at > {horizon})
          + (SELECT count(*) FROM {feedback} f JOIN {predictions} p ON p.id = f.prediction_id
              WHERE f.created_at > {horizon} AND p.model_name = {model} AND p.consent
                AND p.created_at > {start} AND p.created_at <= {end}),
            (SELECT count(*) FROM {feedback} f
              WHERE f.created_at > {start} AND f.created_at <= {horizon}
                AND NOT EXISTS (SELECT 1 FROM {predictions} p WHERE p.id = f.prediction_id))
        """
    ).format(
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
) -> FeedbackStats:
    """Writes the window to `out_path` (Parquet, whole or not at all) and returns its statistics.

    The counts and the rows come from one snapshot (a read-only repeatable-read transaction
    whose snapshot the streams share), so the excluded rows and the extract always add up.
    `parallel` consecutive time slices are read at once.
    """
    started = time.monotonic()
    pseudonymizer = pseudonymizer or Pseudonymizer.from_env()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    features = _FeatureColumns()
    conn = store.connect(dsn)
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn, conn.cursor() as cur, tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as scratch:
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
            queries = [extract_query(window, options, tables, b).as_string(conn) for b in _slices(window, max(1, parallel))]
            staged = Path(scratch) / "extract.parquet"
            while True:  # once, or again with the wider feature columns a later batch revealed
                accumulator = _Accumulator(window, options)
                try:
                    with store.arrow_batches(dsn, queries, snapshot) as batches:
                        _write_parquet(batches, staged, accumulator, pseudonymizer, features)
                    break
                except _WiderFeatures as wider:
                    log.info("%s: reading the window again with feature columns %s", wider, sorted(features.types))
            cur.execute(_counts_query(window, tables))
            no_consent, future, orphans = cur.fetchone()
            os.replace(staged, out_path)
    finally:
        conn.close()
    accumulator.excluded["no_consent"] += no_consent
    accumulator.excluded["future_timestamp"] += future
    accumulator.excluded["unknown_prediction"] += orphans
    stats = accumulator.stats()
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
    accumulator: "_Accumulator",
    pseudonymizer: Pseudonymizer,
    features: "_FeatureColumns",
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


class _WiderFeatures(Exception):
    """A batch held a feature key or a text value the columns written so far cannot take."""


class _FeatureColumns:
    """The JSONB features as typed columns, keys in sorted order: a key is a number column when
    every value is a number, else text (strings as they are; booleans and nested values as
    JSON text, as PostgreSQL's ->> gives them).

    The types are set from the first batch (inferred by Arrow, or in Python where Arrow cannot
    tell), then each batch is parsed in Arrow against them. A batch Arrow cannot parse against them (a text value under a number key, a nested
    value) is read in Python; if it needs wider columns (a new key, text under a number key), the
    types widen and `_WiderFeatures` asks for the window to be read again: a rare, one-off cost.
    """

    def __init__(self) -> None:
        self.types: dict[str, pa.DataType] = {}  # always in sorted key order
        self._known = False

    def schema(self) -> pa.Schema:
        """The whole extract's schema: the base columns, then the feature columns."""
        return pa.schema(BASE_COLUMNS + list(self.types.items()))

    def parse(self, column: pa.Array) -> list[pa.ChunkedArray | pa.Array]:
        """The feature columns (in `schema()`'s order) of `column`'s JSON texts."""
        texts = column.storage if isinstance(column.type, pa.BaseExtensionType) else column
        if not self._known:
            self.types, self._known = _types_inferred(texts), True
        if not self.types:
            return []
        options = pajson.ParseOptions(explicit_schema=pa.schema(list(self.types.items())), unexpected_field_behavior="error")
        try:
            table = pajson.read_json(pa.BufferReader(_lines(texts)), parse_options=options, read_options=_ONE_THREAD)
        except pa.ArrowInvalid:
            return self._parse_in_python(texts)
        return [table.column(name) for name in self.types]

    def _parse_in_python(self, texts: pa.Array) -> list[pa.Array]:
        objects = _loads(texts)
        wider = _widest(self.types, _types_of(objects))
        if wider != self.types:
            added = sorted(set(wider) - set(self.types)) or sorted(k for k in wider if wider[k] != self.types[k])
            self.types = wider
            raise _WiderFeatures(f"feature column(s) {', '.join(added)} appeared or turned to text after the first batch")
        return [_feature_array(objects, name, kind) for name, kind in self.types.items()]


_RESERVED = {name for name, _ in BASE_COLUMNS}
# The server and the batches' conversion already keep both cores busy: more threads only cost.
_ONE_THREAD = pajson.ReadOptions(use_threads=False, block_size=1 << 26)


def _widest(a: dict[str, pa.DataType], b: dict[str, pa.DataType]) -> dict[str, pa.DataType]:
    """Every key of both; text where either says text."""
    return {k: pa.string() if pa.string() in (a.get(k), b.get(k)) else pa.float64() for k in sorted({**a, **b})}


def _loads(texts: pa.Array) -> list[dict]:
    """Each row's features as a dict (a JSON value that is no object counts as none)."""
    objects = [json.loads(t) if t is not None else None for t in texts.to_pylist()]
    return [o if isinstance(o, dict) else {} for o in objects]


def _types_inferred(texts: pa.Array) -> dict[str, pa.DataType]:
    """The types of the keys in `texts`, inferred by Arrow; in Python when Arrow's inference
    cannot tell (mixed or nested values, booleans, strings it would read as timestamps)."""
    try:
        inferred = pajson.read_json(pa.BufferReader(_lines(texts)), read_options=_ONE_THREAD).schema
    except pa.ArrowInvalid:
        return _types_of(_loads(texts))
    plain = {pa.float64(), pa.int64(), pa.string(), pa.null()}
    if any(f.type not in plain for f in inferred) or set(inferred.names) & _RESERVED:
        return _types_of(_loads(texts))
    return {f.name: pa.string() if f.type == pa.string() else pa.float64() for f in sorted(inferred, key=lambda f: f.name)}


def _types_of(objects: list[dict]) -> dict[str, pa.DataType]:
    """float64 for keys whose values are all numbers (or null), string for the others."""
    text: set[str] = set()
    keys: set[str] = set()
    for o in objects:
        keys.update(o)
        text.update(k for k, v in o.items() if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))))
    clashing = keys & _RESERVED
    if clashing:
        log.warning("feature key(s) %s clash with extract columns and are left out", sorted(clashing))
    return {k: pa.string() if k in text else pa.float64() for k in sorted(keys - _RESERVED)}


def _feature_array(objects: list[dict], name: str, kind: pa.DataType) -> pa.Array:
    values = [o.get(name) for o in objects]
    if kind == pa.float64():
        return pa.array(values, pa.float64())
    return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())


def _lines(texts: pa.Array) -> pa.Buffer:
    """The JSON texts as newline-delimited JSON, built in Arrow (no Python loop)."""
    joined = pc.binary_join_element_wise(pc.fill_null(texts, "{}"), "", "\n")
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)[joined.offset : joined.offset + len(joined) + 1]
    return joined.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


class _Accumulator:
    """Every statistic of the extract, updated batch by batch in constant memory."""

    def __init__(self, window: Window, options: Options) -> None:
        self.window, self.options = window, options
        self.excluded = {reason: 0 for reason in EXCLUSION_REASONS}
        self.rows = self.feedback = self.negative = self.labelled = 0
        self.confidence_sum, self.confidence_n = 0.0, 0
        self.latency_sum, self.latency_n = 0.0, 0
        self.recent_error_feedback = self.recent_errors = self.keyword_hits = self.new_rows = 0
        self.error_since = pa.scalar(window.end - timedelta(days=options.error_rate_days), pa.timestamp("us", tz="UTC"))
        self.trained_through = (
            pa.scalar(window.trained_through, pa.timestamp("us", tz="UTC")) if window.trained_through else None
        )
        words = [w for w in options.keywords if w.strip()]
        self.keyword_pattern = "|".join(re.escape(w.strip()) for w in words) if words else ""
        # The newest rows so far (by created_at, id): bounded tails for the "last N" figures.
        self.feedback_tail: pa.Table | None = None
        self.latency_tail: pa.Table | None = None

    def add(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Tallies `batch`; returns its usable rows."""
        excluded = batch.column("excluded")
        for reason, n in _value_counts(excluded).items():
            self.excluded[reason] += n
        kept = batch if excluded.null_count == len(excluded) else batch.filter(pc.is_null(excluded))
        for reason, n in _value_counts(kept.column("feedback_excluded")).items():
            self.excluded[reason] += n
        answers = kept.column("answers")
        self.excluded["duplicate_feedback"] += int(pc.sum(pc.subtract(answers, 1)).as_py() or 0)

        is_correct = kept.column("is_correct")
        has_feedback = pc.is_valid(is_correct)
        negative = pc.fill_null(pc.invert(is_correct), False)
        self.rows += kept.num_rows
        self.feedback += int(pc.sum(has_feedback).as_py() or 0)
        self.negative += int(pc.sum(negative).as_py() or 0)
        labelled = pc.is_valid(kept.column("label"))
        self.labelled += int(pc.sum(labelled).as_py() or 0)
        confidence = kept.column("confidence")
        self.confidence_sum += pc.sum(confidence).as_py() or 0.0
        self.confidence_n += len(confidence) - confidence.null_count
        latency = kept.column("latency_ms")
        self.latency_sum += pc.sum(latency).as_py() or 0.0
        self.latency_n += len(latency) - latency.null_count

        created = kept.column("created_at")
        recent = pc.and_(has_feedback, pc.greater(created, self.error_since))
        self.recent_error_feedback += int(pc.sum(recent).as_py() or 0)
        self.recent_errors += int(pc.sum(pc.and_(recent, negative)).as_py() or 0)
        if self.keyword_pattern:
            hits = pc.match_substring_regex(kept.column("comment"), self.keyword_pattern, ignore_case=True)
            self.keyword_hits += int(pc.sum(pc.and_(negative, pc.fill_null(hits, False))).as_py() or 0)
        if self.trained_through is not None:
            self.new_rows += int(pc.sum(pc.and_(labelled, pc.greater(created, self.trained_through))).as_py() or 0)
        else:
            self.new_rows += int(pc.sum(labelled).as_py() or 0)

        slim = pa.table({"id": kept.column("id"), "created_at": created, "is_correct": is_correct, "latency_ms": latency})
        self.feedback_tail = _newest(self.feedback_tail, slim.filter(has_feedback), self.options.recent_feedback)
        self.latency_tail = _newest(self.latency_tail, slim.filter(pc.is_valid(latency)), self.options.recent_latency)
        return kept

    def stats(self) -> FeedbackStats:
        o, w = self.options, self.window
        tail = self.feedback_tail
        recent_n = tail.num_rows if tail is not None else 0
        recent_pos = int(pc.sum(tail["is_correct"]).as_py() or 0) if recent_n else 0
        lat = self.latency_tail
        lat_n = lat.num_rows if lat is not None else 0
        recent_latency = (pc.sum(lat["latency_ms"]).as_py() / lat_n) if lat_n else 0.0
        if o.latency_baseline_ms > 0:
            baseline = o.latency_baseline_ms
        else:  # the window's rows before the recent ones
            earlier_n = self.latency_n - lat_n
            baseline = (self.latency_sum - recent_latency * lat_n) / earlier_n if earlier_n > 0 else 0.0
        full_sample = lat_n >= o.recent_latency
        training_rows = o.training_rows
        if training_rows > 0:
            share = self.new_rows / training_rows
        else:
            share = 1.0 if self.new_rows else 0.0
        age = (w.end - w.trained_through).total_seconds() / 86400 if w.trained_through else -1.0
        return FeedbackStats(
            rows=self.rows,
            feedback_count=self.feedback,
            negative_count=self.negative,
            labelled_count=self.labelled,
            satisfaction_rate=(self.feedback - self.negative) / self.feedback if self.feedback else 0.0,
            mean_confidence=self.confidence_sum / self.confidence_n if self.confidence_n else 0.0,
            recent_feedback_count=recent_n,
            recent_satisfaction_rate=recent_pos / recent_n if recent_n else 0.0,
            error_rate_feedback=self.recent_error_feedback,
            error_rate=self.recent_errors / self.recent_error_feedback if self.recent_error_feedback else 0.0,
            recent_latency_ms=recent_latency,
            baseline_latency_ms=baseline,
            latency_ratio=recent_latency / baseline if baseline > 0 and full_sample else 0.0,
            keyword_hits=self.keyword_hits,
            new_rows=self.new_rows,
            training_rows=training_rows,
            new_data_share=share,
            days_since_training=round(age, 3),
            excluded=dict(self.excluded),
            window_start=w.start.isoformat(),
            window_end=w.end.isoformat(),
        )


def _value_counts(column: pa.Array) -> dict[str, int]:
    if column.null_count == len(column):
        return {}
    counts = pc.value_counts(column.drop_null() if hasattr(column, "drop_null") else pc.drop_null(column))
    return {item["values"].as_py(): item["counts"].as_py() for item in counts}


def _newest(tail: pa.Table | None, batch: pa.Table, n: int) -> pa.Table | None:
    """The `n` newest rows, by (created_at, id), of `tail` and `batch`: batches come in any order."""
    if n <= 0:
        return None
    if tail is not None and tail.num_rows >= n:  # only rows as new as the oldest kept can enter
        batch = batch.filter(pc.greater_equal(batch["created_at"], pc.min(tail["created_at"])))
    if batch.num_rows > n:  # a cheap cut on time alone first (ties kept), then the exact order
        newest = batch["created_at"].take(pc.top_k_unstable(batch["created_at"], n))
        batch = batch.filter(pc.greater_equal(batch["created_at"], pc.min(newest)))
    both = batch if tail is None else pa.concat_tables([tail, batch])
    if both.num_rows <= n:
        return both
    return both.take(pc.select_k_unstable(both, k=n, sort_keys=[("created_at", "descending"), ("id", "descending")]))


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
