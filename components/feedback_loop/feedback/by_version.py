"""Satisfaction and answers per model version: the feedback store's answer to the rollout analysis.

The model server names the version in every answer; the serving app stores it with the
prediction (`predictions.model_version`). Here the latest feedback on each prediction made
in a time window is counted per version, consenting users only, so a canary and the stable
version can be compared on the same days; and what each version answered (label mix,
confidence and value quantiles) is summarised for the label-free guard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import psycopg2
import psycopg2.extensions

from feedback_loop.errors import FeedbackSchemaError
from feedback_loop.feedback import queries


@dataclass(frozen=True)
class VersionFeedback:
    """Answered predictions of one version and how many of the answers were positive."""

    version: str
    answered: int
    positive: int

    @property
    def negative(self) -> int:
        return self.answered - self.positive

    @property
    def satisfaction(self) -> float | None:
        return self.positive / self.answered if self.answered else None


# Quantile grid of the confidence and value distributions: 1 % steps, 101 numbers per version.
QUANTILE_GRID = tuple(i / 100 for i in range(101))
# Labels listed per version; the rest are counted together (a regressor has many values).
TOP_LABELS = 50


@dataclass(frozen=True)
class VersionPredictions:
    """What one version answered: its most frequent labels and its distributions' quantiles."""

    version: str
    count: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    distinct: int = 0
    numeric: bool = False
    confidence_quantiles: tuple[float, ...] = ()
    value_quantiles: tuple[float, ...] = ()


def satisfaction_by_version(
    conn: psycopg2.extensions.connection, model_name: str, versions: Sequence[str], start: datetime, end: datetime
) -> dict[str, VersionFeedback]:
    """Feedback on the predictions each version made in [start, end); every asked version is in the answer."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    params = {"model_name": model_name, "versions": list(versions), "start": start, "end": end}
    (rows,) = _read(conn, ["satisfaction_by_version"], params)
    found = {version: VersionFeedback(version, int(answered), int(positive)) for version, answered, positive in rows}
    return {version: found.get(version, VersionFeedback(version, 0, 0)) for version in versions}


def predictions_by_version(
    conn: psycopg2.extensions.connection, model_name: str, versions: Sequence[str], start: datetime, end: datetime
) -> dict[str, VersionPredictions]:
    """What each version answered in [start, end), consenting users only; every asked version is in the answer."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    params = {"model_name": model_name, "versions": list(versions), "start": start, "end": end,
              "top": TOP_LABELS, "grid": list(QUANTILE_GRID)}
    label_rows, quantile_rows = _read(conn, ["predictions_by_version_labels", "predictions_by_version_quantiles"], params)
    labels: dict[str, dict[str, int]] = {}
    totals: dict[str, tuple[int, int, bool]] = {}
    for version, label, n, total, distinct, numeric in label_rows:
        labels.setdefault(version, {})[label] = int(n)
        totals[version] = (int(total), int(distinct), bool(numeric))
    quantiles = {version: (_floats(conf), _floats(value)) for version, conf, value in quantile_rows}
    answer = {}
    for version in versions:
        count, distinct, numeric = totals.get(version, (0, 0, False))
        conf, value = quantiles.get(version, ((), ()))
        answer[version] = VersionPredictions(version, count, labels.get(version, {}), distinct, numeric, conf, value)
    return answer


def _read(conn: psycopg2.extensions.connection, names: Sequence[str], params: dict[str, object]) -> list[list[tuple]]:
    """Runs the named read-only statements in one transaction; a missing table is the user's to fix."""
    try:
        results = []
        with conn.cursor() as cur:
            for name in names:
                cur.execute(queries.text(name), params)
                results.append(cur.fetchall())
        conn.rollback()  # read-only; leave no transaction open
    except (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn) as err:
        conn.rollback()
        first = str(err).strip().splitlines()[0]
        raise FeedbackSchemaError(f"{first}: run the loop once (it migrates the schema) or check the predictions/feedback tables") from None
    return results


def _floats(values: Sequence[float | None] | None) -> tuple[float, ...]:
    """Quantiles as floats; none when the version had no such values (NULL from the aggregate)."""
    if not values or any(v is None for v in values):
        return ()
    return tuple(float(v) for v in values)
