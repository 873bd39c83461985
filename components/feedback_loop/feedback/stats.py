"""The statistics the retrain decision reads, accumulated batch by batch over the extract.

Rows that cannot be used are classified in SQL and counted by reason (`EXCLUSION_REASONS`);
every other figure is updated batch by batch, so ten million rows need no more memory than ten.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_KEYWORDS = ("flou", "mauvais", "incorrect", "wrong", "blurry")

# Why a row was left out. Prediction rows: no_consent, future_timestamp, confidence_out_of_range,
# non_finite_latency (NaN or infinite), null_label, unknown_label (of the prediction itself). Feedback rows: unknown_prediction,
# duplicate_feedback (an older answer the latest replaced), future_timestamp.
EXCLUSION_REASONS = (
    "no_consent",
    "future_timestamp",
    "confidence_out_of_range",
    "non_finite_latency",
    "null_label",
    "unknown_label",
    "unknown_prediction",
    "duplicate_feedback",
)
# Answers that give no training label: a "wrong" without a correction, or with one outside the
# known labels. They still count as negative answers (negatives, satisfaction, error rate,
# keyword hits); a correction only adds a training label.
UNLABELLED_REASONS = ("no_correction", "unknown_correction")


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
    dropped_feature_keys: int = 0  # JSONB feature keys left out beyond max_feature_columns
    excluded: dict[str, int] = field(default_factory=dict)
    unlabelled: dict[str, int] = field(default_factory=dict)  # negative answers without a training label, by reason
    window_start: str = ""
    window_end: str = ""

    def metrics(self) -> dict[str, float]:
        """Every figure as a named float (KFP metrics), exclusions as `excluded_<reason>`,
        negative answers without a training label as `unlabelled_<reason>`."""
        out = {k: float(v) for k, v in asdict(self).items() if not k.startswith("window_") and k not in ("excluded", "unlabelled")}
        out.update({f"excluded_{reason}": float(self.excluded.get(reason, 0)) for reason in EXCLUSION_REASONS})
        out.update({f"unlabelled_{reason}": float(self.unlabelled.get(reason, 0)) for reason in UNLABELLED_REASONS})
        # KFP cannot serialize NaN and a decision cannot read it: a figure that is no number is unknown (0).
        return {k: v if math.isfinite(v) else 0.0 for k, v in out.items()}

    @classmethod
    def from_metrics(cls, metrics: dict[str, float]) -> "FeedbackStats":
        """Reads back what `metrics()` wrote (e.g. from an Input[Metrics]'s metadata)."""
        kinds = {f.name: f.type for f in cls.__dataclass_fields__.values()}
        values = {}
        for name, kind in kinds.items():
            if name in metrics:
                values[name] = int(metrics[name]) if kind == "int" else float(metrics[name])
        excluded = {r: int(metrics.get(f"excluded_{r}", 0)) for r in EXCLUSION_REASONS}
        unlabelled = {r: int(metrics.get(f"unlabelled_{r}", 0)) for r in UNLABELLED_REASONS}
        return cls(**{"rows": 0, "feedback_count": 0, "negative_count": 0, "labelled_count": 0,
                      "satisfaction_rate": 0.0, "mean_confidence": 0.0, **values, "excluded": excluded, "unlabelled": unlabelled})


class Accumulator:
    """Every statistic of the extract of [start, end], updated batch by batch in constant memory.

    `trained_through` is the newest row the production model was trained on (None: no model yet).
    """

    def __init__(self, options: Options, start: datetime, end: datetime, trained_through: datetime | None) -> None:
        self.options = options
        self.start, self.end, self.trained_through = start, end, trained_through
        self.excluded = {reason: 0 for reason in EXCLUSION_REASONS}
        self.unlabelled = {reason: 0 for reason in UNLABELLED_REASONS}
        self.rows = self.feedback = self.negative = self.labelled = 0
        self.confidence_sum, self.confidence_n = 0.0, 0
        self.latency_sum, self.latency_n = 0.0, 0
        self.recent_error_feedback = self.recent_errors = self.keyword_hits = self.new_rows = 0
        self.error_since = pa.scalar(end - timedelta(days=options.error_rate_days), pa.timestamp("us", tz="UTC"))
        self.trained_after = pa.scalar(trained_through, pa.timestamp("us", tz="UTC")) if trained_through else None
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
            self.unlabelled[reason] += n
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
        if self.trained_after is not None:
            self.new_rows += int(pc.sum(pc.and_(labelled, pc.greater(created, self.trained_after))).as_py() or 0)
        else:
            self.new_rows += int(pc.sum(labelled).as_py() or 0)

        slim = pa.table({"id": kept.column("id"), "created_at": created, "is_correct": is_correct, "latency_ms": latency})
        self.feedback_tail = _newest(self.feedback_tail, slim.filter(has_feedback), self.options.recent_feedback)
        self.latency_tail = _newest(self.latency_tail, slim.filter(pc.is_valid(latency)), self.options.recent_latency)
        return kept

    def stats(self) -> FeedbackStats:
        o = self.options
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
        age = (self.end - self.trained_through).total_seconds() / 86400 if self.trained_through else -1.0
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
            unlabelled=dict(self.unlabelled),
            window_start=self.start.isoformat(),
            window_end=self.end.isoformat(),
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
