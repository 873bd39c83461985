"""The decision's inputs, gathered once for the component and `feedback-loop check` alike:
the feedback metrics, the drift metrics, production's baseline error (model store, pooled
with its first days of service), the fresh errors (the feedback extract) and the last
fruitless attempt (the run history).

The baseline. A validation split is a few hundred rows: its error is known to a few points,
and that noise alone moves every trigger by days (a pessimistic draw hides a real fall, an
optimistic one invents one). Like a reference period (NannyML's term), production's own
answers over its first `baseline_days` of service, once those days are over, join the
validation rows; the validated figure stays in the record beside the pooled one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feedback_loop import storage
from feedback_loop.decide.evidence import METRICS, Attempt, Baseline, Evidence, Sample, fmt
from feedback_loop.decide.signals import Signals
from feedback_loop.layout import LINEAGE_FILE, REFERENCE_PREDICTIONS_FILE

log = logging.getLogger(__name__)
_COLUMNS = ("is_correct", "label", "predicted_label", "feedback_at", "model_version")


def signals(
    stats: Mapping[str, float],
    *,
    is_drift: bool,
    rollout_in_progress: bool = False,
    force: bool = False,
    drift: Mapping[str, float] | None = None,
    feedback_path: Path | str | None = None,
    production_model_uri: str = "",
    model_name: str = "",
    dsn: str | None = None,
    baseline_days: float = 0.0,
) -> Signals:
    """Every figure the rules read. Without `dsn` no attempt is remembered; without
    `feedback_path` the fresh error rate comes from the metrics' answer counts; with
    `baseline_days` > 0 the baseline pools production's answers of its first days (see above)."""
    base = Signals.from_metrics(stats, is_drift=is_drift, rollout_in_progress=rollout_in_progress, force=force)
    baseline, reason, created_at = read_baseline(production_model_uri)
    attempt = None
    if dsn and not (production_model_uri and not created_at):  # a lineage without created_at: nothing to date the memory by
        attempt = last_attempt(dsn, model_name, created_at or None)
    metric = baseline.metric if baseline else "error_rate"
    if feedback_path is not None:
        period = None
        if baseline and baseline_days > 0 and created_at:
            period = ReferencePeriod.of(baseline.version, created_at, baseline_days)
        whole, since, newest, days, first_days = tally(Path(feedback_path), attempt.evidence_through if attempt else "", period)
        if period and newest and pd.Timestamp(newest) >= period.end and first_days.answered:
            baseline = pool(baseline, first_days, baseline_days)
    else:
        whole = Tally(answered=base.feedback_count, wrong=base.negative_count)
        since, newest, days = Tally(), "", {}
    evidence = Evidence(
        baseline=baseline, reason=reason, fresh=whole.sample(metric), attempt=attempt,
        since_attempt=since.sample(metric) if attempt else None, labelled_since_attempt=since.labelled,
        unjudged=whole.unjudged if metric == "mse" else 0, evidence_through=newest, recent=recent_windows(days, metric),
    )
    changes: dict = {"evidence": evidence, "has_production": bool(production_model_uri)}
    if attempt:  # new_data counts the rows since the last attempt, not since production's training
        training = int(stats.get("training_rows", 0))
        changes["new_rows"] = since.labelled
        changes["new_data_share"] = since.labelled / training if training else float(since.labelled > 0)
    d = drift or {}
    if d:
        changes.update(prediction_tested=bool(d.get("prediction.tested", 0)), prediction_drift=bool(d.get("prediction.outputs_drift", 0)))
        if "residual.p_value" in d:
            changes.update(
                residual_p_value=float(d["residual.p_value"]), residual_drift=bool(d.get("residual.is_drift", 0)),
                residual_reference_rate=float(d.get("residual.error_rate.reference", 0.0)),
                residual_current_rate=float(d.get("residual.error_rate.current", 0.0)),
            )
    return dataclasses.replace(base, **changes)


def read_baseline(production_model_uri: str) -> tuple[Baseline | None, str, str]:
    """(production's validated error or None, why none, its lineage's created_at)."""
    if not production_model_uri:
        return None, "no model serves yet", ""
    version = production_model_uri.rstrip("/").rsplit("/", 1)[-1]
    lineage_uri = storage.join(production_model_uri, LINEAGE_FILE)
    lineage = json.loads(storage.read_bytes(lineage_uri)) if storage.exists(lineage_uri) else {}
    created_at = str(lineage.get("created_at") or "")
    v = lineage.get("validation")
    if v is not None and not _valid(v):
        return None, f"{LINEAGE_FILE} of {version} has an unusable 'validation' {v!r}: expected metric error_rate or mse, a value, rows > 0", created_at
    if v is not None:
        value, rows = float(v["value"]), int(v["rows"])
        # The lineage keeps the value, not the spread: a rate's variance follows from it; an mse's
        # is taken as 2·mse² (squared Gaussian residuals).
        variance = value * (1 - value) if v["metric"] == "error_rate" else 2 * value * value
        return Baseline(v["metric"], Sample(value, variance, rows), LINEAGE_FILE, version), "", created_at
    predictions_uri = storage.join(production_model_uri, REFERENCE_PREDICTIONS_FILE)
    if not storage.exists(predictions_uri):
        return None, f"production {version} records no validated error (no 'validation' in {LINEAGE_FILE}, no {REFERENCE_PREDICTIONS_FILE})", created_at
    if lineage.get("task") == "ranking":
        return None, f"production {version} is a recommender: its lineage records no validated error", created_at
    # A small file (the validation rows): read whole, through the store's one API for file:// and gs://.
    frame = pq.read_table(pa.BufferReader(storage.read_bytes(predictions_uri)), columns=["label", "predicted_label"]).to_pandas()
    frame = frame.dropna()
    if frame.empty:
        return None, f"{REFERENCE_PREDICTIONS_FILE} of {version} has no labelled row", created_at
    if lineage.get("task") == "regression":
        errors = (pd.to_numeric(frame["predicted_label"], errors="coerce") - pd.to_numeric(frame["label"], errors="coerce")) ** 2
        errors = errors.dropna()
        if errors.empty:
            return None, f"{REFERENCE_PREDICTIONS_FILE} of {version} holds no numeric label", created_at
        sample = Sample.squared(float(errors.sum()), float((errors**2).sum()), len(errors))
        return Baseline("mse", sample, REFERENCE_PREDICTIONS_FILE, version), "", created_at
    wrong = int((frame["label"].astype(str) != frame["predicted_label"].astype(str)).sum())
    return Baseline("error_rate", Sample.rate(wrong, len(frame)), REFERENCE_PREDICTIONS_FILE, version), "", created_at


@dataclass(frozen=True)
class ReferencePeriod:
    """Production's first days of service: its own answers, answered in [start, end)."""

    version: str
    start: pd.Timestamp
    end: pd.Timestamp

    @classmethod
    def of(cls, version: str, created_at: str, days: float) -> "ReferencePeriod":
        start = pd.Timestamp(created_at)
        start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
        return cls(version, start, start + pd.Timedelta(days=days))

    def rows(self, frame: pd.DataFrame, answered_at: pd.Series) -> pd.Series:
        return (frame["model_version"].astype(str) == self.version) & (answered_at >= self.start) & (answered_at < self.end)


def pool(baseline: Baseline, first_days: "Tally", days: float) -> Baseline:
    """The validated sample joined by production's answers over its first days of service."""
    served = first_days.sample(baseline.metric)
    if served.rows == 0:
        return baseline
    source = (
        f"{baseline.source} ({_shown(baseline.metric, baseline.sample)}) pooled with its first {days:g} days of service "
        f"({_shown(baseline.metric, served)})"
    )
    return dataclasses.replace(baseline, sample=baseline.sample.pooled(served), source=source, validated=baseline.sample)


def _shown(metric: str, sample: Sample) -> str:
    return f"{fmt(metric, sample.mean)} on {sample.rows}"


def last_attempt(dsn: str, model_name: str, after: str | None) -> Attempt | None:
    """The newest retrain decision after production's creation: it trained and blessed nothing."""
    from feedback_loop.feedback import store

    conn = store.connect(dsn)
    try:
        row = store.last_attempt(conn, model_name, datetime.fromisoformat(after) if after else None)
    finally:
        conn.close()
    if row is None:
        return None
    recorded = (row["stats"] or {}).get("evidence") or {}
    judged = recorded.get("since_attempt") if recorded.get("attempt") else recorded.get("fresh")
    started = row["started_at"].isoformat()
    tested = int(((row["stats"] or {}).get("payoff") or {}).get("test", {}).get("rows") or 0)
    return Attempt(row["run_name"] or "", started, recorded.get("evidence_through") or started, Sample.of(judged), tested)


@dataclass
class Tally:
    """Answers, wrong answers, labelled rows and squared errors of a part of the extract."""

    answered: int = 0
    wrong: int = 0
    labelled: int = 0
    sq_rows: int = 0
    sq_sum: float = 0.0
    sq_sum2: float = 0.0
    unjudged: int = 0  # wrong without a numeric correction: no squared error

    def __add__(self, other: "Tally") -> "Tally":
        return Tally(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def sample(self, metric: str) -> Sample:
        if metric == "mse":
            return Sample.squared(self.sq_sum, self.sq_sum2, self.sq_rows)
        return Sample.rate(self.wrong, self.answered)

    def add(self, frame: pd.DataFrame) -> None:
        answered = frame["is_correct"].notna()
        self.answered += int(answered.sum())
        self.wrong += int((frame["is_correct"] == False).sum())  # noqa: E712 (a nullable column)
        labelled = frame["label"].notna()
        self.labelled += int(labelled.sum())
        values = pd.to_numeric(frame["label"], errors="coerce") - pd.to_numeric(frame["predicted_label"], errors="coerce")
        squared = (values**2)[answered & values.notna()]
        self.sq_rows += len(squared)
        self.sq_sum += float(squared.sum())
        self.sq_sum2 += float((squared**2).sum())
        self.unjudged += int(((frame["is_correct"] == False) & values.isna()).sum())  # noqa: E712


def tally(
    path: Path, after: str, period: ReferencePeriod | None = None
) -> tuple[Tally, Tally, str, dict[str, Tally], Tally]:
    """(the whole extract, the answers given after `after` (ISO; "" none), the newest answer's
    time, the answers after `after` by day of their answer (ISO date), production's answers
    of its reference `period`)."""
    whole, since, newest, days, first_days = Tally(), Tally(), None, {}, Tally()
    cut = pd.Timestamp(after) if after else None
    if cut is not None and cut.tzinfo is None:
        cut = cut.tz_localize("UTC")
    parquet = pq.ParquetFile(path)
    columns = [c for c in _COLUMNS if c in parquet.schema_arrow.names]
    for batch in parquet.iter_batches(columns=columns, batch_size=65_536):
        frame = batch.to_pandas()
        for name in _COLUMNS:
            if name not in frame:
                frame[name] = None
        whole.add(frame)
        at = pd.to_datetime(frame["feedback_at"], utc=True)
        if period is not None:
            first_days.add(frame[period.rows(frame, at)])
        if at.notna().any():
            top = at.max()
            newest = top if newest is None or top > newest else newest
        judged = frame if cut is None else frame[at > cut]
        if cut is not None:
            since.add(judged)
        answered_at = pd.to_datetime(judged["feedback_at"], utc=True)
        for day, part in judged[answered_at.notna()].groupby(answered_at[answered_at.notna()].dt.date.astype(str)):
            days.setdefault(day, Tally()).add(part)
    return whole, since, newest.isoformat() if newest is not None else "", days, first_days


def recent_windows(days: dict[str, Tally], metric: str) -> list[tuple[int, Sample]]:
    """The answers of the last 1, 2, 4, ... days before the newest answer, each shorter than all
    of them: a change shows in a recent window before the whole window's mean catches up."""
    if not days:
        return []
    last = date.fromisoformat(max(days))
    span = (last - date.fromisoformat(min(days))).days + 1
    windows, length = [], 1
    while length < span:
        first = last - timedelta(days=length - 1)
        part = sum((t for d, t in days.items() if date.fromisoformat(d) >= first), Tally())
        windows.append((length, part.sample(metric)))
        length *= 2
    return windows


def _valid(v: object) -> bool:
    """The training stage's contract: {"metric": "error_rate" | "mse", "value": float, "rows": int}."""
    if not isinstance(v, dict) or v.get("metric") not in METRICS or not isinstance(v.get("rows"), int) or v["rows"] <= 0:
        return False
    value = v.get("value")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return 0 <= value <= 1 if v["metric"] == "error_rate" else value >= 0
